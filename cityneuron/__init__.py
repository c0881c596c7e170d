"""CityNeuron (城市神经元): an open testbed for a city's sensor network."""

__version__ = "0.1.0"
