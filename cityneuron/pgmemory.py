"""PostgreSQL settings for the city's size: memory for a large registry, and WAL to match.

At 17 M devices every telemetry message updates a row of ``device_activity`` and one of
``latest_reading``, each picked at random among 17 M. Measured at 1:1 with 256 MB of shared
buffers (when those counters still lived in the wide ``devices`` table): the pages were read
from disk one at a time (ingest's backend waiting on ``DataFileRead``, about 300 reads/s) and
ingest stored about 300 messages/s of the city's 2,850. That working set has to stay in memory;
the OS page cache is not enough on a machine that reclaims cold pages.

Those updates also land on random pages: with checkpoints every 2 GB of WAL (about 20 s at 1:1)
nearly every update wrote a full-page image (measured: 115 MB/s written for ~600 messages/s).
Spacing checkpoints out lets one image and one write-back serve the many updates a page gets in
between (the electricity meters' pages are touched dozens of times an hour), and compressing
the images shrinks the rest.
"""

from __future__ import annotations

import os

DEFAULT_SHARED_BUFFERS_MB = 256
# From this many devices on, the registry gets its own memory and is read in at start-up.
LARGE_CITY_DEVICES = 1_000_000
# Working set per device: device_activity's heap and indexes plus latest_reading's once the
# device has reported. Measured at 1:1 (17.1 M devices, schema 5): 3.0 GB + 4.4 GB.
_BYTES_PER_DEVICE = 480
# PostgreSQL's own guidance: a quarter of RAM and more for a dedicated server, rarely over 40 %
# (the OS cache still holds the reading partitions and the WAL).
_MAX_RAM_FRACTION = 0.4
# Tables whose every page the ingest may touch, with their indexes.
REGISTRY_TABLES = ("device_activity", "latest_reading")


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# WAL for a large city: a checkpoint at most every 30 minutes or 16 GB of WAL (disk is cheaper
# than writing each page again), images compressed (PostgreSQL 15: lz4, built into Debian's).
_LARGE_CITY_WAL = {"max_wal_size": "16GB", "checkpoint_timeout": "30min", "wal_compression": "lz4"}


def server_settings(
    devices: int, shared_buffers: int | None = None, ram: int | None = None
) -> dict[str, str]:
    """``postgres -c`` settings for a city of ``devices`` (``shared_buffers``: MB, None = sized)."""
    mb = shared_buffers if shared_buffers is not None else shared_buffers_mb(devices, ram)
    settings = {"shared_buffers": f"{mb}MB"}
    if devices >= LARGE_CITY_DEVICES:
        settings.update(_LARGE_CITY_WAL)
    return settings


def shared_buffers_mb(devices: int, ram: int | None = None) -> int:
    """Shared buffers for a city of ``devices``: the default for small cities, else the
    registry's working set, at most 40 % of ``ram`` (default: this machine's)."""
    if devices < LARGE_CITY_DEVICES:
        return DEFAULT_SHARED_BUFFERS_MB
    available = (ram if ram is not None else ram_bytes()) * _MAX_RAM_FRACTION
    wanted = devices * _BYTES_PER_DEVICE
    return max(DEFAULT_SHARED_BUFFERS_MB, int(min(wanted, available) // 2**20))
