"""Mosquitto password files: ``$7$`` hashes, written whole or with devices added to them.

A line is ``<username>:<hash>``. Device usernames are device ids ([a-z0-9-], the contract's
pattern); service and gateway users contain a ``.`` (cityneuron.provision), so the two never mix.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from typing import IO

from cityneuron.contract import is_device_id
from cityneuron.credentials import device_password
from cityneuron.errors import ConfigError

# Mosquitto 2.0 password hashes: "$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>",
# with mosquitto_passwd's defaults (src/password_mosq.c: PW_DEFAULT_ITERATIONS 101, 12-byte salt).
HASH_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_ID = "7"
_CHUNK_DEVICES = 2000


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``password`` hashed as mosquitto_passwd does ($7$: PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"${_HASH_ID}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_mosquitto_hash(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a $7$ hash from a Mosquitto password file."""
    try:
        _, hash_id, iterations, salt, digest = hashed.split("$")
        if hash_id != _HASH_ID:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


def _device_lines(device_key: bytes, device_ids: Sequence[str]) -> str:
    return "".join(f"{d}:{mosquitto_hash(device_password(device_key, d))}\n" for d in device_ids)


def _worker_signals() -> None:
    """Hashing workers ignore SIGINT (a terminal sends it to them too: the parent decides) and die
    on SIGTERM (the pool's terminate), whatever handlers they inherited from the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _counted_lines(device_key: bytes, device_ids: Sequence[str]) -> tuple[int, str]:
    return len(device_ids), _device_lines(device_key, device_ids)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def checked_ids(device_ids: Iterable[str]) -> Iterator[str]:
    for device_id in device_ids:
        if not is_device_id(device_id):
            raise ConfigError(f"device id {device_id!r} does not match the contract's device id pattern")
        yield device_id


def username(line: str) -> str:
    return line.split(":", 1)[0]


def device_usernames(path: Path) -> Iterator[str]:
    """The device usernames in a password file (service and gateway users left out)."""
    with path.open() as handle:
        for line in handle:
            name = username(line)
            if is_device_id(name):
                yield name


def _write_devices(handle: IO[str], device_key: bytes, device_ids: Iterable[str], workers: int) -> int:
    """Hash and write ``device_ids``; ``workers`` > 1 spreads the hashing over processes."""
    devices = 0
    chunks = _chunks(device_ids, _CHUNK_DEVICES)
    if workers > 1:
        # A multiprocessing pool, not concurrent.futures: leaving it on Ctrl-C (or any error)
        # terminates the workers at once, where an executor would first hash every queued chunk.
        with multiprocessing.Pool(workers, _worker_signals) as pool:
            for count, lines in pool.imap(partial(_counted_lines, device_key), chunks):
                handle.write(lines)
                devices += count
    else:
        for chunk in chunks:
            handle.write(_device_lines(device_key, chunk))
            devices += len(chunk)
    return devices


def _replace_private(path: Path, write: Callable[[IO[str]], int], owner: tuple[int, int] | None) -> int:
    """Write a new 0600 file through ``write(handle)`` and put it in place atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        result = write(handle)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    return result


def write_password_file(
    path: Path,
    device_key: bytes,
    device_ids: Iterable[str],
    users: dict[str, str],
    *,
    owner: tuple[int, int] | None = None,
    workers: int = 1,
) -> int:
    """Write the Mosquitto password file: service/gateway ``users`` then every device, nothing
    else. Hashing is the cost (one PBKDF2 per device). Returns the number of device lines."""

    def write(handle: IO[str]) -> int:
        for user, password in users.items():
            handle.write(f"{user}:{mosquitto_hash(password)}\n")
        return _write_devices(handle, device_key, checked_ids(device_ids), workers)

    return _replace_private(path, write, owner)


def add_to_password_file(
    path: Path,
    device_key: bytes,
    device_ids: Iterable[str],
    users: dict[str, str] | None = None,
    *,
    owner: tuple[int, int] | None = None,
    workers: int = 1,
) -> tuple[int, int]:
    """Add ``device_ids`` to the password file, keeping every device already in it.

    Only devices not yet in the file are hashed (their password derives from the same key, so an
    existing line is already right). ``users`` replaces the service and gateway lines; None keeps
    them. Holds the new ids in memory, not the file. Returns (device lines, devices added).
    """
    pending = dict.fromkeys(checked_ids(device_ids))

    def write(handle: IO[str]) -> int:
        kept = 0
        if users is not None:
            for user, password in users.items():
                handle.write(f"{user}:{mosquitto_hash(password)}\n")
        if path.exists():
            with path.open() as old:
                for line in old:
                    if not line.strip():
                        continue
                    name = username(line)
                    if is_device_id(name):
                        pending.pop(name, None)
                    elif users is not None:
                        continue
                    handle.write(line if line.endswith("\n") else line + "\n")
                    kept += is_device_id(name)
        return kept + _write_devices(handle, device_key, pending, workers)

    total = _replace_private(path, write, owner)
    return total, len(pending)
