"""Search methods, as ask/tell loops over the unit box [0, 1]^d (the parameters' ranges, rescaled).

``ask()`` gives a whole swarm (population) at once, so the caller evaluates it
as one batch; ``tell(points, losses)`` reports the losses back (``inf`` for an
invalid candidate).

- :class:`PSO`: global-best particle swarm optimisation with Clerc and
  Kennedy's constriction coefficients (inertia 0.7298, c1 = c2 = 1.49618), the
  method the bounded-confidence value-change study tuned its model with.
  Positions stay in the box (a particle that leaves it is put on the wall and
  loses that velocity component).
- :class:`CMAES`: the covariance matrix adaptation evolution strategy of the
  maintained ``cmaes`` package (``pip install 'valuesim[calibrate]'``), with
  the box as its bounds.
"""

from __future__ import annotations

import numpy as np

from ..errors import ValuesimError

INERTIA, COGNITIVE, SOCIAL = 0.7298, 1.49618, 1.49618
MAX_SPEED = 0.5  # of the box's width per iteration
PENALTY = 1e30  # what CMA-ES is told for an invalid candidate (it needs finite numbers)


class PSO:
    """Particle swarm optimisation in [0, 1]^d; one generator, seeded once, draws everything."""

    def __init__(self, dim: int, swarm: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.x = self.rng.random((swarm, dim))
        self.v = (self.rng.random((swarm, dim)) - self.x) * 0.5
        self.best_x = self.x.copy()
        self.best_f = np.full(swarm, np.inf)
        self.started = False

    def ask(self) -> np.ndarray:
        if self.started:
            leader = self.best_x[int(np.argmin(self.best_f))]
            r1, r2 = self.rng.random(self.x.shape), self.rng.random(self.x.shape)
            self.v = INERTIA * self.v + COGNITIVE * r1 * (self.best_x - self.x) + SOCIAL * r2 * (leader - self.x)
            self.v = np.clip(self.v, -MAX_SPEED, MAX_SPEED)
            moved = self.x + self.v
            wall = (moved < 0) | (moved > 1)
            self.v[wall] = 0.0
            self.x = np.clip(moved, 0.0, 1.0)
        self.started = True
        return self.x.copy()

    def tell(self, points: np.ndarray, losses: np.ndarray) -> None:
        better = losses < self.best_f
        self.best_x[better] = points[better]
        self.best_f[better] = losses[better]


class CMAES:
    """CMA-ES from the ``cmaes`` package, started at the box's centre with step 0.3."""

    def __init__(self, dim: int, swarm: int, seed: int):
        try:
            from cmaes import CMA
        except ImportError:
            raise ValuesimError("--method cmaes needs the cmaes package: pip install 'valuesim[calibrate]'") \
                from None
        if dim < 2:
            raise ValuesimError("--method cmaes needs at least two --param (the cmaes package works in two or "
                                "more dimensions); use --method pso for one")
        self.cma = CMA(mean=np.full(dim, 0.5), sigma=0.3, bounds=np.array([[0.0, 1.0]] * dim), seed=seed,
                       population_size=swarm)

    def ask(self) -> np.ndarray:
        return np.stack([self.cma.ask() for _ in range(self.cma.population_size)])

    def tell(self, points: np.ndarray, losses: np.ndarray) -> None:
        self.cma.tell([(x, float(f) if np.isfinite(f) else PENALTY) for x, f in zip(points, losses)])


METHODS = {"pso": PSO, "cmaes": CMAES}


def make_optimizer(method: str, dim: int, swarm: int, seed: int):
    if method not in METHODS:
        raise ValuesimError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return METHODS[method](dim, swarm, seed)
