"""The local stack's home folder (``cityneuron up --home``, default ``./.cityneuron``).

Run as root, PostgreSQL and Mosquitto run as their own users and must be able to enter the
home. A checkout under ``/root`` (mode 700 on Debian) cannot be entered by them, so a new home
there is made under ``/var/lib/cityneuron`` instead and the asked path becomes a link to it:
the paths the README and the banner name (``.cityneuron/secrets/...``) keep working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("cityneuron.stack")

SERVICE_DATA_ROOT = Path("/var/lib/cityneuron")


def enterable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may enter ``path`` and every folder above it."""
    return all(folder.stat().st_mode & 0o001 for folder in (path, *path.parents))


def prepare_home(home: Path, *, data_root: Path = SERVICE_DATA_ROOT) -> Path:
    """Make the home folder if missing and return its real path, mode 711 (servers may enter)."""
    home = home.absolute()
    if os.geteuid() == 0 and not home.exists() and not home.is_symlink():
        home.parent.mkdir(parents=True, exist_ok=True)
        if not enterable_by_others(home.parent.resolve()):
            slug = re.sub(r"[^a-z0-9]+", "-", home.parent.name.lower()).strip("-") or "home"
            digest = hashlib.sha256(str(home).encode()).hexdigest()[:8]
            real = data_root / f"{slug}-{digest}"
            real.mkdir(parents=True, exist_ok=True)
            data_root.chmod(0o711)
            home.symlink_to(real, target_is_directory=True)
            log.info(
                "%s cannot be entered by the postgres and mosquitto users: the data is kept in %s (%s links to it)",
                home.parent,
                real,
                home,
            )
    resolved = home.resolve()
    resolved.mkdir(parents=True, exist_ok=True)
    resolved.chmod(0o711)
    return resolved
