"""City views of the operations centre: air quality index, surface water class and rain warnings.

Pure computation, no I/O: the API's queries fetch readings and these modules turn them into the
figures the standards define (HJ 633, GB 3838-2002, the national rainstorm warning signals).
"""

from __future__ import annotations

from cityneuron.errors import CityNeuronError


class CityViewError(CityNeuronError, ValueError):
    """An input a city view cannot evaluate (a negative or non-finite concentration, say)."""
