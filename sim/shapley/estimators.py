"""Shapley (and Banzhaf) estimators for any coalition game (:mod:`sim.shapley.games`).

``estimate(game, method)`` runs one of

- ``exact``: every one of the 2^n coalitions (``auto`` picks it up to 14 players);
- ``permutation``: random permutations of the players, each with its reverse (antithetic pairs);
  a permutation's marginal contributions add up to v(N) - v(empty), so the values are efficient;
- ``tmc``: truncated Monte Carlo (Data Shapley): permutations scanned in blocks of prefixes; once a
  prefix's worth is within ``tolerance`` x |v(N) - v(empty)| of v(N), the remaining marginal
  contributions are taken as zero without evaluating them (the efficiency residual shows what that cost);
- ``kernel``: paired KernelSHAP (Covert and Lee 2021): coalitions drawn from the Shapley kernel (size s
  with probability proportional to 1/(s (n - s)), then uniformly), each with its complement, and the
  least squares problem constrained to sum(phi) = v(N) - v(empty) solved from the samples (the regression
  on sampled coalitions is what makes it accurate; its standard errors come by linearisation). v(N) and
  v(empty) are averaged over ``endpoint_replicates`` (the efficiency constraint otherwise carries their
  noise into every value);
- ``banzhaf``: Banzhaf values by maximum sample reuse (uniform coalitions, every sample used for every
  player: mean worth of the samples with i minus that of the samples without i). Banzhaf values are not
  Shapley values (they weight coalition sizes equally) and need not be efficient;
- ``loo``: leave-one-out, v(N) - v(N - i), for contrast.

Permutations are sampled, never coalitions containing a player uniformly: the latter estimates
Banzhaf values (the pitfall of a Collective XAI reference implementation).

**Standard errors.** Each sampled unit (a permutation, an antithetic pair, a paired kernel sample) is
evaluated on every replicate, which gives a units x replicates table ``X[u, r]`` of per-player
estimates. Its mean is the estimate; its variance is estimated as
``var_u(mean_r X) / U + var_r(mean_u X) / R``: the sampling of coalitions and the noise of v over
replicates (with common random numbers a replicate's offset shared by all coalitions cancels in the
differences). The sum counts the interaction twice, so it errs on the safe side. Exact enumeration has
only the replicate term. With R = 1 on a game that is not deterministic the noise of v cannot be told
apart: ``noise_in_se`` is then False.

**Stopping.** Sampling methods go in rounds and stop once the largest standard error is at most ``se``
(after at least ``MIN_UNITS`` units) or when the next round would pass ``budget`` evaluations (one
evaluation is one coalition in one replicate; a coalition met again is not evaluated again). Without
either, ``DEFAULT_UNITS`` units are sampled; with a target, at most ``MAX_UNITS`` (or as many as the
budget could pay for when no coalition came twice). **Rank stability** counts how often the
players' ranking changed over the last ``RANK_WINDOW`` rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .games import CoalitionGame, as_worths, shapley_weights

METHODS = ("exact", "permutation", "tmc", "kernel", "banzhaf", "loo")
EXACT_AUTO_MAX = 14
EXACT_MAX = 24
MIN_UNITS = 10
DEFAULT_UNITS = 200
MAX_UNITS = 5000
RANK_WINDOW = 10
Z95 = 1.959963984540054

# progress(evaluations so far, budget or None, largest standard error so far)
Progress = Callable[[int, int | None, float], None]


@dataclass(frozen=True)
class ShapleyResult:
    """Values ``[M, n]`` (one row per output of the game) with their standard errors and diagnostics."""

    players: tuple[str, ...]
    outputs: tuple[str, ...]
    method: str
    values: np.ndarray
    se: np.ndarray
    grand: np.ndarray  # [M] v(N), mean over replicates
    empty: np.ndarray  # [M] v(empty)
    n_evaluations: int
    replicates: int
    rounds: int
    stopped: str  # "exact" (every coalition needed was evaluated), "se" (target reached) or "budget"
    rank_changes: int
    rank_window: int
    noise_in_se: bool
    kind: str = "shapley"  # or "banzhaf"
    units: int = 0  # sampled units (permutations, pairs, samples); 0 for exact and loo
    extra: dict = field(default_factory=dict)

    @property
    def efficiency_residual(self) -> np.ndarray:
        """``sum of values - (v(N) - v(empty))`` per output (zero for an efficient estimate)."""
        return self.values.sum(axis=1) - (self.grand - self.empty)

    @property
    def rank_stability(self) -> float:
        """Share of the last rounds in which the ranking did not change (1.0 for a one-round method)."""
        return 1.0 - self.rank_changes / self.rank_window if self.rank_window else 1.0

    def interval(self, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
        return self.values - z * self.se, self.values + z * self.se

    def table(self) -> pd.DataFrame:
        """One row per output and player: value, se, 95% interval, share of the total, rank (1 = largest)."""
        rows = []
        low, high = self.interval()
        for m, output in enumerate(self.outputs):
            total = self.values[m].sum()
            order = np.argsort(-self.values[m], kind="stable")
            rank = np.empty(len(self.players), dtype=np.int64)
            rank[order] = np.arange(1, len(self.players) + 1)
            for i, player in enumerate(self.players):
                rows.append({"output": output, "player": player, "value": float(self.values[m, i]),
                             "se": float(self.se[m, i]), "ci_low": float(low[m, i]), "ci_high": float(high[m, i]),
                             "share": float(self.values[m, i] / total) if abs(total) > 1e-12 else math.nan,
                             "rank": int(rank[i])})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """The diagnostics as plain data (for a manifest or ``--json``)."""
        return {"method": self.method, "kind": self.kind, "players": list(self.players),
                "outputs": list(self.outputs), "n_evaluations": self.n_evaluations,
                "replicates": self.replicates, "rounds": self.rounds, "units": self.units,
                "stopped": self.stopped, "grand": self.grand.tolist(), "empty": self.empty.tolist(),
                "efficiency_residual": self.efficiency_residual.tolist(), "max_se": float(np.max(self.se)),
                "rank_changes": self.rank_changes, "rank_window": self.rank_window,
                "rank_stability": self.rank_stability, "noise_in_se": self.noise_in_se, **self.extra}


class Evaluator:
    """Evaluates coalitions through the game on R replicates, once each, and counts the evaluations."""

    def __init__(self, game: CoalitionGame, replicates: int, progress: Progress | None = None):
        self.game = game
        self.n = len(game.players)
        self.m = len(game.outputs)
        self.replicates = replicates
        self.used = 0
        self._cache: dict[bytes, np.ndarray] = {}
        self.progress = progress

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        """Worths ``[C, R, M]`` of ``coalitions [C, n]``; coalitions met before come from the cache."""
        coalitions = np.asarray(coalitions, dtype=bool)
        keys = [row.tobytes() for row in np.packbits(coalitions, axis=1)]
        missing: dict[bytes, int] = {}
        for index, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = index
        if missing:
            rows = coalitions[list(missing.values())]
            worths = self.call(rows, self.replicates)
            for key, worth in zip(missing, worths):
                self._cache[key] = worth
        return np.stack([self._cache[key] for key in keys]) if keys else np.zeros((0, self.replicates, self.m))

    def call(self, coalitions: np.ndarray, replicates: int) -> np.ndarray:
        """The game itself (no cache), counted."""
        worths = as_worths(self.game(coalitions, replicates), coalitions, replicates, self.m)
        if not np.isfinite(worths).all():
            raise ValueError("the game returned a worth that is not a finite number")
        self.used += coalitions.shape[0] * replicates
        return worths


def estimate(game: CoalitionGame, method: str = "auto", *, se: float | None = None, budget: int | None = None,
             replicates: int | None = None, seed: int | np.random.SeedSequence = 0, round_size: int | None = None,
             tolerance: float = 0.01, antithetic: bool = True, endpoint_replicates: int | None = None,
             progress: Progress | None = None) -> ShapleyResult:
    """Shapley values of ``game`` by ``method`` (see the module docstring); ``auto`` is exact up to 14 players,
    else permutation sampling. ``seed`` seeds the sampling of coalitions; ``round_size`` is the number of
    units per round (default 32)."""
    n = len(game.players)
    r = 1 if game.deterministic else int(replicates or game.replicates)
    ends = endpoint_replicates or (1 if game.deterministic else max(4 * r, 32))
    method = check_options(method, n, r, budget, antithetic, ends)
    evaluator = Evaluator(game, r, progress)
    rng = np.random.default_rng(seed)
    if method == "exact" or (n == 1 and method != "banzhaf"):
        return _exact(evaluator, method)
    if method == "loo":
        return _loo(evaluator)
    # coalitions met again cost nothing, so the number of units is capped as well as the evaluations
    max_units = DEFAULT_UNITS if se is None and budget is None else \
        max(MAX_UNITS if se is not None else 0, (budget or 0) // max((n - 1) * r, 1))
    plan = _Plan(se=se, budget=budget, round_size=round_size or 32, max_units=max_units)
    if method == "permutation":
        return _permutation(evaluator, rng, plan, antithetic)
    if method == "tmc":
        return _tmc(evaluator, rng, plan, tolerance)
    if method == "kernel":
        return _kernel(evaluator, rng, plan, ends)
    return _banzhaf(evaluator, rng, plan)


def check_options(method: str, n: int, replicates: int, budget: int | None, antithetic: bool = True,
                  endpoint_replicates: int | None = None) -> str:
    """The method ``auto`` stands for, after refusing what cannot run (ValueError, one line)."""
    if n < 1:
        raise ValueError("a game needs at least one player")
    if method == "auto":
        method = "exact" if n <= EXACT_AUTO_MAX else "permutation"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (methods: auto, {', '.join(METHODS)})")
    if method == "exact" and n > EXACT_MAX:
        raise ValueError(f"exact enumeration of {n} players is 2^{n} coalitions; it is refused above {EXACT_MAX} "
                         "players (use permutation, tmc, kernel or banzhaf)")
    need = minimum_budget(method, n, replicates, antithetic, endpoint_replicates or replicates)
    if budget is not None and budget < need:
        raise ValueError(f"budget of {budget} evaluations is too small for {method} with {n} players and "
                         f"{replicates} replicates: it needs at least {need}")
    return method


def minimum_budget(method: str, n: int, r: int, antithetic: bool = True, endpoint_replicates: int = 1) -> int:
    """Evaluations (coalitions x replicates) the smallest run of ``method`` takes."""
    if method == "exact" or n == 1:
        return 2 ** n * r
    ends = 2 * r
    return ends + {"loo": n * r, "permutation": (2 if antithetic else 1) * (n - 1) * r, "tmc": (n - 1) * r,
                   "kernel": 2 * r - ends + 2 * endpoint_replicates, "banzhaf": r}[method]


@dataclass
class _Plan:
    se: float | None
    budget: int | None
    round_size: int
    max_units: int
    units: int = 0

    def units_affordable(self, used: int, cost: int) -> int:
        """How many units of (at most) ``cost`` evaluations the next round may have; counts them as taken."""
        k = min(self.round_size, self.max_units - self.units)
        if self.budget is not None:
            k = min(k, (self.budget - used) // max(cost, 1))
        k = max(0, k)
        self.units += k
        return k


class _Rounds:
    """Bookkeeping of the rounds of a sampling method: rankings, stopping, progress."""

    def __init__(self, evaluator: Evaluator, plan: _Plan):
        self.evaluator = evaluator
        self.plan = plan
        self.rankings: list[tuple[int, ...]] = []
        self.stopped = "budget"

    def done(self, values: np.ndarray, se: np.ndarray, units: int) -> bool:
        self.rankings.append(tuple(np.argsort(-values.sum(0), kind="stable")))
        largest = float(np.max(se)) if se.size else 0.0
        if self.evaluator.progress:
            self.evaluator.progress(self.evaluator.used, self.plan.budget, largest)
        if self.plan.se is not None and units >= MIN_UNITS and largest <= self.plan.se:
            self.stopped = "se"
            return True
        return False

    def rank_changes(self) -> tuple[int, int]:
        recent = self.rankings[-(RANK_WINDOW + 1):]
        return sum(a != b for a, b in zip(recent, recent[1:])), max(len(recent) - 1, 0)


def _too_small(evaluator: Evaluator, plan: _Plan, cost: int, what: str) -> ValueError:
    return ValueError(f"the budget of {plan.budget} evaluations is too small: one {what} takes {cost} evaluations "
                      f"({evaluator.n} players, {evaluator.replicates} replicates); {evaluator.used} were spent on "
                      "v(N) and v(empty)")


def two_way(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of a units x replicates table ``x [U, R, ...]`` (see the module docstring)."""
    u, r = x.shape[:2]
    mean = x.mean(axis=(0, 1))
    if u < 2:
        return mean, np.full(mean.shape, np.inf)
    var = x.mean(axis=1).var(axis=0, ddof=1) / u
    if r > 1:
        var = var + x.mean(axis=0).var(axis=0, ddof=1) / r
    return mean, np.sqrt(var)


def _endpoints(evaluator: Evaluator) -> np.ndarray:
    """v(empty) and v(N): ``[2, R, M]``."""
    n = evaluator.n
    return evaluator(np.stack([np.zeros(n, bool), np.ones(n, bool)]))


def _result(evaluator: Evaluator, method: str, values, se, ends, rounds=1, stopped="exact", changes=(0, 0),
            kind="shapley", units=0, **extra) -> ShapleyResult:
    game = evaluator.game
    noise = bool(game.deterministic or evaluator.replicates > 1)
    return ShapleyResult(players=tuple(game.players), outputs=tuple(game.outputs), method=method,
                         values=np.asarray(values, dtype=np.float64), se=np.asarray(se, dtype=np.float64),
                         empty=ends[0].mean(0), grand=ends[1].mean(0), n_evaluations=evaluator.used,
                         replicates=evaluator.replicates, rounds=rounds, stopped=stopped, rank_changes=changes[0],
                         rank_window=changes[1], noise_in_se=noise, kind=kind, units=units, extra=extra)


def _per_replicate(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``phi [R, M, n]`` exact per replicate -> mean and standard error over replicates."""
    r = phi.shape[0]
    se = phi.std(axis=0, ddof=1) / math.sqrt(r) if r > 1 else np.zeros(phi.shape[1:])
    return phi.mean(axis=0), se


def all_coalitions(n: int) -> np.ndarray:
    """``[2^n, n]`` bool: row k is the coalition whose bits are those of k."""
    index = np.arange(2 ** n)
    return ((index[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_values(worths: np.ndarray, n: int, kind: str = "shapley") -> np.ndarray:
    """Shapley (or Banzhaf) values from the worths of all coalitions ``[2^n, ...]`` in :func:`all_coalitions`
    order: ``[..., n]``."""
    index = np.arange(2 ** n)
    size = np.array([bin(k).count("1") for k in range(2 ** n)]) if n <= 16 else \
        all_coalitions(n).sum(1)
    weights = shapley_weights(n) if kind == "shapley" else np.full(n, 1.0 / 2 ** (n - 1))
    out = []
    for i in range(n):
        without = index[(index >> i) & 1 == 0]
        w = weights[size[without]].reshape((-1,) + (1,) * (worths.ndim - 1))
        out.append((w * (worths[without | (1 << i)] - worths[without])).sum(axis=0))
    return np.stack(out, axis=-1)


def _exact(evaluator: Evaluator, method: str) -> ShapleyResult:
    n = evaluator.n
    coalitions = all_coalitions(n)
    worths = evaluator.call(coalitions, evaluator.replicates)  # [2^n, R, M]
    phi = exact_values(worths, n)  # [R, M, n]
    values, se = _per_replicate(phi)
    if evaluator.progress:
        evaluator.progress(evaluator.used, evaluator.used, float(np.max(se)))
    return _result(evaluator, "exact", values, se, worths[[0, -1]])


def _loo(evaluator: Evaluator) -> ShapleyResult:
    n = evaluator.n
    leave = ~np.eye(n, dtype=bool)
    worths = evaluator(np.concatenate([np.zeros((1, n), bool), np.ones((1, n), bool), leave]))
    phi = (worths[1][None] - worths[2:]).transpose(1, 2, 0)  # [R, M, n]
    values, se = _per_replicate(phi)
    if evaluator.progress:
        evaluator.progress(evaluator.used, evaluator.used, float(np.max(se)))
    return _result(evaluator, "loo", values, se, worths[:2], kind="leave_one_out")


def _marginals(evaluator: Evaluator, perms: np.ndarray) -> np.ndarray:
    """Marginal contributions along permutations ``[P, n]`` -> ``[P, R, M, n]`` (by player)."""
    p, n = perms.shape
    ranks = np.argsort(perms, axis=1)
    prefixes = ranks[:, None, :] < np.arange(n + 1)[None, :, None]  # [P, n + 1, n]
    worths = evaluator(prefixes.reshape(-1, n)).reshape(p, n + 1, evaluator.replicates, evaluator.m)
    steps = worths[:, 1:] - worths[:, :-1]  # [P, n, R, M] by position
    by_player = np.take_along_axis(steps, ranks[:, :, None, None], axis=1)
    return by_player.transpose(0, 2, 3, 1)


def _permutations(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    return rng.permuted(np.tile(np.arange(n), (count, 1)), axis=1)


def _permutation(evaluator: Evaluator, rng, plan: _Plan, antithetic: bool) -> ShapleyResult:
    n = evaluator.n
    ends = _endpoints(evaluator)
    rounds = _Rounds(evaluator, plan)
    per_unit = (2 if antithetic else 1) * max(n - 1, 1) * evaluator.replicates
    units: list[np.ndarray] = []
    values = se = None
    while True:
        k = plan.units_affordable(evaluator.used, per_unit)
        if k == 0:
            if not units:
                raise _too_small(evaluator, plan, per_unit, "antithetic pair" if antithetic else "permutation")
            break
        perms = _permutations(rng, k, n)
        if antithetic:
            perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(2 * k, n)
        x = _marginals(evaluator, perms)
        if antithetic:
            x = x.reshape(k, 2, *x.shape[1:]).mean(axis=1)
        units.append(x)
        values, se = two_way(np.concatenate(units))
        if rounds.done(values, se, sum(len(u) for u in units)):
            break
    count = sum(len(u) for u in units)
    return _result(evaluator, "permutation", values, se, ends, len(rounds.rankings), rounds.stopped,
                   rounds.rank_changes(), units=count, antithetic=antithetic)


def _tmc(evaluator: Evaluator, rng, plan: _Plan, tolerance: float) -> ShapleyResult:
    n, r, m = evaluator.n, evaluator.replicates, evaluator.m
    ends = _endpoints(evaluator)
    empty, grand = ends[0].mean(0), ends[1].mean(0)
    threshold = tolerance * float(np.max(np.abs(grand - empty)))
    block = max(1, math.ceil(n / 4))
    rounds = _Rounds(evaluator, plan)
    per_unit = max(n - 1, 1) * r
    units: list[np.ndarray] = []
    values = se = None
    truncated = 0
    while True:
        k = plan.units_affordable(evaluator.used, per_unit)
        if k == 0:
            if not units:
                raise _too_small(evaluator, plan, per_unit, "permutation")
            break
        perms = _permutations(rng, k, n)
        ranks = np.argsort(perms, axis=1)
        worths = np.empty((k, n + 1, r, m))
        worths[:, 0], worths[:, n] = ends[0], ends[1]
        alive = np.ones(k, dtype=bool)
        start = 1
        while start < n and alive.any():
            stop = min(start + block, n)
            rows = np.flatnonzero(alive)
            positions = np.arange(start, stop)
            prefixes = ranks[rows][:, None, :] < positions[None, :, None]  # [a, len, n]
            got = evaluator(prefixes.reshape(-1, n)).reshape(len(rows), len(positions), r, m)
            worths[rows[:, None], positions[None, :]] = got
            close = (np.abs(got.mean(axis=2) - grand) <= threshold).all(axis=-1)  # [a, len]
            for a in np.flatnonzero(close.any(axis=1)):  # at most one per permutation, once
                j = positions[np.argmax(close[a])]
                worths[rows[a], j + 1:] = worths[rows[a], j]  # marginals after the truncation are zero
                alive[rows[a]] = False
                truncated += 1
            start = stop
        steps = worths[:, 1:] - worths[:, :-1]
        x = np.take_along_axis(steps, ranks[:, :, None, None], axis=1).transpose(0, 2, 3, 1)
        units.append(x)
        values, se = two_way(np.concatenate(units))
        if rounds.done(values, se, sum(len(u) for u in units)):
            break
    count = sum(len(u) for u in units)
    return _result(evaluator, "tmc", values, se, ends, len(rounds.rankings), rounds.stopped, rounds.rank_changes(),
                   units=count, tolerance=tolerance, truncated=truncated)


def _kernel(evaluator: Evaluator, rng, plan: _Plan, endpoint_replicates: int) -> ShapleyResult:
    n, r = evaluator.n, evaluator.replicates
    ends = evaluator.call(np.stack([np.zeros(n, bool), np.ones(n, bool)]), endpoint_replicates)  # [2, R', M]
    delta = ends[1] - ends[0]  # [R', M]
    delta_mean = delta.mean(axis=0)
    delta_se = delta.std(axis=0, ddof=1) / math.sqrt(len(delta)) if len(delta) > 1 else np.zeros_like(delta_mean)
    sizes = np.arange(1, n)
    p = 1.0 / (sizes * (n - sizes))
    p /= p.sum()
    rounds = _Rounds(evaluator, plan)
    masks: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    values = se = None
    while True:
        k = plan.units_affordable(evaluator.used, 2 * r)
        if k == 0:
            if not masks:
                raise _too_small(evaluator, plan, 2 * r, "paired sample")
            break
        size = rng.choice(sizes, size=k, p=p)
        z = np.argsort(_permutations(rng, k, n), axis=1) < size[:, None]  # the first `size` of a random order
        worths = evaluator(np.concatenate([z, ~z]))
        masks.append(z)
        # b_u = (z v(z) + (1 - z) v(1 - z)) / 2; v(empty) drops out of paired samples (it multiplies 1 / 2)
        targets.append(0.5 * (z[:, None, None, :] * worths[:k, ..., None] + (~z)[:, None, None, :] * worths[k:, ..., None]))
        values, se = _paired_kernel(np.concatenate(masks), np.concatenate(targets), delta_mean, delta_se)
        if rounds.done(values, se, sum(len(m) for m in masks)):
            break
    count = sum(len(m) for m in masks)
    return _result(evaluator, "kernel", values, se, ends, len(rounds.rankings), rounds.stopped,
                   rounds.rank_changes(), units=count, endpoint_replicates=endpoint_replicates)


def _paired_kernel(z: np.ndarray, b: np.ndarray, delta: np.ndarray, delta_se: np.ndarray):
    """KernelSHAP's constrained least squares from paired samples ``z [U, n]`` and ``b [U, R, M, n]``.

    ``A = mean (z z' + z~ z~') / 2`` and ``b`` averaged, solved with ``sum(phi) = delta``:
    ``phi = L b + c delta`` with ``L = A^-1 - A^-1 1 1' A^-1 / (1' A^-1 1)`` and ``c = A^-1 1 / (1' A^-1 1)``.
    Standard errors by linearisation: unit u's pseudo-value is ``phi + L (b_u - A_u phi)`` (they average to
    phi), whose units x replicates table goes through :func:`two_way`; the noise of delta is added on.
    """
    zf = z.astype(np.float64)
    zc = 1.0 - zf
    a_units = 0.5 * (zf[:, :, None] * zf[:, None, :] + zc[:, :, None] * zc[:, None, :])  # [U, n, n]
    inverse = np.linalg.pinv(a_units.mean(axis=0))
    ones = np.ones(len(inverse))
    c = inverse @ ones / (ones @ inverse @ ones)
    project = inverse - np.outer(inverse @ ones, ones @ inverse) / (ones @ inverse @ ones)
    phi = b.mean(axis=(0, 1)) @ project.T + delta[:, None] * c  # [M, n]
    fitted = np.einsum("uij,mj->umi", a_units, phi)  # [U, M, n]
    pseudo = phi + (b - fitted[:, None]) @ project.T  # [U, R, M, n]
    _, se = two_way(pseudo)
    return phi, se + np.abs(c) * delta_se[:, None]  # the two parts may correlate (common streams): add the sds


def _banzhaf(evaluator: Evaluator, rng, plan: _Plan) -> ShapleyResult:
    n, r = evaluator.n, evaluator.replicates
    ends = _endpoints(evaluator)
    rounds = _Rounds(evaluator, plan)
    samples: list[np.ndarray] = []
    worth_rows: list[np.ndarray] = []
    values = se = None
    while True:
        k = plan.units_affordable(evaluator.used, r)
        if k == 0:
            if not samples:
                raise _too_small(evaluator, plan, r, "sample")
            break
        z = rng.random((k, n)) < 0.5
        samples.append(z)
        worth_rows.append(evaluator(z))
        values, se = _msr(np.concatenate(samples), np.concatenate(worth_rows))
        if rounds.done(values, se, sum(len(s) for s in samples)):
            break
    count = sum(len(s) for s in samples)
    return _result(evaluator, "banzhaf", values, se, ends, len(rounds.rankings), rounds.stopped,
                   rounds.rank_changes(), kind="banzhaf", units=count)


def _msr(z: np.ndarray, worths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum sample reuse: ``z [K, n]``, ``worths [K, R, M]`` -> Banzhaf values and standard errors ``[M, n]``."""
    inside = z.astype(np.float64)
    outside = 1.0 - inside
    n_in, n_out = inside.sum(0), outside.sum(0)  # [n]

    def split(v: np.ndarray):  # v [K, ...] -> mean in, mean out per player, [..., n]
        v2 = v.reshape(v.shape[0], -1)
        mean_in = (inside.T @ v2) / np.maximum(n_in, 1)[:, None]
        mean_out = (outside.T @ v2) / np.maximum(n_out, 1)[:, None]
        shape = v.shape[1:] + (z.shape[1],)
        return mean_in.T.reshape(shape), mean_out.T.reshape(shape), v2

    mean_worth = worths.mean(axis=1)  # [K, M]
    m_in, m_out, flat = split(mean_worth)
    sq_in = (inside.T @ flat ** 2).T / np.maximum(n_in, 1)
    sq_out = (outside.T @ flat ** 2).T / np.maximum(n_out, 1)
    var_in = np.maximum(sq_in - m_in ** 2, 0) * n_in / np.maximum(n_in - 1, 1)
    var_out = np.maximum(sq_out - m_out ** 2, 0) * n_out / np.maximum(n_out - 1, 1)
    var = var_in / np.maximum(n_in, 1) + var_out / np.maximum(n_out, 1)
    r = worths.shape[1]
    if r > 1:
        per_in, per_out, _ = split(worths)  # [R, M, n]
        var = var + (per_in - per_out).var(axis=0, ddof=1) / r
    var = np.where((n_in < 2) | (n_out < 2), np.inf, var)
    return m_in - m_out, np.sqrt(var)
