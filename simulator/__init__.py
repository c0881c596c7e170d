"""The CityNeuron simulator: a deterministic city of devices publishing contract v1 messages.

``simulator.city.build_city`` makes the device registry, ``simulator.kinds`` holds one
vectorised value model per catalog kind driven by shared weather and calendar
(``simulator.drivers``, ``simulator.clock``), and ``simulator.runner.run`` publishes the
city through a few gateway MQTT connections.
"""

from simulator.city import City, DeviceTable, build_city
from simulator.errors import PublishError, SimulatorError
from simulator.runner import SimSummary, run

__all__ = ["City", "DeviceTable", "PublishError", "SimSummary", "SimulatorError", "build_city", "run"]
