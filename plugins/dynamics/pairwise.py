"""Pairwise bounded confidence: Deffuant–Weisbuch and algorithmic bias.

One step draws ``pairs_per_agent * N`` interactions per world exactly as the
sequential model draws them (a uniformly random focal agent meets a uniformly
random neighbour, i.i.d.; see ``sim.core.pairing``) and applies them in order.
In an interaction of agents i and j with distance d between i's values and
what j shows:

- if d < epsilon_i: x_i += mu_i (x_j - x_i)   (and symmetrically for j);
- else, with a repulsion bound epsilon_r, if d > epsilon_r: x_i -= mu_i (x_j - x_i), clipped to [0, 1].

Distances: ``l2`` is the Euclidean distance divided by sqrt(K), so that it lies
in [0, 1] like epsilon whatever the number of dimensions; ``linf`` the largest
difference on one dimension; ``per_dimension`` treats each dimension as its
own opinion (a dimension moves when its own difference is within epsilon).

Absent agents (``state.active`` false) are never drawn, as focal agent or as
partner, and the others keep the interaction rate they would have without
them, by one of two rules (``absence``; ``sim.core.pairing``): ``aligned``
(the default) keeps every present agent's draws where they are, so twins
that differ in one agent's presence agree wherever it cannot reach;
``rebuilt`` makes a world without its last group the scenario built without it.

Kernels: ``numba`` (compiled, CPU: the pairs hashed inline from the worlds'
streams, then applied; worlds in parallel, or one world on two threads) and
``torch`` (``sim.core.pairing.sample_pairs``, then rounds of disjoint pairs,
any device) draw the same pairs and give the same values bit for bit;
``auto`` takes numba on the CPU and torch elsewhere. With per-world graphs
(``network.independent``) each world draws its partners on its own graph.
"""

from __future__ import annotations

import weakref
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch

from sim.contracts import Interval, PluginParams, State, Streams, World
from sim.core.pairing import pair_counts, rounds, sample_pairs

METRICS = {"l2": 0, "linf": 1, "per_dimension": 2}


class _PairwiseParams(PluginParams):
    distance: Literal["l2", "linf", "per_dimension"] = "l2"
    """How far apart two value vectors are (see the module docstring)."""
    pairs_per_agent: Annotated[float, Interval(gt=0)] = 1.0
    """Interactions drawn per step, as a multiple of N (1 = one sweep, as an NDlib iteration)."""
    repulsion: Annotated[float, Interval(gt=0, le=1)] | None = None
    """Second bound epsilon_r: agents further apart than this push each other away. None: no repulsion."""
    kernel: Literal["auto", "numba", "torch"] = "auto"
    """Which implementation applies the pairs; all give the same result."""
    absence: Literal["aligned", "rebuilt"] = "aligned"
    """How absent agents (``state.active`` false) leave the draws. aligned: slot s's focal agent is
    floor(u_s * N) whatever the mask; a slot whose focal agent is absent is spent (nothing moves), so every
    present agent is focal at the rate it has without the absent ones and twins that differ in one agent's
    presence draw the same pairs everywhere else. rebuilt: slot s's focal agent is the floor(u_s * m)-th of
    the m active agents and only the first round(pairs_per_agent * m) slots are used, so a world whose last
    group is absent is, bit for bit, the scenario rebuilt without it. Partners: the floor(u' * d)-th of the
    focal agent's d active neighbours under both."""


def _all(flags: torch.Tensor) -> bool:
    # On the CPU numpy's single-threaded check: a torch reduction of 10^6 flags wakes torch's thread pool,
    # which on two shared cores cost 0.5 ms or more a call.
    return bool(flags.numpy().all()) if flags.device.type == "cpu" else bool(flags.all())


def _any(flags: torch.Tensor) -> bool:
    return bool(flags.numpy().any()) if flags.device.type == "cpu" else bool(flags.any())


def _shown_and_fixed(values: torch.Tensor, expressed: torch.Tensor, world: World):
    """What each agent shows: its current values, or (``fixed`` [B or 1, N]) a policy's expressed vector."""
    fixed = ~world.honest.reshape(-1, world.n)
    return (expressed if _any(fixed) else values), fixed


def _mask(state: State) -> torch.Tensor | None:
    """The active mask, or None when every agent of every world takes part."""
    return None if _all(state.active) else state.active


def _rates(world: World) -> torch.Tensor:
    # A zealot's rate is zero inside the kernel, so it never moves mid-step either.
    rate = world.params.rate.to(torch.float32)
    return torch.where(world.params.zealot, 0.0, rate) if _any(world.params.zealot) else rate


_CONSTANT: dict[int, tuple[weakref.ref, int, np.ndarray]] = {}


def _constant_rows(param: torch.Tensor) -> np.ndarray:
    """``[rows]`` bool: each row of a per-agent parameter holds one value; remembered while the tensor lives
    unchanged (a parameter is the same tensor step after step; a full scan is 2 ms at N = 10^6)."""
    from . import _numba

    key = id(param)
    hit = _CONSTANT.get(key)
    if hit is not None and hit[0]() is param and hit[1] == param._version:
        return hit[2]
    out = _numba.constant_rows(param.numpy())
    if len(_CONSTANT) > 16:
        _CONSTANT.clear()
    _CONSTANT[key] = (weakref.ref(param), param._version, out)
    return out


class Deffuant:
    """Deffuant–Weisbuch bounded confidence, pairs drawn and applied as the sequential model does."""

    Params: ClassVar = _PairwiseParams
    uses: ClassVar[tuple[str, ...]] = ("confidence", "rate")
    keeps_unit_range: ClassVar[bool] = True  # convex moves / clipping, proven by tests/test_dynamics.py

    def __init__(self, params: _PairwiseParams):
        self.params = params

    def apply(self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
              rng: Streams) -> torch.Tensor:
        active = _mask(state)
        rule = self.params.absence
        count, used = pair_counts(self.params.pairs_per_agent, world.n, active, rule)
        if _use_numba(self.params.kernel, values):
            return self._numba_step(values, expressed, state, world, rng, count, used)
        focal, partner = sample_pairs(world.network, count, rng, "deffuant", active, used, rule)
        return self.apply_pairs(values, expressed, world, focal, partner)

    def _numba_step(self, values, expressed, state, world, rng, count, used) -> torch.Tensor:
        """The compiled step: pairs hashed inline from the streams' keys, drawn and applied chunk by chunk."""
        from . import _numba
        from ._inline_streams import stream_keys

        shown, fixed = _shown_and_fixed(values, expressed, world)
        values = values.contiguous()
        x = torch.empty_like(values)  # filled by the kernel, in parallel with its first draws
        repulse = self.params.repulsion
        net = world.network
        masked = used is not None
        used = torch.full((world.b,), count) if used is None else used
        eps = world.params.confidence.to(torch.float32).contiguous()
        mu = _rates(world).contiguous()
        _numba.deffuant(values.numpy(), x.numpy(), shown.contiguous().numpy(), fixed.contiguous().numpy(),
                        net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(world.b).numpy(),
                        stream_keys(rng, "deffuant/focal"),
                        stream_keys(rng, "deffuant/partner"), used.numpy(),
                        state.active.contiguous().numpy(), masked, eps.numpy(), mu.numpy(),
                        METRICS[self.params.distance], np.inf if repulse is None else float(repulse),
                        eps_uniform=_constant_rows(eps), mu_uniform=_constant_rows(mu),
                        aligned=self.params.absence == "aligned")
        return x

    def apply_pairs(self, values, expressed, world: World, focal, partner) -> torch.Tensor:
        """Apply given pairs ``[B, M]`` in order (the part the reference loop is tested against)."""
        shown, fixed = _shown_and_fixed(values, expressed, world)
        eps = world.params.confidence.to(torch.float32)
        mu = _rates(world)
        repulse = self.params.repulsion
        metric = METRICS[self.params.distance]
        if _use_numba(self.params.kernel, values):
            from . import _numba

            x = values.contiguous().clone()
            shown_np = x.numpy() if shown is values else shown.contiguous().numpy()
            _numba.apply_pairs(x.numpy(), shown_np, fixed.contiguous().numpy(), focal.contiguous().numpy(),
                               partner.contiguous().numpy(), eps.contiguous().numpy(), mu.contiguous().numpy(),
                               metric, np.inf if repulse is None else float(repulse))
            return x
        return deffuant_torch(values, shown if shown is not values else None, fixed, focal, partner, eps, mu,
                              metric, repulse)


class AlgorithmicBias(Deffuant):
    """Deffuant with biased partner choice: probability proportional to distance^-gamma (NDlib's model).

    gamma = 0 is plain Deffuant. The partner depends on the current values, so
    the draws of a world are applied one after another by a compiled CPU kernel
    (on another device the values visit the CPU for this dynamics).
    """

    class Params(_PairwiseParams):
        gamma: Annotated[float, Interval(ge=0)] = 1.0
        """Strength of the bias toward similar partners."""
        min_distance: Annotated[float, Interval(gt=0)] = 1e-5
        """Distances below this count as this (keeps distance^-gamma finite)."""
        kernel: Literal["auto", "numba"] = "auto"

    def apply(self, values, expressed, state, world, rng):
        """Slot s: focal agent from draw s of ``algorithmic_bias/focal`` (as Deffuant's), partner from
        float64 draw s of ``algorithmic_bias/partner`` times the total weight of its active neighbours."""
        from . import _numba
        from ._inline_streams import stream_keys

        device = values.device
        active = state.active.cpu().contiguous()
        count, used = pair_counts(self.params.pairs_per_agent, world.n, _mask(state), self.params.absence)
        used = torch.full((world.b,), count) if used is None else used.cpu()
        shown, fixed = _shown_and_fixed(values, expressed, world)
        x = values.detach().to("cpu", copy=True).contiguous()
        shown_np = x.numpy() if shown is values else shown.cpu().contiguous().numpy()
        net = world.network.to("cpu")
        repulse = self.params.repulsion
        _numba.algorithmic_bias(
            x.numpy(), shown_np, fixed.cpu().contiguous().numpy(), active.numpy(), not bool(active.all()),
            net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(world.b).numpy(),
            stream_keys(rng, "algorithmic_bias/focal"),
            stream_keys(rng, "algorithmic_bias/partner"), used.numpy(),
            world.params.confidence.to(torch.float32).cpu().contiguous().numpy(),
            _rates(world).cpu().contiguous().numpy(), METRICS[self.params.distance],
            np.inf if repulse is None else float(repulse), float(self.params.gamma),
            float(self.params.min_distance), self.params.absence == "aligned")
        return x.to(device)


def _use_numba(kernel: str, values: torch.Tensor) -> bool:
    if kernel == "numba" or (kernel == "auto" and values.device.type == "cpu"):
        if values.device.type != "cpu":
            raise ValueError("the numba kernel runs on the CPU; use kernel: torch (or auto) on other devices")
        return True
    return False


def deffuant_torch(values, shown, fixed, focal, partner, eps, mu, metric: int, repulse) -> torch.Tensor:
    """Torch kernel: rounds of disjoint pairs (``sim.core.pairing.rounds``), each applied at once."""
    b, n, k = values.shape
    x = values.clone().reshape(b * n, k)
    shows = x if shown is None else shown.reshape(b * n, k)
    fixed_flat = fixed.to(values.device).expand(b, n).reshape(-1)
    eps_flat = eps.expand(b, n).reshape(-1)
    mu_flat = mu.expand(b, n).reshape(-1)
    for world, position in rounds(focal, partner, n):
        i = world * n + focal[world, position]
        j = world * n + partner[world, position]
        xi, xj = x[i], x[j]
        si = torch.where(fixed_flat[i, None], shows[i], xi) if shown is not None else xi
        sj = torch.where(fixed_flat[j, None], shows[j], xj) if shown is not None else xj
        x[i] = _move(xi, sj, eps_flat[i], mu_flat[i], metric, repulse)
        x[j] = _move(xj, si, eps_flat[j], mu_flat[j], metric, repulse)
    return x.reshape(b, n, k)


def _move(own: torch.Tensor, other: torch.Tensor, eps, mu, metric: int, repulse) -> torch.Tensor:
    """New values of agents with values ``own`` [P, K] meeting ``other`` [P, K]."""
    diff64 = other.double() - own.double()
    eps64 = eps.double()
    k = own.shape[1]
    if metric == 2:
        dist, attract_at, repel_at = diff64.abs(), eps64[:, None], repulse
    elif metric == 0:
        dist = diff64.square().sum(1, keepdim=True)
        attract_at, repel_at = eps64[:, None] ** 2 * k, None if repulse is None else repulse * repulse * k
    else:
        dist, attract_at, repel_at = diff64.abs().amax(1, keepdim=True), eps64[:, None], repulse
    step = mu[:, None] * (other - own)
    out = torch.where(dist < attract_at, own + step, own)
    if repel_at is not None:
        out = torch.where((dist >= attract_at) & (dist > repel_at), (own - step).clamp(0.0, 1.0), out)
    return out
