"""Per-device MQTT passwords derived from one secret, so a fleet of millions needs no password list.

The broker's password file holds only hashes (written by ``cityneuron broker``); the simulator,
which plays every device, derives each password from the same device key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from cityneuron.errors import ConfigError

DEVICE_KEY_BYTES = 32


def new_device_key() -> bytes:
    return secrets.token_bytes(DEVICE_KEY_BYTES)


def device_password(device_key: bytes, device_id: str) -> str:
    """The MQTT password of ``device_id``: HMAC-SHA256 under the device key, base64url."""
    digest = hmac.new(device_key, device_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def read_device_key(path: Path) -> bytes:
    """The device key stored (hex) in ``path``."""
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the device key from {path}: {exc}") from exc
    if len(key) < 16:
        raise ConfigError(f"device key in {path} is too short ({len(key)} bytes)")
    return key
