"""Exceptions of the simulator package."""

from __future__ import annotations

from cityneuron.errors import CityNeuronError


class SimulatorError(CityNeuronError):
    """The simulator cannot do what was asked (unknown preset, bad option)."""


class PublishError(SimulatorError):
    """A gateway connection to the broker failed or could not be established."""


class SpecFileError(SimulatorError):
    """A scenario or fault file cannot be read or breaks its format; the message names the place."""


class ScenarioError(SpecFileError):
    """A scenario timeline file is missing, not TOML, or has a bad event or field."""


class FaultConfigError(SpecFileError):
    """A fault configuration file is missing, not TOML, or has a bad rate or parameter."""
