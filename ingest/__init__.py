"""Ingest: MQTT telemetry and status into PostgreSQL/TimescaleDB, acknowledged only after commit.

Entry points: :func:`ingest.service.run` (blocks until stopped) and :class:`ingest.service.IngestService`
(a context manager for in-process use). ``python -m ingest`` runs it with settings from the environment.
"""

from __future__ import annotations

from ingest.errors import IngestError

__all__ = ["IngestError"]
