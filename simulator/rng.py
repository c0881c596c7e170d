"""Counter-based random numbers: every value is a pure function of its key and its tick.

A value for (seed, kind, stream, device, tick) never depends on which other devices were
stepped before it or on when the simulation started, so any subset of devices can be
evaluated at any simulated time and the answer is always the same. The mixer is the
SplitMix64 finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), applied element-wise to numpy uint64 arrays.
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import ArrayLike, NDArray

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TO_UNIT = 1.0 / float(1 << 53)


def stream_id(name: str) -> int:
    """A stable 32-bit number for a stream name (independent of Python's hash seed)."""
    return zlib.crc32(name.encode())


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    z = z + _GAMMA
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _as_u64(values: ArrayLike) -> NDArray[np.uint64]:
    return np.atleast_1d(np.asarray(values)).astype(np.int64).astype(np.uint64)


def hash64(*parts: ArrayLike) -> NDArray[np.uint64]:
    """Mix integer keys (scalars or broadcastable arrays) into well-spread 64-bit values."""
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for part in parts:
            h = _mix(h ^ _as_u64(part))
        return h


def uniform(*parts: ArrayLike) -> NDArray[np.float64]:
    """Uniform numbers in [0, 1) keyed by ``parts``."""
    return (hash64(*parts) >> _S11).astype(np.float64) * _TO_UNIT


def normal(*parts: ArrayLike) -> NDArray[np.float64]:
    """Standard normal numbers keyed by ``parts`` (Box-Muller on two derived uniforms)."""
    h = hash64(*parts)
    with np.errstate(over="ignore"):
        u1 = 1.0 - (h >> _S11).astype(np.float64) * _TO_UNIT
        u2 = (_mix(h) >> _S11).astype(np.float64) * _TO_UNIT
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def smooth_noise(t: NDArray[np.float64], period: float, *parts: ArrayLike) -> NDArray[np.float64]:
    """Noise that varies smoothly in ``t``: normal knots every ``period``, smoothstep between.

    The standard deviation dips to about 0.7 between knots; callers treat it as roughly N(0, 1).
    """
    x = np.asarray(t, dtype=np.float64) / period
    k = np.floor(x)
    w = x - k
    w = w * w * (3.0 - 2.0 * w)
    k_int = k.astype(np.int64)
    a = normal(*parts, k_int)
    b = normal(*parts, k_int + 1)
    return a + (b - a) * w
