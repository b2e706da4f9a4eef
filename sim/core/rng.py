"""Random streams: every draw is a function of (run seed, the world's stream, its step, purpose, index).

Why counter-based. A replicate, a Shapley coalition, a counterfactual and an
RL environment are each a world of one batch, and comparisons between worlds
are only exact when worlds that share a stream share their randomness. With
one stateful generator per run, world b's numbers depend on how many worlds
came before it and on how much every consumer drew; with a generator per
world, a checkpoint must carry B generator states and the CPU and CUDA
generators disagree. A counter-based draw (as JAX's threefry, or Philox)
has none of these problems: it is a pure function of its coordinates, so

- world b of a batch is bit-identical to the single-world run of stream b,
  whatever B is and whatever else is in the batch;
- two worlds with the same stream draw the same numbers, so twins that differ
  in one agent differ only through that agent;
- nothing but the per-world step counters goes into a checkpoint;
- the same numbers come out on every device: the hash is 64-bit integer
  arithmetic, and compiled kernels compute it inline from :meth:`Streams.key`.

The hash is SplitMix64's finaliser (Steele, Lea and Flood 2014), applied to a
key built from the coordinates; index i of a draw is the finaliser of
``key + (i + 1) * golden``, which is SplitMix64's own sequence from that key.

Rules for consumers (checked by ``sim.checks``): draw fixed-shape tensors
``[B, ...]`` for a named purpose, never a number of values that depends on
the state, and use a different purpose for each distinct draw in a step.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numba
import numpy as np
import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A 64-bit pattern as the signed int64 torch stores."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def mix64(z: int) -> int:
    """SplitMix64's finaliser on a Python int (the reference for the tensor and compiled versions)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> shift) & ((1 << (64 - shift)) - 1)


def mix64_tensor(z: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` elementwise on an int64 tensor (wrapping multiplication, any device)."""
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    return z ^ _shr(z, 31)


@lru_cache(maxsize=None)
def purpose_code(purpose: str) -> int:
    """A stable 64-bit code for a purpose name (the same in every process and version)."""
    return int.from_bytes(hashlib.blake2b(purpose.encode(), digest_size=8).digest(), "little")


def world_keys(seed: int, stream: torch.Tensor, step: torch.Tensor, purpose: str) -> torch.Tensor:
    """``[B]`` int64 keys: one per world, from (seed, its stream, its step, purpose)."""
    base = mix64(mix64(seed & MASK64) ^ purpose_code(purpose))
    z = mix64_tensor(torch.full_like(stream, _signed(base)) ^ stream)
    return mix64_tensor(z ^ step.to(stream))


class Streams:
    """The random draws of B worlds at their current steps.

    ``stream[b]`` is world b's stream and ``step[b]`` its step counter
    (``[B]`` int64 on the run's device). A consumer asks for a tensor of shape
    ``[B, ...]`` for a purpose; entry ``[b, j...]`` depends only on the seed,
    ``stream[b]``, ``step[b]``, the purpose and the flat index of ``j`` within
    the world. Build-time draws (initial values, parameters) use step -1.
    """

    def __init__(self, seed: int, stream: torch.Tensor, step: torch.Tensor | None = None):
        self.seed = int(seed)
        self.stream = stream.to(torch.int64)
        self.step = torch.zeros_like(self.stream) if step is None else step.to(self.stream)

    @classmethod
    def of(cls, seed: int, streams: int | list[int] | torch.Tensor, device: torch.device | str = "cpu",
           step: int = 0) -> "Streams":
        """``of(seed, 4)`` gives streams 0..3; a list or tensor names the streams world by world."""
        stream = torch.arange(streams) if isinstance(streams, int) else torch.as_tensor(streams)
        stream = stream.to(device=device, dtype=torch.int64)
        return cls(seed, stream, torch.full_like(stream, step))

    @property
    def b(self) -> int:
        return int(self.stream.shape[0])

    @property
    def device(self) -> torch.device:
        return self.stream.device

    def at(self, step: int | torch.Tensor) -> "Streams":
        """The same worlds at ``step`` (a number for every world, or a ``[B]`` tensor)."""
        if not torch.is_tensor(step):
            step = torch.full_like(self.stream, int(step))
        return Streams(self.seed, self.stream, step)

    def select(self, worlds: torch.Tensor | slice) -> "Streams":
        """The streams of some worlds (a bool mask or an index)."""
        return Streams(self.seed, self.stream[worlds], self.step[worlds])

    # ------------------------------------------------------------------ draws

    def key(self, purpose: str) -> torch.Tensor:
        """``[B]`` int64 per-world keys, for compiled kernels that hash ``key + (i + 1) * GOLDEN`` inline."""
        return world_keys(self.seed, self.stream, self.step, purpose)

    def bits(self, purpose: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Raw 64-bit draws (int64 bit patterns) of shape ``[B, ...]``."""
        shape = self._shape(shape)
        per_world = int(np.prod(shape[1:], dtype=np.int64))
        index = torch.arange(1, per_world + 1, device=self.device, dtype=torch.int64) * _signed(GOLDEN)
        z = self.key(purpose)[:, None] + index[None, :]
        return mix64_tensor(z).reshape(shape)

    def uniform(self, purpose: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform in [0, 1): the top 24 (float32) or 53 (float64) bits of each draw."""
        bits = 24 if dtype == torch.float32 else 53
        if self.device.type == "cpu":  # the same numbers from a compiled loop: one pass instead of a dozen
            shape = self._shape(shape)
            per_world = int(np.prod(shape[1:], dtype=np.int64))
            out = np.empty((self.b, per_world), dtype=np.float64)
            _uniform_cpu(self.key(purpose).numpy(), 64 - bits, 2.0 ** -bits, out)
            return torch.from_numpy(out).reshape(shape).to(dtype)
        z = _shr(self.bits(purpose, shape), 64 - bits)
        return (z.to(torch.float64) * (2.0 ** -bits)).to(dtype)

    def integers(self, purpose: str, high: int | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Integers in ``[0, high)`` (``high`` a number or a tensor broadcasting to ``shape``)."""
        u = self.uniform(purpose, shape, torch.float64)
        high_t = torch.as_tensor(high, device=self.device)
        return torch.minimum((u * high_t).long(), (high_t - 1).clamp_min(0).long())

    def normal(self, purpose: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws (Box–Muller on two uniforms of the purpose)."""
        u1 = self.uniform(purpose + "#r", shape, torch.float64)
        u2 = self.uniform(purpose + "#t", shape, torch.float64)
        z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * np.pi * u2)
        return z.to(dtype)

    def _shape(self, shape) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != self.b:
            raise ValueError(f"a draw's shape must start with the number of worlds ({self.b}), got {shape}")
        return shape

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"stream": self.stream.cpu(), "step": self.step.cpu()}

    @classmethod
    def from_state_dict(cls, seed: int, state: dict[str, torch.Tensor], device) -> "Streams":
        return cls(seed, state["stream"].to(device), state["step"].to(device))


@numba.njit(cache=True, parallel=True)
def _uniform_cpu(keys, shift, scale, out):
    """``out[b, i]`` = the top ``64 - shift`` bits of ``mix64(keys[b] + (i + 1) * GOLDEN)``, times ``scale``."""
    per_world = out.shape[1]
    total = keys.shape[0] * per_world
    for flat in numba.prange(total):
        b = flat // per_world
        i = flat - b * per_world
        z = np.uint64(keys[b]) + np.uint64(i + 1) * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
        out[b, i] = np.float64(z >> np.uint64(shift)) * scale


def network_seed(seed: int, stream: int = 0) -> int:
    """The 32-bit seed a run hands to its network generator (networkx, numpy).

    One graph shared by every world is built from ``network_seed(seed)``. With
    ``network.independent: true`` each world's graph is built from
    ``network_seed(seed, its stream)``: a function of the stream, not of the
    world's place in the batch, so world b of a batch has the graph of the
    single-world run of its stream, and worlds that share a stream share a
    graph. Stream 0's graph is the shared one.
    """
    return mix64(mix64(seed & MASK64) ^ purpose_code("network") ^ (int(stream) & MASK64)) % (2**32)
