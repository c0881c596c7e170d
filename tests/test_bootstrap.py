"""Every program the README, the scripts, the tests and the benchmarks call is installed by
scripts/bootstrap.sh: a green run on a machine where someone installed a program by hand hides
the gap (a fresh Debian 12 once lacked `mosquitto_sub` from `mosquitto-clients`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Program -> the Debian package that brings it (Debian 12 and Ubuntu 24.04 alike).
PROGRAM_PACKAGES = {
    "mosquitto": "mosquitto",
    "mosquitto_passwd": "mosquitto",
    "mosquitto_sub": "mosquitto-clients",
    "mosquitto_pub": "mosquitto-clients",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "psql": "postgresql",
    "pg_partman": "postgresql-$pg_major-partman",
    "curl": "curl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "openssl": "openssl",
    "wrk": "wrk",
    "python3": "python3",
}

# Where a program is "called": as a word in a code block or a command of these files.
CALLERS = ["README.md", "scripts", "tests", "bench", "docs"]


def _caller_texts() -> dict[Path, str]:
    texts: dict[Path, str] = {}
    for entry in CALLERS:
        path = ROOT / entry
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in {".py", ".sh", ".md"}]
        )
        for file in files:
            if file.name in {"bootstrap.sh", "test_bootstrap.py"}:
                continue
            texts[file] = file.read_text(encoding="utf-8")
    return texts


def _bootstrap_text() -> str:
    return (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")


def test_every_called_program_is_installed_by_bootstrap() -> None:
    bootstrap = _bootstrap_text()
    texts = _caller_texts()
    called: dict[str, list[str]] = {}
    for program in PROGRAM_PACKAGES:
        pattern = re.compile(rf"(?<![\w./-]){re.escape(program)}(?![\w-])")
        for file, text in texts.items():
            if pattern.search(text):
                called.setdefault(program, []).append(str(file.relative_to(ROOT)))
    # The scan must see the programs this project is known to call, or it checks nothing.
    assert {"mosquitto_sub", "curl", "mosquitto", "chromium", "chromedriver"} <= called.keys(), sorted(called)
    missing = {
        program: files[:3]
        for program, files in called.items()
        if not re.search(rf"(?<![\w-]){re.escape(PROGRAM_PACKAGES[program])}(?![\w-])", bootstrap)
    }
    assert not missing, f"called but not installed by scripts/bootstrap.sh: {missing}"


@pytest.mark.parametrize("script", ["run.sh", "test.sh", "bench.sh"])
def test_every_entry_script_runs_bootstrap(script: str) -> None:
    text = (ROOT / "scripts" / script).read_text(encoding="utf-8")
    assert "scripts/bootstrap.sh" in text


def test_test_command_installs_browser_packages() -> None:
    """The browser tests need Chromium: the README test command must ask bootstrap for them."""
    text = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert re.search(r"scripts/bootstrap\.sh --(test|bench)\b", text)


def test_bootstrap_refuses_mosquitto_older_than_2_0_12() -> None:
    """Mosquitto < 2.0.12 drops $share subscriptions of persistent sessions on a restart."""
    text = _bootstrap_text()
    assert re.search(r'min_mosquitto="2\.0\.12"', text)
    assert "bookworm-backports" in text
