"""Errors raised by the ingest service."""

from __future__ import annotations

from cityneuron.errors import CityNeuronError


class IngestError(CityNeuronError):
    """The ingest service cannot run as configured (for example a database schema newer than the code)."""
