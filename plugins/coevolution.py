"""Human-AI coevolution: AI influence with trust by source, and the loop's measures.

- ``trusted_broadcast`` (a ``valuesim.protocols`` plugin) is ``broadcast`` whose
  listeners weigh what these speakers say by a per-listener ``trust``: a
  reached listener within its bound moves ``trust_i * mu_i`` of the way to the
  message instead of ``mu_i``. One such protocol per source (AI, experts, ...)
  gives trust by source; ``trust: 1`` (no spread) is ``broadcast`` exactly. It records
  who was reached (``reached_agents`` [B, N]), which ``learn_from: reached``
  alignment rules read.
- Metrics (``valuesim.metrics``): ``diversity`` (per-dimension variance, mean
  pairwise distance, entropy of binned values), ``lock_in`` and
  ``alignment_gap`` (against the counterfactual twin), ``progress_scores``
  (ProgressGym's follow / predict / coevolve cosine scores against a
  reference trajectory).

**Twins.** A scenario's ``counterfactual: [groups]`` gives every world a twin
on the same stream without those groups (``world.twin``,
``world.counterfactual``); with common random numbers, a factual world minus
its twin is the AI's effect. Readings that compare with the twin are written
for the factual worlds and are NaN in the counterfactual worlds themselves
and in runs without twins (``sim.checks``' tiny world has none). Humans are
paired agent by agent: agent i of a world and agent i of its twin start from
the same values, and only agents present in both count.

All readings are float64 ``[B, S, D]`` on the values' device, computed for
all worlds at once; only active agents count; a scope without anyone to count
reads NaN. Distances are Euclidean divided by sqrt(K) (in [0, 1]) unless said
otherwise.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
from pydantic import model_validator

from sim.contracts import Interval, PluginParams, ProtocolOutput, Reading, State, Streams, World

from ._reduce import per_scope, scope_moments, scope_names
from .dynamics.drift import TrajectorySource, load
from .metrics import exact_mean_distance, sampled_mean_distance
from .protocols import Broadcast

# ---------------------------------------------------------------------------- trust by source


class TrustedBroadcast(Broadcast):
    """``broadcast`` with trust by source: listeners weigh these speakers' messages by their trust in them.

    Every ``every`` steps each present member of the audience is reached with
    probability ``share`` by a speaker (as in ``broadcast``, with the same
    draws); a reached listener i within its bound moves
    ``x_i += trust_i mu_i (m - x_i)``. Each listener's trust is drawn when the
    world is built, uniform in ``trust * [1 - trust_spread, 1 + trust_spread]``
    (its own stream), and kept in the protocol's state (``trust``
    [B, listeners]). Trust 0 ignores the source, 1 weighs it like a peer, 2
    twice as much (trust * mu stays at most 1). Outcomes: those of
    ``broadcast`` plus ``reached_agents`` [B, N] (who was reached this step).
    """

    class Params(Broadcast.Params):
        trust: Annotated[float, Interval(ge=0, le=2)] = 1.0
        """Listeners' mean trust in these speakers (1: like a peer)."""
        trust_spread: Annotated[float, Interval(ge=0, le=1)] = 0.0
        """Relative spread of trust across listeners (uniform, per listener)."""

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        carry = super().start(world, rng)
        n_listen = carry["heard"].shape[1]
        p = self.params
        u = rng.uniform(f"trusted_broadcast/{p.speakers}/trust", (world.b, n_listen), torch.float64).to(world.device)
        carry["trust"] = (p.trust * (1 + p.trust_spread * (2 * u - 1))).clamp(0, 2)
        carry["reached_agents"] = torch.zeros((world.b, world.n), dtype=torch.bool, device=world.device)
        return carry

    def step(self, values, state: State, world: World, carry, rng: Streams, ask) -> ProtocolOutput:
        _, listeners = self._rows(world)
        plain = {k: carry[k] for k in ("reached", "accepted", "heard")}
        out = super().step(values, state, world, plain, rng, ask)
        new = out.values
        trust = carry["trust"]
        if not bool((trust == 1).all()):
            x = values[:, listeners]
            step = new[:, listeners] - x
            scaled = (x + trust.to(x.dtype)[..., None] * step).clamp(0, 1)
            new = new.clone()
            new[:, listeners] = scaled
        reached = torch.zeros((world.b, world.n), dtype=torch.bool, device=values.device)
        reached[:, listeners] = (out.carry["heard"] - carry["heard"]) > 0
        return ProtocolOutput(values=new, carry={**out.carry, "trust": trust, "reached_agents": reached},
                              events=out.events)


# ---------------------------------------------------------------------------- helpers


class Scopes(PluginParams):
    humans: list[str] | None = None
    """The human groups; None: every group of kind human."""
    ai: list[str] | None = None
    """The AI groups; None: every group of kind ai or llm."""


def _chosen(world: World, names: list[str] | None, kinds: tuple[str, ...], field: str):
    known = [g.name for g in world.groups]
    for name in names or ():
        if name not in known:
            raise ValueError(f"{field}: unknown group {name!r} (groups: {', '.join(known)})")
    return [g for g in world.groups if (g.name in names if names is not None else g.kind in kinds)]


def _humans(world: World, params) -> list:
    return _chosen(world, params.humans, ("human",), "humans")


def _ais(world: World, params) -> list:
    return _chosen(world, params.ai, ("ai", "llm"), "ai")


def _rows_mask(world: World, groups) -> torch.Tensor:
    mask = torch.zeros(world.n, dtype=torch.bool, device=world.device)
    for group in groups:
        mask[group.rows] = True
    return mask


def _mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over axis 1 of ``x`` [B, n, ...] where ``weight`` [B, n]; NaN where nobody counts."""
    w = weight.to(torch.float64)
    while w.dim() < x.dim():
        w = w[..., None]
    count = w.sum(1)
    return (x.double() * w).sum(1) / torch.where(count > 0, count, torch.nan)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double(), dim=-1)


def _twin_mask(world: World) -> torch.Tensor:
    """[B] bool: the worlds whose readings compare with a twin (the factual ones of a run with twins)."""
    if world.twin is None:
        return torch.zeros(world.b, dtype=torch.bool, device=world.device)
    return ~world.counterfactual


def _twins(state: State, world: World, rows: slice):
    """(values, twin's values, initial values, who counts: present in both) for ``rows`` of every world.

    Without twins every world is its own twin (every comparison then reads NaN through :func:`_twin_mask`).
    """
    twin = world.twin if world.twin is not None else torch.arange(world.b, device=world.device)
    x, active = state.values[:, rows], state.active[:, rows]
    return x, x[twin], world.initial[:, rows], active & active[twin]


def cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis, float64; NaN where either vector is zero (or NaN)."""
    u, v = u.double(), v.double()
    denominator = _norm(u) * _norm(v)
    return (u * v).sum(-1) / torch.where(denominator > 0, denominator, torch.nan)


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """[B] per scope -> [B, S, 1] float64."""
    return torch.stack([p.double() for p in parts], 1)[..., None]


# ---------------------------------------------------------------------------- diversity


class DiversityParams(PluginParams):
    bins: Annotated[int, Interval(ge=2, le=1000)] = 10
    """Bins per dimension for the entropy."""
    exact_max: Annotated[int, Interval(ge=2)] = 2000
    """Largest scope whose mean pairwise distance uses all pairs."""
    sample_pairs: Annotated[int, Interval(ge=1)] = 20000
    """Random pairs that estimate it for a larger scope."""


class Diversity:
    """How diverse values are, per scope (the groups, then ``all``), over time.

    - ``diversity_variance`` [B, S, K]: the population variance (divisor n) of
      each dimension over the scope's active agents;
    - ``diversity_distance`` [B, S, 1]: the mean distance ||x_i - x_j|| / sqrt(K)
      over pairs of distinct active agents (NaN with fewer than 2): exact up
      to ``exact_max`` agents, else the mean over ``sample_pairs`` random pairs;
    - ``diversity_entropy`` [B, S, 1]: the Shannon entropy of each dimension's
      values binned into ``bins`` equal bins of [0, 1], divided by log(bins)
      (1: spread evenly over the bins, 0: all in one bin), averaged over the
      dimensions (marginal entropies: a joint histogram would need bins^K cells).
    """

    Params = DiversityParams
    writes = ("diversity_variance", "diversity_distance", "diversity_entropy")

    def __init__(self, params: DiversityParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        names = scope_names(world)
        variance = scope_moments(state.values, state.active, world, order=2).moment(2)
        distance = per_scope(world, lambda name, rows: self._distance(state, rows, name, rng))
        entropy = per_scope(world, lambda name, rows: binned_entropy(
            state.values[:, rows], state.active[:, rows], self.params.bins))
        return [Reading("diversity_variance", variance.double(), names, world.space.dimensions),
                Reading("diversity_distance", _stack(distance), names),
                Reading("diversity_entropy", _stack(entropy), names)], carry

    def _distance(self, state: State, rows: slice, name: str, rng: Streams) -> torch.Tensor:
        x, active = state.values[:, rows], state.active[:, rows]
        if x.shape[1] <= self.params.exact_max:
            return exact_mean_distance(x, active)
        return sampled_mean_distance(x, active, self.params.sample_pairs, rng, f"diversity_distance/{name}/pairs")


def binned_entropy(x: torch.Tensor, active: torch.Tensor, bins: int) -> torch.Tensor:
    """Mean over dimensions of the normalised entropy of ``x`` [B, n, K] in ``bins`` bins: [B] (NaN if empty)."""
    b, n, k = x.shape
    index = (x.double() * bins).long().clamp(0, bins - 1).transpose(1, 2)  # [B, K, n]
    weight = active.to(torch.float64)[:, None, :].expand(b, k, n)
    counts = torch.zeros((b, k, bins), dtype=torch.float64, device=x.device).scatter_add_(2, index, weight)
    total = counts.sum(2, keepdim=True)
    p = counts / total.clamp(min=1)
    h = -(p * torch.where(p > 0, p.log(), 0.0)).sum(2) / math.log(bins)
    return torch.where(total[..., 0].sum(1) > 0, h.mean(1), torch.nan)


# ---------------------------------------------------------------------------- against the twin


class LockIn:
    """How much less the humans moved than in their counterfactual twin without AI, per human group.

    With M the mean over agents of ||x_i(t) - x_i(0)|| and s the mean
    displacement vector mean_i (x_i(t) - x_i(0)), in a factual world (f) and
    its twin (c):

    - ``lock_in`` [B, H, 1]: 1 - M_f / M_c, the share of total movement the AI
      prevented (0: as without AI; 1: frozen; negative: the AI made them move
      more). NaN where M_c = 0;
    - ``lock_in_drift`` [B, H, 1]: 1 - (s_f . s_c) / |s_c|^2, the same along the
      direction the humans drifted without AI (their exogenous drift and
      social dynamics). NaN where s_c = 0.

    NaN in counterfactual worlds and without twins (see the module docstring).
    """

    Params = Scopes
    writes = ("lock_in", "lock_in_drift")

    def __init__(self, params: Scopes):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        groups = _humans(world, self.params)
        valid = _twin_mask(world)
        total, along = [], []
        for group in groups:
            x, twin, start, both = _twins(state, world, group.rows)
            moved, moved_twin = _mean(_norm(x - start), both), _mean(_norm(twin - start), both)
            shift, shift_twin = _mean(x - start, both), _mean(twin - start, both)
            total.append(1 - moved / torch.where(moved_twin > 0, moved_twin, torch.nan))
            square = shift_twin.square().sum(-1)
            along.append(1 - (shift * shift_twin).sum(-1) / torch.where(square > 0, square, torch.nan))
        return [Reading("lock_in", _masked(total, valid, world), _names(groups)),
                Reading("lock_in_drift", _masked(along, valid, world), _names(groups))], carry


def _names(groups) -> tuple[str, ...]:
    """The scopes of a reading: the groups' names (``none``, one NaN scope, when there are no such groups)."""
    return tuple(g.name for g in groups) or ("none",)


def _masked(parts: list[torch.Tensor], valid: torch.Tensor, world: World) -> torch.Tensor:
    """[B] per scope -> [B, S, 1], NaN outside ``valid`` worlds (and one NaN scope if there are none)."""
    if not parts:
        return torch.full((world.b, 1, 1), torch.nan, dtype=torch.float64, device=world.device)
    stacked = _stack(parts)
    return torch.where(valid[:, None, None], stacked, torch.nan)


class GapParams(Scopes):
    distance: str = "l2"
    """How far an AI agent is from the humans' mean: l2 (Euclidean / sqrt(K)) or linf."""

    @model_validator(mode="after")
    def _known_distance(self):
        if self.distance not in ("l2", "linf"):
            raise ValueError(f"distance must be l2 or linf, got {self.distance!r}")
        return self


class AlignmentGap:
    """The alignment gap in both directions: AI to the humans, and humans to the AI.

    - ``ai_gap`` [B, A, 1] per AI group: the mean over its active agents of
      their distance to the mean of every active human (all human groups);
    - ``ai_share`` [B, H, 1] per human group: the share of the humans' value
      change attributable to AI, D / (D + C) with D = mean_i ||x_i - x'_i|| (the
      gap to the twin: what the AI changed) and C = mean_i ||x'_i - x_i(0)||
      (what they changed without AI); 0: as without AI, 1: every bit of their
      change came from the AI. NaN where D + C = 0;
    - ``ai_pull`` [B, H, 1] per human group: mean_i d(x'_i, a) - mean_i d(x_i, a),
      a the mean of every active AI agent of the factual world: how much
      closer to the AI the humans came than they would have without it.

    x'_i is agent i in the twin. ``ai_share`` and ``ai_pull`` are NaN in
    counterfactual worlds and without twins (see the module docstring).
    """

    Params = GapParams
    writes = ("ai_gap", "ai_share", "ai_pull")

    def __init__(self, params: GapParams):
        self.params = params

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = (a.double() - b.double())
        if self.params.distance == "linf":
            return diff.abs().amax(-1)
        return _norm(diff) / math.sqrt(diff.shape[-1])

    def observe(self, state: State, world: World, carry, rng: Streams):
        humans, ais = _humans(world, self.params), _ais(world, self.params)
        human_mask, ai_mask = _rows_mask(world, humans), _rows_mask(world, ais)
        centre = _mean(state.values, state.active & human_mask[None])  # [B, K]
        ai_centre = _mean(state.values, state.active & ai_mask[None])
        gaps = [_mean(self._distance(state.values[:, g.rows], centre[:, None]), state.active[:, g.rows])
                for g in ais]
        valid = _twin_mask(world)
        share, pull = [], []
        for group in humans:
            x, twin, start, both = _twins(state, world, group.rows)
            changed, without = _mean(_norm(x - twin), both), _mean(_norm(twin - start), both)
            whole = changed + without
            share.append(changed / torch.where(whole > 0, whole, torch.nan))
            pull.append(_mean(self._distance(twin, ai_centre[:, None]), both)
                        - _mean(self._distance(x, ai_centre[:, None]), both))
        return [Reading("ai_gap", _masked(gaps, torch.ones_like(valid), world), _names(ais)),
                Reading("ai_share", _masked(share, valid, world), _names(humans)),
                Reading("ai_pull", _masked(pull, valid, world), _names(humans))], carry


# ---------------------------------------------------------------------------- ProgressGym


class ProgressParams(Scopes, TrajectorySource):
    horizon: Annotated[float, Interval(ge=0)] = 10.0
    """How many steps ahead the predict score looks."""
    centre: Annotated[float, Interval(ge=0, le=1)] = 0.5
    """Value vectors are compared as offsets from this point of every dimension (0: the raw vectors)."""

    @model_validator(mode="after")
    def _one_reference(self):
        if (self.file is None) == (self.points is None):
            raise ValueError("give the reference trajectory as file or points (exactly one)")
        return self


class ProgressScores:
    """ProgressGym's follow, predict and coevolve scores against a reference trajectory r of values.

    At each observation, at world step t, with a(t) an AI group's mean values
    and h(t) a human group's, all as offsets from ``centre``:

    - ``follow_score`` [B, A, 1]: the mean over observations so far of
      cos(a(t), r(t)): the AI holds the values of the time;
    - ``predict_score`` [B, A, 1]: the mean of cos(a(t), r(t + horizon)): the AI
      holds the values the reference reaches ``horizon`` steps later;
    - ``coevolve_score`` [B, H, 1]: the mean of max over j of cos(h(t), r_j),
      r_j the reference at t and at each of its rows from t on: rewards humans
      who reach later, more progressed values rather than freezing.

    The reference is a trajectory file or inline points (``plugins.dynamics.drift``),
    times in world steps, linear between rows. An observation where a score is
    undefined (no active agent, a zero vector) is left out of its mean; NaN
    before any. The means live in the carry and restart with a reset world.
    """

    Params = ProgressParams
    writes = ("follow_score", "predict_score", "coevolve_score")

    def __init__(self, params: ProgressParams):
        self.params = params
        self._cache: dict[tuple, object] = {}

    def prepare(self, world: World) -> None:
        """Read the reference trajectory when the world is built."""
        self._reference(world)

    def _reference(self, world: World):
        key = (world.space.dimensions, world.context.get("base_dir"))
        if key not in self._cache:
            self._cache[key] = load(self.params, world, unit=True)
        return self._cache[key]

    def observe(self, state: State, world: World, carry, rng: Streams):
        reference, c = self._reference(world), self.params.centre
        humans, ais = _humans(world, self.params), _ais(world, self.params)
        t = state.world_step.to(torch.float64).to(world.device)
        now, ahead = reference.at(t) - c, reference.at(t + self.params.horizon) - c
        later = reference.values.to(world.device) - c  # [R, K]
        reachable = reference.times.to(world.device)[None] >= t[:, None]  # [B, R]
        scores = []
        for group in ais:
            a = _mean(state.values[:, group.rows], state.active[:, group.rows]) - c
            scores += [cosine(a, now), cosine(a, ahead)]
        for group in humans:
            h = _mean(state.values[:, group.rows], state.active[:, group.rows]) - c
            against = cosine(h[:, None], later[None])
            best = torch.where(reachable, against, -torch.inf).amax(1)
            scores.append(torch.maximum(best, cosine(h, now)))
        observed = torch.stack(scores, 1) if scores else torch.zeros((world.b, 0), dtype=torch.float64,
                                                                      device=world.device)
        carry = carry or {"sum": torch.zeros_like(observed), "count": torch.zeros_like(observed)}
        counted = torch.isfinite(observed)
        total = carry["sum"] + torch.where(counted, observed, 0.0)
        count = carry["count"] + counted.double()
        mean = total / torch.where(count > 0, count, torch.nan)
        a, h = len(ais), len(humans)
        follow, predict, coevolve = mean[:, 0:2 * a:2], mean[:, 1:2 * a:2], mean[:, 2 * a:2 * a + h]
        ones = torch.ones(world.b, dtype=torch.bool, device=world.device)
        readings = [
            Reading("follow_score", _masked(list(follow.unbind(1)), ones, world), _names(ais)),
            Reading("predict_score", _masked(list(predict.unbind(1)), ones, world), _names(ais)),
            Reading("coevolve_score", _masked(list(coevolve.unbind(1)), ones, world), _names(humans)),
        ]
        return readings, {"sum": total, "count": count}

    def reset(self, carry, worlds: torch.Tensor):
        """A restarted world's means start again."""
        keep = ~worlds.to(carry["sum"].device)[:, None]
        return {"sum": carry["sum"] * keep, "count": carry["count"] * keep}
