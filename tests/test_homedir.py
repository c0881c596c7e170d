"""`up`'s home folder as root: PostgreSQL and Mosquitto (their own users) must be able to enter it,
also when the checkout lies under a folder they cannot enter (/root on Debian is mode 700)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityneuron.homedir import enterable_by_others, prepare_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the link is made only when run as root")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder every user may enter (pytest's own open_tmp lies under a mode-700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="cityneuron-home-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_home_under_a_closed_folder_is_kept_where_the_servers_can_enter(open_tmp: Path) -> None:
    checkout = open_tmp / "root" / "project"
    checkout.mkdir(parents=True)
    (open_tmp / "root").chmod(0o700)
    data_root = open_tmp / "var-lib-cityneuron"

    real = prepare_home(checkout / ".cityneuron", data_root=data_root)

    link = checkout / ".cityneuron"
    assert link.is_symlink() and link.resolve() == real
    assert real.parent == data_root
    assert enterable_by_others(real), "the postgres and mosquitto users must be able to enter it"
    # The paths the README names still work through the link, and a second start reuses it.
    (link / "secrets").mkdir()
    assert (real / "secrets").is_dir()
    assert prepare_home(checkout / ".cityneuron", data_root=data_root) == real


def test_a_home_under_an_open_folder_stays_where_it_was_asked(open_tmp: Path) -> None:
    home = open_tmp / "project" / ".cityneuron"
    real = prepare_home(home, data_root=open_tmp / "unused")
    assert real == home and not home.is_symlink()
    assert enterable_by_others(real)
    assert not (open_tmp / "unused").exists()
