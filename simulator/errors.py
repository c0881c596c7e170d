"""Exceptions of the simulator package."""

from __future__ import annotations

from cityneuron.errors import CityNeuronError


class SimulatorError(CityNeuronError):
    """The simulator cannot do what was asked (unknown preset, bad option)."""


class PublishError(SimulatorError):
    """A gateway connection to the broker failed or could not be established."""
