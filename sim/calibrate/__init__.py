"""Calibration: fit a scenario's parameters to data, as ``valuesim calibrate`` does.

::

    import sim
    result = sim.calibrate.fit("scenarios/ego_networks.yaml", "scenarios/ego_networks/targets.yaml",
                               ["population.people.confidence=0.05:0.6", "population.people.rate=0.05:0.5"])
    result.params, result.loss, result.set_flags, result.run_dir

The pieces, each small:

- :mod:`.params` -- ``dotted.key=low:high``: which keys exist, their boxes, and how a candidate reaches
  the engine (per world in one batch, or one batch per distinct value of keys that cannot vary per world);
- :mod:`.targets` -- the targets file: metric values with a standard error or a tolerance, observed value
  trajectories (agent, step, one column per dimension) with a one-step or free-run MSE;
- :mod:`.evaluate` -- every candidate a block of R worlds of one batch, on streams 0..R-1 (common
  random numbers), the loss an unbiased estimate of the squared error of the model's expected outcome;
- :mod:`.optimize` -- PSO (ours) and CMA-ES (the ``cmaes`` package) as ask/tell loops;
- :mod:`.baselines` -- persistence and DeGroot averaging, errors with intervals by ego network;
- :mod:`.calibration` -- :func:`fit` and the calibration directory it writes;
- :mod:`.egonets` -- the synthetic ego networks and observed trajectories of ``scenarios/ego_networks.yaml``.
"""

from .calibration import CalibrationResult, fit
from .params import Parameter, parse_params
from .targets import Targets, load_targets

__all__ = ["fit", "CalibrationResult", "Parameter", "parse_params", "Targets", "load_targets"]
