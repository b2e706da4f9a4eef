"""Shapley contribution analysis: which players (agents, groups, named sets) caused an outcome.

Three layers, each usable on its own:

- :mod:`~sim.shapley.games`: the coalition-game contract (coalitions ``[C, n]`` bool -> worths
  ``[C, R, M]`` over R replicates that share their randomness) and analytic games with known values;
- :mod:`~sim.shapley.estimators`: ``estimate(game, method)`` with exact enumeration, permutation
  sampling (antithetic), truncated Monte Carlo, paired KernelSHAP, Banzhaf by maximum sample reuse and
  leave-one-out; values, standard errors, efficiency residual, evaluations, rank stability;
- :mod:`~sim.shapley.simulation`: a scenario as a game (players, worth, null; coalitions x replicates
  as worlds of chunked batches on common random numbers), and :func:`shapley`, which runs it all and
  writes a run directory with ``shapley.parquet`` (``valuesim shapley`` on the command line).

The package itself is callable: ``sim.shapley(scenario, metric=..., players=...)`` is :func:`shapley`.
"""

import sys
import types

from .analysis import read_shapley, shapley
from .estimators import METHODS, ShapleyResult, estimate
from .games import (AirportGame, CoalitionGame, FunctionGame, GloveGame, NoisyGame, UnanimityGame,
                    WeightedVotingGame)

__all__ = ["shapley", "read_shapley", "estimate", "METHODS", "ShapleyResult", "CoalitionGame", "FunctionGame",
           "AirportGame", "GloveGame", "WeightedVotingGame", "UnanimityGame", "NoisyGame"]


class _CallableModule(types.ModuleType):
    """``sim.shapley(...)`` calls :func:`shapley`; ``sim.shapley.estimate`` and the rest stay attributes."""

    def __call__(self, *args, **kwargs):
        return shapley(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
