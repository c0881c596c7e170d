"""Exact arithmetic for threshold comparisons and rounding."""

from __future__ import annotations

import math
from fractions import Fraction

from api.cityviews import CityViewError

# Readings and averages arrive as binary floats: 70.0 may be 69.99999999999999 after an average,
# which would fall into the wrong breakpoint segment or round up to the next integer. Taking
# values to a millionth of their unit (far below any instrument's resolution) and computing in
# fractions makes every boundary land exactly where the standard puts it.
_DECIMALS = 6


def exact(value: float, *, name: str = "value") -> Fraction:
    """``value`` as an exact fraction at 1e-6 resolution; non-finite or negative values are refused."""
    if not math.isfinite(value):
        raise CityViewError(f"{name} must be a finite number, got {value!r}")
    quantised = Fraction(format(value, f".{_DECIMALS}f"))
    if quantised < 0:
        raise CityViewError(f"{name} must not be negative, got {value!r}")
    return quantised
