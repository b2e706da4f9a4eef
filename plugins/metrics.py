"""Built-in metrics: observers of the state, per world and per scope.

Every reading is shaped ``[B, S, D]``: B worlds; S scopes, the groups in
scenario order then ``"all"`` (the whole population); D the value dimensions,
or one unnamed column for a metric that is a single number per scope. Only
active agents count (``state.active``): an absent agent is in no scope. A
statistic that is undefined for a scope in a world (no active agent, too few
agents, zero variance) is NaN there.

Readings are float64 tensors on the values' device, computed for all worlds
at once (no loop over worlds or agents); the run log moves them to the CPU.
Distances between value vectors are Euclidean divided by ``sqrt(K)``, so they
lie in [0, 1] whatever the value space (except ``drift``, which is the plain
Euclidean norm). Sampling uses only the random streams passed to ``observe``,
under a purpose named after the metric and the scope.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Annotated

import torch
from pydantic import Field

from sim.contracts import Interval, NoParams, PluginParams, Reading, State, Streams, World

from ._pairs import component_sizes, pair_distance_sums
from ._reduce import (
    ALL, as_reading, per_scope, scope_counts, scope_means, scope_moments, scope_names, scope_rows,
)


def _reading(metric: str, value: torch.Tensor, world: World, per_dimension: bool) -> Reading:
    dimensions = world.space.dimensions if per_dimension else (None,)
    return Reading(metric, as_reading(value), scope_names(world), dimensions)


def _stack_scopes(per_scope_values: list[torch.Tensor]) -> torch.Tensor:
    """[B] per scope -> [B, S, 1] float64."""
    return torch.stack([as_reading(v) for v in per_scope_values], 1)[..., None]


# --------------------------------------------------------------------------- means and drift


class MeanValues:
    """``mean_values`` [B, S, K]: the mean value of each dimension over the scope's active agents."""

    Params = NoParams
    # The names of the readings it writes (``Reading.metric``), each described by its ``name`` [shape]: entry
    # in the docstring; the run log's metric catalogue (manifest, metrics.parquet metadata) is built from them.
    writes = ("mean_values",)

    def __init__(self, params: NoParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        mean = scope_means(state.values, state.active, world)
        return [_reading("mean_values", mean, world, per_dimension=True)], carry


class Drift:
    """How far agents moved from their own initial values (``world.initial``), per scope.

    - ``drift`` [B, S, 1]: mean over active agents of ``||x_i(t) - x_i(0)||_2``
      (plain Euclidean norm over the K dimensions, not divided by sqrt(K));
    - ``drift_dimension`` [B, S, K]: mean over active agents of the signed
      change ``x_ik(t) - x_ik(0)``;
    - ``mean_shift`` [B, S, 1]: ``||mean_i x_i(t) - mean_i x_i(0)||_2``, how far
      the scope's mean vector moved (the norm of ``drift_dimension``). It is at
      most ``drift``; far below it when agents moved in opposite directions.
    """

    Params = NoParams
    writes = ("drift", "drift_dimension", "mean_shift")

    def __init__(self, params: NoParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        change = state.values - world.initial
        distance = torch.linalg.vector_norm(change, dim=2, keepdim=True)
        drift = scope_means(distance, state.active, world)
        per_dimension = scope_means(change, state.active, world)
        shift = torch.linalg.vector_norm(per_dimension, dim=2, keepdim=True)
        readings = [
            _reading("drift", drift, world, per_dimension=False),
            _reading("drift_dimension", per_dimension, world, per_dimension=True),
            _reading("mean_shift", shift, world, per_dimension=False),
        ]
        return readings, carry


# --------------------------------------------------------------------------- polarization

def exact_mean_distance(x: torch.Tensor, active: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
    """Mean Euclidean distance over ordered pairs of distinct active agents, / sqrt(K): [B] (NaN if < 2)."""
    b, n, k = x.shape
    rows = torch.arange(n, device=x.device).expand(b, n)
    return _mean_from_sums(pair_distance_sums(x, rows, active, [0, n], kernel)[:, 0], active.sum(1), k)


def _mean_from_sums(sums: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over unordered pairs -> the mean over ordered pairs of distinct agents, / sqrt(K); NaN if m < 2."""
    mean = 2 * sums / (m * (m - 1)).clamp(min=1).double() / math.sqrt(k)
    return torch.where(m >= 2, mean, torch.nan)


def rows_of_ranks(active: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Row of the r-th active agent of each world: ranks [B, P] -> rows [B, P] (ranks past the end: some row)."""
    in_order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices  # the active rows first, in order
    return in_order.gather(1, ranks.clamp(max=active.shape[1] - 1))


def sampled_mean_distance(x: torch.Tensor, active: torch.Tensor, pairs: int, rng: Streams,
                          purpose: str) -> torch.Tensor:
    """Estimate of :func:`exact_mean_distance` from ``pairs`` random pairs per world: [B].

    Each pair is two distinct active agents drawn uniformly (pairs are drawn
    independently, with replacement): rank i uniform in [0, m), rank j uniform
    in [0, m - 1), then j += (j >= i).
    """
    b, n, k = x.shape
    m = active.sum(1)
    u = rng.uniform(purpose, (b, pairs, 2), torch.float64).to(x.device)
    first = (u[..., 0] * m[:, None]).long()
    second = (u[..., 1] * (m[:, None] - 1).clamp(min=0)).long()
    second = second + (second >= first)
    rows = rows_of_ranks(active, torch.cat([first, second], 1))
    first, second = rows[:, :pairs], rows[:, pairs:]
    pick = lambda rows: x.gather(1, rows[..., None].expand(-1, -1, k)).double()  # noqa: E731
    distance = torch.linalg.vector_norm(pick(first) - pick(second), dim=2).mean(1) / math.sqrt(k)
    return torch.where(m >= 2, distance, torch.nan)


def bimodality_coefficient(
    n: torch.Tensor, m2: torch.Tensor, m3: torch.Tensor, m4: torch.Tensor,
) -> torch.Tensor:
    """Sarle's bimodality coefficient with the finite-sample correction.

    From the population central moments m2, m3, m4 (divisor n):
    g1 = m3 / m2^1.5, g2 = m4 / m2^2 - 3; the bias-corrected sample skewness
    G1 = g1 sqrt(n (n-1)) / (n-2) and excess kurtosis
    G2 = (n-1) / ((n-2)(n-3)) ((n+1) g2 + 6) (the forms of SAS, Excel and
    scipy's ``bias=False``); BC = (G1^2 + 1) / (G2 + 3 (n-1)^2 / ((n-2)(n-3))).
    BC = 5/9 for a uniform distribution, 1/3 for a normal; above 5/9 suggests
    bimodality. NaN where n < 4 or the variance is zero.
    """
    valid = (n >= 4) & (m2 > 0)
    n = torch.where(valid, n, 4.0)
    m2 = torch.where(valid, m2, 1.0)
    m3, m4 = torch.where(valid, m3, 0.0), torch.where(valid, m4, 1.0)
    g1 = m3 / m2**1.5
    g2 = m4 / m2**2 - 3
    skew = g1 * torch.sqrt(n * (n - 1)) / (n - 2)
    kurtosis = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    coefficient = (skew**2 + 1) / (kurtosis + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    return torch.where(valid, coefficient, torch.nan)


class PolarizationParams(PluginParams):
    exact_max: Annotated[int, Interval(ge=2)] = Field(
        2000, description="largest scope whose pairwise distance uses all pairs")
    sample_pairs: Annotated[int, Interval(ge=1)] = Field(
        20000, description="random pairs that estimate it for a larger scope")


class Polarization:
    """How spread out values are, per scope.

    - ``variance`` [B, S, 1]: mean over the K dimensions of the population
      variance (divisor n) of each dimension over the scope's active agents;
    - ``pairwise_distance`` [B, S, 1]: mean distance ``||x_i - x_j||_2 / sqrt(K)``
      over pairs of distinct active agents of the scope, in [0, 1] (NaN with
      fewer than 2). Exact (all pairs) for a scope of at most ``exact_max``
      agents; otherwise the mean over ``sample_pairs`` uniformly drawn pairs
      (an unbiased estimate, standard error about std / sqrt(sample_pairs));
    - ``bimodality`` [B, S, K]: Sarle's finite-sample bimodality coefficient of
      each dimension (see :func:`bimodality_coefficient`); NaN where the scope
      has fewer than 4 active agents or no variance in that dimension.
    """

    Params = PolarizationParams
    writes = ("variance", "pairwise_distance", "bimodality")

    def __init__(self, params: PolarizationParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        moments = scope_moments(state.values, state.active, world, order=4)
        variance = moments.moment(2).mean(2, keepdim=True)
        bimodality = bimodality_coefficient(moments.count, *(moments.moment(p) for p in (2, 3, 4)))
        pairwise = self._pairwise(state, world, rng)
        readings = [
            _reading("variance", variance, world, per_dimension=False),
            _reading("pairwise_distance", pairwise, world, per_dimension=False),
            _reading("bimodality", bimodality, world, per_dimension=True),
        ]
        return readings, carry

    def _pairwise(self, state: State, world: World, rng: Streams) -> torch.Tensor:
        """[B, S, 1]: the scopes of at most exact_max agents in one call of the exact kernel, the others sampled."""
        b, device = state.values.shape[0], state.values.device
        exact = [rows for rows in dict.fromkeys((r.start, r.stop) for r in scope_rows(world))
                 if rows[1] - rows[0] <= self.params.exact_max]
        offsets = [0, *accumulate(hi - lo for lo, hi in exact)]
        rows = torch.cat([torch.arange(lo, hi, device=device) for lo, hi in exact] or
                         [torch.zeros(0, dtype=torch.int64, device=device)]).expand(b, -1)
        sums = pair_distance_sums(state.values, rows, state.active[:, rows[0]], offsets)
        by_rows = {key: _mean_from_sums(sums[:, i], state.active[:, key[0]:key[1]].sum(1), world.k)
                   for i, key in enumerate(exact)}
        values = []
        for name, scope in zip(scope_names(world), scope_rows(world)):
            key = (scope.start, scope.stop)
            if key not in by_rows:
                by_rows[key] = sampled_mean_distance(state.values[:, scope], state.active[:, scope],
                                                     self.params.sample_pairs, rng, f"pairwise_distance/{name}/pairs")
            values.append(by_rows[key])
        return _stack_scopes(values)


# --------------------------------------------------------------------------- clusters


def count_clusters(sizes: torch.Tensor, members: torch.Tensor, scope_size: torch.Tensor, min_size: float):
    """(clusters, largest share) [...] from cluster sizes [..., C] (0 = unused slot).

    ``members`` [...] agents the sizes were counted over (the sample),
    ``scope_size`` [...] active agents of the scope. A cluster counts when its
    share of ``members`` is >= min_size (min_size < 1), or when its estimated
    size in the scope, size * scope_size / members, is >= min_size (min_size >= 1).
    Both are NaN for a scope without active agents.
    """
    share = sizes.double() / members.double().clamp(min=1)[..., None]
    estimate = share * scope_size.double()[..., None]
    large = share >= min_size if min_size < 1 else estimate >= min_size
    clusters = (large & (sizes > 0)).sum(-1).double()
    empty = scope_size == 0
    return clusters.masked_fill(empty, torch.nan), share.amax(-1).masked_fill(empty, torch.nan)


def gap_cluster_sizes(x: torch.Tensor, active: torch.Tensor, threshold: float) -> torch.Tensor:
    """Exact single-linkage cluster sizes of one dimension ``x`` [B, n]: [B, n] (slot c: cluster c, else 0).

    Sort each world's active values (float64: the gaps are exact); a gap > threshold starts a new cluster.
    """
    b, n = x.shape
    ordered = torch.where(active, x.double(), torch.inf).sort(1).values  # inactive agents sort last
    inside = torch.arange(n, device=x.device) < active.sum(1, keepdim=True)
    starts = torch.ones_like(inside)
    starts[:, 1:] = torch.diff(ordered, dim=1) > threshold
    cluster = torch.cumsum(starts, 1) - 1
    return torch.zeros(b, n, dtype=torch.int64, device=x.device).scatter_add_(1, cluster, inside.long())


def sample_rows(active: torch.Tensor, sample: int, rng: Streams, purpose: str):
    """Rows [B, s] of a uniform sample without replacement of the active agents, and their validity [B, s]."""
    b, n = active.shape
    if n <= sample:
        return torch.arange(n, device=active.device).expand(b, n), active
    keys = rng.uniform(purpose, (b, n), torch.float64).to(active.device)
    keys = keys.masked_fill(~active, 2.0)  # inactive agents only fill a short scope, marked not valid
    rows = keys.topk(sample, dim=1, largest=False).indices
    return rows, active.gather(1, rows)


class ClustersParams(PluginParams):
    threshold: Annotated[float, Interval(gt=0, le=1)] = Field(0.05, description="link distance, Euclidean / sqrt(K)")
    min_size: Annotated[float, Interval(gt=0)] = Field(
        0.01, description="smallest counted cluster: a share if < 1, else agents")
    sample: Annotated[int, Interval(ge=2)] = Field(2000, description="agents per scope clustered when K > 1")


class Clusters:
    """Opinion clusters per scope, by single linkage.

    Two active agents are in one cluster when a chain of agents links them,
    each step at distance ``||x_i - x_j||_2 / sqrt(K) <= threshold`` (compared
    as ``sum_k (x_ik - x_jk)^2 <= K threshold^2`` in float64, the same on
    every device).

    - ``clusters`` [B, S, 1]: the number of clusters holding at least
      ``min_size`` agents (a share of the scope's active agents when < 1,
      a number of agents when >= 1);
    - ``largest_cluster`` [B, S, 1]: the share of the scope's active agents
      in its largest cluster.

    Both are NaN for a scope without active agents. K = 1: exact for any N
    (sort, split at gaps > threshold). K > 1: exact on the scope when it has
    at most ``sample`` agents; otherwise on a uniform sample of ``sample``
    active agents drawn without replacement from the streams (purpose
    ``clusters/<scope>/sample``, a new sample at each observation). Shares are
    then shares of the sample, and a count ``min_size`` is compared with a
    cluster's sampled size scaled up to the scope. Sampling can split a
    sparse chain that the whole population would join, and misses clusters
    smaller than about 1/sample of the scope. The components of all worlds
    and scopes are found in one call (``plugins._pairs``).
    """

    Params = ClustersParams
    writes = ("clusters", "largest_cluster")

    def __init__(self, params: ClustersParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        clusters, largest = self.cluster_counts(state, world, rng)
        readings = [
            _reading("clusters", clusters[..., None], world, per_dimension=False),
            _reading("largest_cluster", largest[..., None], world, per_dimension=False),
        ]
        return readings, carry

    def cluster_counts(self, state: State, world: World, rng: Streams):
        """(clusters, largest share), each [B, S]."""
        min_size, threshold = self.params.min_size, self.params.threshold
        counts = scope_counts(state.active, world)
        if world.k == 1:
            sizes = per_scope(world, lambda name, rows: gap_cluster_sizes(
                state.values[:, rows, 0], state.active[:, rows], threshold))
            width = max(1, max(s.shape[1] for s in sizes))
            sizes = torch.stack([torch.nn.functional.pad(s, (0, width - s.shape[1])) for s in sizes], 1)
            return count_clusters(sizes, counts, counts, min_size)
        samples = per_scope(world, lambda name, rows: self._sample(state, name, rows, rng))
        unique = list({id(s): s for s in samples}.values())  # scopes with the same rows share one sample
        offsets = [0]
        for picked, _ in unique:
            offsets.append(offsets[-1] + picked.shape[1])
        rows = torch.cat([picked for picked, _ in unique], 1)
        valid = torch.cat([v for _, v in unique], 1)
        sizes = component_sizes(state.values, rows, valid, offsets, threshold**2 * world.k)
        width = max(1, max(b - a for a, b in zip(offsets[:-1], offsets[1:])))
        segment = {id(s): i for i, s in enumerate(unique)}
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        per_scope_sizes, members = [], []
        for s in samples:
            lo, hi = offsets[segment[id(s)]], offsets[segment[id(s)] + 1]
            per_scope_sizes.append(pad(sizes[:, lo:hi]))
            members.append(valid[:, lo:hi].sum(1))
        return count_clusters(torch.stack(per_scope_sizes, 1), torch.stack(members, 1), counts, min_size)

    def _sample(self, state: State, scope: str, rows: slice, rng: Streams):
        """(rows [B, s] of the values, valid [B, s]) of one scope's sample."""
        picked, valid = sample_rows(state.active[:, rows], self.params.sample, rng, f"clusters/{scope}/sample")
        return picked + rows.start, valid


# --------------------------------------------------------------------------- consensus


class ConsensusTimeParams(PluginParams):
    tolerance: Annotated[float, Interval(ge=0, le=1)] = Field(
        0.01, description="largest spread that counts as consensus")


class ConsensusTime:
    """When each world first reached consensus (scope ``"all"`` only).

    The spread of a world is the largest, over dimensions, of max - min of the
    values of its active agents. Consensus is a spread <= ``tolerance``.
    ``carry`` is ``{"first_step": int64 [B] on the values' device}``: the first
    observed step in consensus, -1 until then; it is kept even if the world
    later leaves consensus.

    - ``consensus_time`` [B, 1, 1]: that first step (as a float), NaN while not reached;
    - ``consensus`` [B, 1, 1]: 1.0 if the world is in consensus at this step, else 0.0;
    - ``spread`` [B, 1, 1]: the spread at this step.

    A world without active agents reads NaN for ``spread`` and ``consensus``.
    """

    Params = ConsensusTimeParams
    writes = ("consensus_time", "consensus", "spread")

    def __init__(self, params: ConsensusTimeParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        spread = self.spread(state.values, state.active).double()
        first = self._first_step(carry, spread)
        now = spread <= self.params.tolerance
        first = torch.where((first < 0) & now, state.world_step.to(first), first)  # each world's own step
        time = torch.where(first >= 0, first.double(), torch.nan)
        column = lambda v: v.double().view(-1, 1, 1)  # noqa: E731
        readings = [
            Reading("consensus_time", column(time), (ALL,)),
            Reading("consensus", column(torch.where(spread.isnan(), torch.nan, now.double())), (ALL,)),
            Reading("spread", column(spread), (ALL,)),
        ]
        return readings, {"first_step": first}

    def reset(self, carry, worlds: torch.Tensor):
        """Restarted worlds have not reached consensus yet."""
        first = carry["first_step"].clone()
        first[worlds.to(first.device)] = -1
        return {"first_step": first}

    @staticmethod
    def spread(values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """max over dimensions of (max - min over active agents): [B], NaN without active agents."""
        # Inactive agents take the values of an active one, then one pass finds both extremes.
        stand_in = values.gather(1, active.int().argmax(1)[:, None, None].expand(-1, 1, values.shape[2]))
        low, high = torch.aminmax(torch.where(active[..., None], values, stand_in), dim=1)
        return torch.where(active.any(1), (high - low).amax(1), torch.nan)

    @staticmethod
    def _first_step(carry, like: torch.Tensor) -> torch.Tensor:
        if carry is None:
            return torch.full(like.shape, -1, dtype=torch.int64, device=like.device)
        return carry["first_step"].to(device=like.device, dtype=torch.int64).clone()
