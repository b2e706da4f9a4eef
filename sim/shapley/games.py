"""Coalition games: the contract every estimator works on, and analytic games whose values are known.

A game is anything with

- ``players``: the players' names (n of them);
- ``outputs``: the names of the worths it returns (one, or one per window: M of them);
- ``replicates``: how many replicates R the estimators ask for by default;
- ``deterministic``: True when every replicate returns the same worth (the estimators then ask for one);
- ``__call__(coalitions, replicates)``: ``coalitions`` is a ``[C, n]`` bool matrix (row c, column i: player
  i is in coalition c) and the answer is the worths ``[C, R, M]`` (float64).

Replicate r of one coalition and replicate r of another share their randomness (common random numbers:
for a simulation, replicate r is the world's random stream r), so a marginal contribution
``v_r(S + i) - v_r(S)`` is measured at low variance. A game's worth of coalition S is the mean over
replicates and its standard error their standard deviation over sqrt(R); estimators use the replicates
themselves, so that their standard errors include the noise of v (see :mod:`sim.shapley.estimators`).

:class:`FunctionGame` makes a game of a plain function. The analytic games below (airport, glove,
weighted voting, unanimity, and noise added to any of them) compute their exact Shapley values by
counting, independently of the estimators, so the estimators are tested against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class CoalitionGame(Protocol):
    """The contract (see the module docstring)."""

    players: tuple[str, ...]
    outputs: tuple[str, ...]
    replicates: int
    deterministic: bool

    def __call__(self, coalitions: np.ndarray, replicates: int) -> np.ndarray: ...


def as_worths(out, coalitions: np.ndarray, replicates: int, outputs: int) -> np.ndarray:
    """A game's answer as ``[C, R, M]`` float64: ``[C]`` and ``[C, R]`` are accepted and broadcast."""
    worths = np.asarray(out, dtype=np.float64)
    c = coalitions.shape[0]
    if worths.ndim == 1:
        worths = worths[:, None, None]
    elif worths.ndim == 2:
        worths = worths[:, :, None]
    if worths.shape[0] != c or worths.shape[2] != outputs or worths.shape[1] not in (1, replicates):
        raise ValueError(f"a game must return worths [C, R, M] = [{c}, {replicates}, {outputs}] (or [C] / [C, R]), "
                         f"got {list(np.shape(out))}")
    return np.broadcast_to(worths, (c, replicates, outputs)).copy()


def shapley_weights(n: int) -> np.ndarray:
    """``w[s] = s! (n - s - 1)! / n!``: the weight of a coalition of size s not containing the player."""
    return np.array([1.0 / (n * comb(n - 1, s)) for s in range(n)])


@dataclass
class FunctionGame:
    """A game of ``fn(coalitions [C, n] bool) -> worths [C]`` (or ``[C, R]``, ``[C, R, M]``)."""

    fn: Callable[[np.ndarray], np.ndarray]
    n: int
    players: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("worth",)
    replicates: int = 1
    deterministic: bool = True

    def __post_init__(self) -> None:
        if not self.players:
            self.players = tuple(f"p{i}" for i in range(self.n))

    def __call__(self, coalitions: np.ndarray, replicates: int) -> np.ndarray:
        return as_worths(self.fn(np.asarray(coalitions, dtype=bool)), coalitions, replicates, len(self.outputs))


class _Analytic:
    """Shared by the analytic games: deterministic, one output, names p0..p(n-1)."""

    outputs = ("worth",)
    replicates = 1
    deterministic = True
    n: int

    @property
    def players(self) -> tuple[str, ...]:
        return tuple(f"p{i}" for i in range(self.n))

    def worth(self, coalitions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, coalitions: np.ndarray, replicates: int) -> np.ndarray:
        return as_worths(self.worth(np.asarray(coalitions, dtype=bool)), coalitions, replicates, 1)


@dataclass
class AirportGame(_Analytic):
    """The airport game (Littlechild and Owen 1973): v(S) = the largest cost in S (the runway S needs).

    Shapley value, with costs sorted ascending c_1 <= ... <= c_n and c_0 = 0:
    ``phi_(k) = sum over j <= k of (c_j - c_(j-1)) / (n - j + 1)``.
    """

    costs: Sequence[float]

    def __post_init__(self) -> None:
        self.costs = np.asarray(self.costs, dtype=np.float64)
        self.n = len(self.costs)

    def worth(self, coalitions):
        return np.where(coalitions, self.costs, 0.0).max(axis=1, initial=0.0)

    def shapley_values(self) -> np.ndarray:
        order = np.argsort(self.costs, kind="stable")
        sorted_costs = self.costs[order]
        steps = np.diff(np.concatenate([[0.0], sorted_costs])) / (self.n - np.arange(self.n))
        values = np.empty(self.n)
        values[order] = np.cumsum(steps)
        return values


@dataclass
class GloveGame(_Analytic):
    """The glove game: players 0..left-1 hold a left glove, the rest a right one; v(S) = pairs S can make.

    Exact values by counting the coalitions of the others by how many left and right gloves they hold.
    """

    left: int
    right: int

    def __post_init__(self) -> None:
        self.n = self.left + self.right

    def worth(self, coalitions):
        lefts = coalitions[:, :self.left].sum(1)
        rights = coalitions[:, self.left:].sum(1)
        return np.minimum(lefts, rights).astype(np.float64)

    def shapley_values(self) -> np.ndarray:
        w = shapley_weights(self.n)

        def value(own_left: bool) -> float:
            others_left = self.left - own_left
            others_right = self.right - (not own_left)
            total = 0.0
            for a in range(others_left + 1):
                for b in range(others_right + 1):
                    gain = (min(a + 1, b) - min(a, b)) if own_left else (min(a, b + 1) - min(a, b))
                    total += comb(others_left, a) * comb(others_right, b) * w[a + b] * gain
            return total

        return np.array([value(True)] * self.left + [value(False)] * self.right)


@dataclass
class WeightedVotingGame(_Analytic):
    """A weighted majority game: v(S) = 1 when the weights in S reach the quota, else 0.

    Exact Shapley (Shapley-Shubik) and Banzhaf values by counting, with dynamic programming over the
    others' coalition sizes and total weights, the coalitions in which a player is pivotal.
    """

    weights: Sequence[int]
    quota: int

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.int64)
        self.n = len(self.weights)

    def worth(self, coalitions):
        return (np.where(coalitions, self.weights, 0).sum(1) >= self.quota).astype(np.float64)

    def _pivotal_counts(self, i: int) -> np.ndarray:
        """counts[s]: coalitions of s others with quota - w_i <= weight < quota."""
        total = int(self.weights.sum())
        table = np.zeros((self.n, total + 1), dtype=object)  # [size, weight] -> number of coalitions
        table[0, 0] = 1
        for j, wj in enumerate(self.weights):
            if j == i:
                continue
            shifted = np.zeros_like(table)
            shifted[1:, wj:] = table[:-1, :total + 1 - wj]
            table = table + shifted
        low = max(self.quota - int(self.weights[i]), 0)
        return table[:, low:self.quota].sum(axis=1) if self.quota > low else np.zeros(self.n, dtype=object)

    def shapley_values(self) -> np.ndarray:
        w = shapley_weights(self.n)
        return np.array([float(sum(w[s] * int(c) for s, c in enumerate(self._pivotal_counts(i))))
                         for i in range(self.n)])

    def banzhaf_values(self) -> np.ndarray:
        return np.array([float(sum(int(c) for c in self._pivotal_counts(i))) / 2 ** (self.n - 1)
                         for i in range(self.n)])


@dataclass
class UnanimityGame(_Analytic):
    """The unanimity game of a carrier T: v(S) = 1 when S contains all of T. Shapley: 1/|T| on T, 0 off it;
    Banzhaf: 1/2^(|T|-1) on T."""

    n: int
    carrier: Sequence[int]

    def worth(self, coalitions):
        return coalitions[:, list(self.carrier)].all(axis=1).astype(np.float64)

    def shapley_values(self) -> np.ndarray:
        values = np.zeros(self.n)
        values[list(self.carrier)] = 1.0 / len(self.carrier)
        return values

    def banzhaf_values(self) -> np.ndarray:
        values = np.zeros(self.n)
        values[list(self.carrier)] = 1.0 / 2 ** (len(self.carrier) - 1)
        return values


@dataclass
class NoisyGame:
    """Another game's worths plus independent Gaussian noise (sd ``sigma``) on every evaluation.

    Its exact Shapley values are the base game's. The noise generator is seeded once (``seed``), so a
    test is reproducible; every call draws fresh noise.
    """

    base: _Analytic
    sigma: float
    seed: int = 0
    replicates: int = 8
    deterministic: bool = False
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def players(self) -> tuple[str, ...]:
        return self.base.players

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.base.outputs

    def __call__(self, coalitions: np.ndarray, replicates: int) -> np.ndarray:
        exact = self.base(coalitions, replicates)
        return exact + self.sigma * self.rng.standard_normal(exact.shape)

    def shapley_values(self) -> np.ndarray:
        return self.base.shapley_values()
