"""The worlds' random streams, hashed inside compiled kernels: the numbers ``sim.core.rng.Streams`` draws.

Draw ``s`` (0-based) of a purpose in world b is SplitMix64's finaliser of
``key + (s + 1) * GOLDEN``, ``key`` being ``Streams.key(purpose)[b]``; the
float64 uniform is its top 53 bits times 2^-53 and an integer below ``high``
is ``min(floor(u * high), high - 1)``. ``tests/test_streams.py`` holds these
to ``Streams.bits``, ``uniform`` and ``integers`` for many keys.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from sim.core.rng import MASK64, mix64, purpose_code

# SplitMix64 (sim.core.rng): the same constants, as unsigned 64-bit integers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_TWO_TO_MINUS_53 = 2.0 ** -53

# ---------------------------------------------------------------- the inline hash


@njit(cache=True, nogil=True, inline="always")
def _mix64(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True, inline="always")
def _bits(key, s):
    """Draw ``s`` (0-based) of a world's purpose, as an unsigned 64-bit integer."""
    return _mix64(key + np.uint64(s + 1) * _GOLDEN)


@njit(cache=True, nogil=True, inline="always")
def _uniform(key, s):
    """``Streams.uniform(..., float64)``: the top 53 bits times 2^-53."""
    return np.float64(_bits(key, s) >> _S11) * _TWO_TO_MINUS_53


@njit(cache=True, nogil=True, inline="always")
def _below(key, s, high):
    """``Streams.integers``: ``min(floor(u * high), high - 1)`` with ``u`` the float64 uniform; ``high >= 1``."""
    return min(np.int64(_uniform(key, s) * np.float64(high)), high - 1)


@njit(cache=True, nogil=True)
def _world_keys(base, stream, step):
    """``Streams.key``: ``mix64(mix64(base ^ stream[b]) ^ step[b])`` with ``base`` the seed's and purpose's code."""
    out = np.empty(stream.shape[0], np.uint64)
    for b in range(stream.shape[0]):
        out[b] = _mix64(_mix64(base ^ np.uint64(stream[b])) ^ np.uint64(step[b]))
    return out.view(np.int64)


@lru_cache(maxsize=256)
def _purpose_base(seed: int, purpose: str) -> int:
    return mix64(mix64(seed & MASK64) ^ purpose_code(purpose))


def stream_keys(rng, purpose: str) -> np.ndarray:
    """``rng.key(purpose)`` as a numpy array, computed here: the same numbers as the torch version (tested),
    without its twenty small tensor operations (about 40 us a key, a third of a step at N = 10^3)."""
    if rng.device.type != "cpu":
        return rng.key(purpose).cpu().numpy()
    return _world_keys(np.uint64(_purpose_base(rng.seed, purpose)), rng.stream.numpy(), rng.step.numpy())


@njit(cache=True)
def stream_bits(keys, count):
    """``[B, count]`` int64 bit patterns: what ``Streams.bits`` draws for per-world ``keys`` [B] int64."""
    out = np.empty((keys.shape[0], count), np.uint64)
    for b in range(keys.shape[0]):
        key = np.uint64(keys[b])
        for s in range(count):
            out[b, s] = _bits(key, s)
    return out.view(np.int64)


@njit(cache=True)
def stream_uniform(keys, count):
    """``[B, count]`` float64: what ``Streams.uniform(..., torch.float64)`` draws for per-world ``keys``."""
    out = np.empty((keys.shape[0], count), np.float64)
    for b in range(keys.shape[0]):
        key = np.uint64(keys[b])
        for s in range(count):
            out[b, s] = _uniform(key, s)
    return out


@njit(cache=True)
def stream_below(keys, high, count):
    """``[B, count]`` int64: what ``Streams.integers(..., high[:, None], ...)`` draws (``high`` [B] >= 1)."""
    out = np.empty((keys.shape[0], count), np.int64)
    for b in range(keys.shape[0]):
        key = np.uint64(keys[b])
        for s in range(count):
            out[b, s] = _below(key, s, high[b])
    return out
