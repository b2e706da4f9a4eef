"""Built-in metrics: observers of the state, per world and per scope.

Every reading is shaped ``[B, S, D]``: B worlds; S scopes, the groups in
scenario order then ``"all"`` (the whole population); D the value dimensions,
or one unnamed column for a metric that is a single number per scope. Only
active agents count. Readings are CPU float64 tensors; a statistic that is
undefined for a scope (no active agent, too few agents, zero variance) is NaN.

Distances between value vectors are Euclidean divided by ``sqrt(K)``, so they
lie in [0, 1] whatever the value space (except ``drift``, which is the plain
Euclidean norm). Sampling uses only the random streams passed to ``observe``.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from sim.contracts import Interval, NoParams, PluginParams, Reading, State, Streams, World

from ._reduce import ALL, active_mask, per_scope, scope_means, scope_moments, scope_names, to_reading_tensor


def _reading(metric: str, value: torch.Tensor, world: World, per_dimension: bool) -> Reading:
    dimensions = world.space.dimensions if per_dimension else (None,)
    return Reading(metric, to_reading_tensor(value), scope_names(world), dimensions)


def _stack_scopes(per_scope_values: list[torch.Tensor]) -> torch.Tensor:
    """[B] per scope -> [B, S, 1] float64 on the CPU."""
    return torch.stack([to_reading_tensor(v) for v in per_scope_values], 1)[..., None]


# --------------------------------------------------------------------------- means and drift


class MeanValues:
    """``mean_values`` [B, S, K]: the mean value of each dimension over the scope's active agents."""

    Params = NoParams

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


def _rows_of_ranks(active: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Row of the r-th active agent of each world (ranks [B, P] -> rows [B, P])."""
    rows = torch.zeros_like(ranks)
    for world in range(active.shape[0]):
        active_rows = torch.nonzero(active[world]).flatten()
        if len(active_rows):
            rows[world] = active_rows[ranks[world].clamp(max=len(active_rows) - 1)]
    return rows


def exact_mean_distance(x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """Mean Euclidean distance over ordered pairs of distinct active agents, / sqrt(K): [B].

    All pairs, in row blocks so memory stays near 2^22 distances at a time.
    """
    x = x.double()
    b, n, k = x.shape
    weight = torch.ones(b, n, dtype=x.dtype, device=x.device) if active is None else active.double()
    total = torch.zeros(b, dtype=x.dtype, device=x.device)
    block = max(1, 2**22 // max(1, b * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        # Not the matrix-product form: it is inexact and leaves non-zero diagonals.
        d = torch.cdist(x[:, start:stop], x, compute_mode="donot_use_mm_for_euclid_dist")
        total += torch.einsum("bij,bi,bj->b", d, weight[:, start:stop], weight)
    m = weight.sum(1)
    mean = total / (m * (m - 1)).clamp(min=1) / math.sqrt(k)
    return torch.where(m >= 2, mean, torch.nan)


def sampled_mean_distance(
    x: torch.Tensor, active: torch.Tensor | None, pairs: int, rng: Streams,
) -> torch.Tensor:
    """Estimate of :func:`exact_mean_distance` from ``pairs`` random pairs per world: [B].

    Each pair is two distinct active agents drawn uniformly (pairs are drawn
    independently, with replacement): rank i uniform in [0, m), rank j uniform
    in [0, m - 1), then j += (j >= i).
    """
    b, n, k = x.shape
    m = torch.full((b,), n) if active is None else active.sum(1).cpu()
    u = rng.uniform("metrics/mean_distance", (b, pairs, 2), torch.float64).cpu()
    first = (u[..., 0] * m[:, None]).long().clamp(min=0, max=n - 1)
    second = (u[..., 1] * (m[:, None] - 1)).long().clamp(min=0, max=n - 1)
    second = second + (second >= first)
    first, second = first.to(x.device), second.to(x.device)
    if active is not None:
        first, second = _rows_of_ranks(active, first), _rows_of_ranks(active, second)
    pick = lambda rows: x.gather(1, rows[..., None].expand(-1, -1, k)).double()  # noqa: E731
    distance = torch.linalg.vector_norm(pick(first) - pick(second), dim=2).mean(1) / math.sqrt(k)
    return torch.where(m.to(x.device) >= 2, distance, torch.nan)


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
      over pairs of distinct active agents of the scope, in [0, 1]. Exact
      (all pairs) for a scope of at most ``exact_max`` agents; otherwise the
      mean over ``sample_pairs`` uniformly drawn pairs (an unbiased estimate,
      standard error about std / sqrt(sample_pairs));
    - ``bimodality`` [B, S, K]: Sarle's finite-sample bimodality coefficient of
      each dimension (see :func:`bimodality_coefficient`); NaN where the scope
      has fewer than 4 active agents or no variance in that dimension.
    """

    Params = PolarizationParams

    def __init__(self, params: PolarizationParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        moments = scope_moments(state.values, state.active, world, order=4)
        variance = moments.moment(2).mean(2, keepdim=True)
        bimodality = bimodality_coefficient(moments.count, *(moments.moment(p) for p in (2, 3, 4)))
        pairwise = _stack_scopes(per_scope(world, lambda rows: self._pairwise(state, rows, rng)))
        readings = [
            _reading("variance", variance, world, per_dimension=False),
            _reading("pairwise_distance", pairwise, world, per_dimension=False),
            _reading("bimodality", bimodality, world, per_dimension=True),
        ]
        return readings, carry

    def _pairwise(self, state: State, rows: slice, rng: Streams) -> torch.Tensor:
        x, mask = state.values[:, rows], active_mask(state.active[:, rows])
        if x.shape[1] <= self.params.exact_max:
            return exact_mean_distance(x, mask)
        return sampled_mean_distance(x, mask, self.params.sample_pairs, rng)


# --------------------------------------------------------------------------- clusters


def _count_clusters(sizes: torch.Tensor, members: torch.Tensor, scope_size: torch.Tensor, min_size: float):
    """(clusters, largest share) [B] from cluster sizes [B, C] (0 = unused label).

    ``members`` [B] agents the sizes were counted over (the sample),
    ``scope_size`` [B] active agents of the scope. A cluster counts when its
    share of ``members`` is >= min_size (min_size < 1), or when its estimated
    size in the scope, size * scope_size / members, is >= min_size (min_size >= 1).
    """
    members = members.double().clamp(min=1)
    share = sizes.double() / members[:, None]
    estimate = share * scope_size.double()[:, None]
    large = share >= min_size if min_size < 1 else estimate >= min_size
    clusters = (large & (sizes > 0)).sum(1).double()
    largest = torch.where(members > 0, share.amax(1), torch.nan)
    return clusters, torch.where(scope_size > 0, largest, torch.nan)


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    """Each world's row of ``x`` [B, n] sorted, as numpy (numpy's SIMD sort is far faster on a CPU)."""
    if x.device.type == "cpu":
        return np.sort(x.numpy(), axis=1)
    return x.sort(dim=1).values.cpu().numpy()


def _pad(rows: list[np.ndarray]) -> torch.Tensor:
    """Ragged integer rows -> [B, max length] int64, padded with 0."""
    padded = torch.zeros(len(rows), max(1, max(len(r) for r in rows)), dtype=torch.int64)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.from_numpy(row)
    return padded


def clusters_1d(x: torch.Tensor, active: torch.Tensor | None, threshold: float, min_size: float):
    """Exact single-linkage clusters of one dimension, for all agents: (clusters, largest) [B].

    Sort each world's active values; a gap > threshold between neighbours
    starts a new cluster.
    """
    b, n = x.shape
    if active is not None:
        x = torch.where(active, x, torch.inf)  # inactive agents sort last
    count = torch.full((b,), n) if active is None else active.sum(1).cpu()
    ordered = _sorted_rows(x)
    sizes = []
    for world, m in enumerate(count.tolist()):
        line = ordered[world, :m].astype(np.float64)  # float64: the gaps are exact
        starts = np.flatnonzero(np.diff(line) > threshold) + 1
        sizes.append(np.diff(np.concatenate([[0], starts, [m]])) if m else np.zeros(0, dtype=np.int64))
    return _count_clusters(_pad(sizes), count, count, min_size)


def _sample_rows(b: int, n: int, active: torch.Tensor | None, sample: int, rng: Streams):
    """Rows [B, s] of a uniform sample without replacement of the active agents, and validity."""
    keys = rng.uniform("metrics/sample_rows", (b, n)).cpu()
    if active is not None:
        keys = keys.masked_fill(~active.cpu(), 2.0)  # inactive agents only fill a short scope
    rows = keys.topk(sample, dim=1, largest=False).indices
    valid = torch.ones_like(rows, dtype=torch.bool) if active is None else active.cpu().gather(1, rows)
    return rows, valid


def _components(points: torch.Tensor, valid: torch.Tensor, radius: float) -> np.ndarray:
    """Connected-component label of each point [B, s] under links of length <= radius.

    Min-label propagation with pointer jumping on the dense link matrix: each
    round is one pass over s x s booleans, and tight clusters (the common case
    late in a run, when an edge list would hold nearly s^2 links) settle in a
    few rounds.
    """
    b, s, _ = points.shape
    out = []
    for world in range(b):  # one s x s distance matrix at a time
        d = torch.cdist(points[world], points[world], compute_mode="donot_use_mm_for_euclid_dist")
        ok = valid[world]
        link = (d <= radius) & ok[:, None] & ok[None, :]
        link.fill_diagonal_(True)
        labels = torch.arange(s, device=points.device)
        big = torch.full_like(labels, s)
        while True:
            new = torch.where(link, labels[None, :], big[None, :]).amin(dim=1)
            new = new[new]  # pointer jumping: follow the chain of smaller labels
            if torch.equal(new, labels):
                break
            labels = new
        out.append(labels.cpu().numpy())
    return np.stack(out)


def clusters_sampled(
    x: torch.Tensor, active: torch.Tensor | None, params: ClustersParams, rng: Streams,
):
    """Single-linkage clusters on at most ``params.sample`` agents per world: (clusters, largest) [B]."""
    b, n, k = x.shape
    if n <= params.sample:
        rows = torch.arange(n).expand(b, n)
        valid = torch.ones(b, n, dtype=torch.bool) if active is None else active.cpu()
    else:
        rows, valid = _sample_rows(b, n, active, params.sample, rng)
    points = x.gather(1, rows.to(x.device)[..., None].expand(-1, -1, k)).double()
    labels = _components(points, valid.to(x.device), params.threshold * math.sqrt(k))
    sizes = _pad([np.unique(labels[w][valid[w].numpy()], return_counts=True)[1] for w in range(b)])
    scope_size = torch.full((b,), n) if active is None else active.sum(1).cpu()
    return _count_clusters(sizes, valid.sum(1), scope_size, params.min_size)


class ClustersParams(PluginParams):
    threshold: Annotated[float, Interval(gt=0, le=1)] = Field(
        0.05, description="link distance, Euclidean / sqrt(K)")
    min_size: Annotated[float, Interval(gt=0)] = Field(
        0.01, description="smallest counted cluster: a share if < 1, else agents")
    sample: Annotated[int, Interval(ge=2)] = Field(
        2000, description="agents per scope clustered when K > 1")


class Clusters:
    """Opinion clusters per scope, by single linkage.

    Two active agents are in one cluster when a chain of agents links them,
    each step at distance ``||x_i - x_j||_2 / sqrt(K) <= threshold``.

    - ``clusters`` [B, S, 1]: the number of clusters holding at least
      ``min_size`` agents (a share of the scope's active agents when < 1,
      a number of agents when >= 1);
    - ``largest_cluster`` [B, S, 1]: the share of the scope's active agents
      in its largest cluster.

    K = 1: exact for any N (sort, split at gaps > threshold). K > 1: exact on
    the scope when it has at most ``sample`` agents; otherwise on a uniform
    sample of ``sample`` active agents drawn without replacement with the
    metrics' rng (a new sample at each observation). Shares are then
    shares of the sample, and a count ``min_size`` is compared with a
    cluster's sampled size scaled up to the scope. Sampling can split a
    sparse chain that the whole population would join, and misses clusters
    smaller than about 1/sample of the scope.
    """

    Params = ClustersParams

    def __init__(self, params: ClustersParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        results = per_scope(world, lambda rows: self._scope(state, rows, rng))
        readings = [
            _reading("clusters", _stack_scopes([r[0] for r in results]), world, per_dimension=False),
            _reading("largest_cluster", _stack_scopes([r[1] for r in results]), world, per_dimension=False),
        ]
        return readings, carry

    def _scope(self, state: State, rows: slice, rng: Streams):
        x, mask = state.values[:, rows], active_mask(state.active[:, rows])
        if x.shape[2] == 1:
            return clusters_1d(x[..., 0], mask, self.params.threshold, self.params.min_size)
        return clusters_sampled(x, mask, self.params, rng)


# --------------------------------------------------------------------------- consensus


class ConsensusTimeParams(PluginParams):
    tolerance: Annotated[float, Interval(ge=0, le=1)] = Field(
        0.01, description="largest spread that counts as consensus")


class ConsensusTime:
    """When each world first reached consensus (scope ``"all"`` only).

    The spread of a world is the largest, over dimensions, of max - min of the
    values of its active agents (NaN without active agents). Consensus is a
    spread <= ``tolerance``. ``carry`` is ``{"first_step": int64 [B] on the
    CPU}``: the first observed step in consensus, -1 until then; it is kept
    even if the world later leaves consensus.

    - ``consensus_time`` [B, 1, 1]: that first step (as a float), NaN while not reached;
    - ``consensus`` [B, 1, 1]: 1.0 if the world is in consensus at this step, else 0.0;
    - ``spread`` [B, 1, 1]: the spread at this step.
    """

    Params = ConsensusTimeParams

    def __init__(self, params: ConsensusTimeParams):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        spread = self.spread(state.values, active_mask(state.active)).cpu().double()
        first = self._first_step(carry, spread.shape[0])
        now = spread <= self.params.tolerance
        first = torch.where((first < 0) & now, torch.full_like(first, state.step), first)
        time = torch.where(first >= 0, first.double(), torch.nan)
        column = lambda v: v.double().view(-1, 1, 1)  # noqa: E731
        readings = [
            Reading("consensus_time", column(time), (ALL,)),
            Reading("consensus", column(now), (ALL,)),
            Reading("spread", column(spread), (ALL,)),
        ]
        return readings, {"first_step": first}

    @staticmethod
    def spread(values: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        """max over dimensions of (max - min over active agents): [B]."""
        if active is not None:  # inactive agents take the values of an active one
            stand_in = values.gather(1, active.int().argmax(1)[:, None, None].expand(-1, 1, values.shape[2]))
            values = torch.where(active[..., None], values, stand_in)
        low, high = torch.aminmax(values, dim=1)
        spread = (high - low).amax(1)
        return spread if active is None else torch.where(active.any(1), spread, torch.nan)

    @staticmethod
    def _first_step(carry, b: int) -> torch.Tensor:
        if carry is None:
            return torch.full((b,), -1, dtype=torch.int64)
        return carry["first_step"].to(device="cpu", dtype=torch.int64).clone()
