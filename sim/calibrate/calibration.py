"""``fit``: search parameters of a scenario so that it reproduces targets, and write a calibration directory.

```
runs/<scenario>__<UTC time>__s<seed>__calibrate/
  manifest.json        kind: calibration; status (running | complete | failed), method, budget, swarm,
                       seeds, the searched parameters, the targets file, the fitted values, the --set flags
  scenario.yaml        the resolved scenario with the fitted values in
  fit.json             fitted parameters, loss, the --set flags, the fit per target, the baselines
  fit.parquet          the fit per target: target, predictor, dimension, value, ci_low, ci_high,
                       target_value, target_low, target_high, within
  loss_curve.parquet   iteration, evaluations, best (so far), iteration_best, iteration_mean
  candidates.parquet   every candidate evaluated: iteration, candidate, one column per parameter, loss
  fit.png              the loss curve and the fit per target
```
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ValuesimError
from .baselines import baselines, mse_interval, units
from .evaluate import Evaluator, trajectory_errors
from .optimize import make_optimizer
from .params import Parameter, parse_params, with_overrides
from .targets import load_targets

# progress(iteration, iterations, best loss so far)
Progress = Callable[[int, int, float], None]


@dataclass
class CalibrationResult:
    """What a calibration found: ``params`` (key -> value), its ``loss``, the ``set_flags`` that reproduce it."""

    run_dir: Path
    params: dict[str, float]
    loss: float
    set_flags: list[str]
    evaluations: int
    fit: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)

    def command(self, scenario: str) -> str:
        return " ".join(["valuesim run", scenario, *(f"--set {flag}" for flag in self.set_flags)])


def fit(scenario, targets, params: list[str], *, method: str = "pso", budget: int = 320, swarm: int = 16,
        seeds: int = 8, out: str | Path | None = None, runs_dir: str | Path = "runs", device: str = "cpu",
        overrides: list[str] | tuple = (), progress: Progress | None = None,
        command: list[str] | None = None) -> CalibrationResult:
    """Fit ``params`` (``["dotted.key=low:high", ...]``) of ``scenario`` to ``targets`` (a targets file).

    ``budget`` candidates are evaluated in iterations of ``swarm``, each
    candidate on ``seeds`` random streams shared by all candidates, each
    iteration as one batched run. Everything is checked (scenario, parameters,
    targets) before the calibration directory is made.
    """
    from ..config.scenario import Scenario, load_scenario

    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, list(overrides))
    if isinstance(scenario, Scenario) and overrides:
        loaded = with_overrides(scenario, list(overrides))
    searched = parse_params(list(params), loaded)
    if swarm < 2:
        raise ValuesimError(f"--swarm must be at least 2, got {swarm}")
    if budget < swarm:
        raise ValuesimError(f"--budget ({budget} evaluations) must be at least one swarm of {swarm}")
    wanted = load_targets(targets, loaded)
    evaluator = Evaluator(loaded, searched, wanted, seeds, device)
    optimizer = make_optimizer(method, len(searched), swarm, loaded.spec.seed)

    from ..runs.runlog import RunLock, new_run_dir

    path = Path(out) if out is not None else new_run_dir(Path(runs_dir), loaded.name, loaded.spec.seed, "calibrate")
    path.mkdir(parents=True, exist_ok=True)
    with RunLock(path):
        writer = _Writer(path, loaded, searched, wanted, dict(method=method, budget=budget, swarm=swarm,
                                                             seeds=seeds, device=device, command=command,
                                                             targets=str(targets), overrides=list(overrides)))
        try:
            result = _search(evaluator, optimizer, searched, budget // swarm, swarm, writer, progress)
            result = _final(evaluator, loaded, searched, wanted, result, writer)
        except BaseException as exc:
            writer.finish("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        writer.finish("complete")
    return result


def _search(evaluator: Evaluator, optimizer, searched: list[Parameter], iterations: int, swarm: int,
            writer, progress: Progress | None) -> dict[str, Any]:
    best_loss, best_values = math.inf, None
    curve, rows = [], []
    for iteration in range(iterations):
        units_ = optimizer.ask()
        values = np.array([[p.value(u) for p, u in zip(searched, row)] for row in units_])
        evaluation = evaluator.evaluate(values)
        optimizer.tell(units_, evaluation.loss)
        finite = evaluation.loss[np.isfinite(evaluation.loss)]
        at = int(np.argmin(evaluation.loss))
        if evaluation.loss[at] < best_loss:
            best_loss, best_values = float(evaluation.loss[at]), values[at]
        curve.append({"iteration": iteration, "evaluations": (iteration + 1) * swarm, "best": best_loss,
                      "iteration_best": float(evaluation.loss[at]),
                      "iteration_mean": float(finite.mean()) if finite.size else math.inf})
        for c, row in enumerate(values):
            rows.append({"iteration": iteration, "candidate": c,
                         **{p.key: float(v) for p, v in zip(searched, row)}, "loss": float(evaluation.loss[c])})
        if progress is not None:
            progress(iteration + 1, iterations, best_loss)
    if best_values is None:
        first = next(iter(evaluation.invalid.values()), "no candidate could be evaluated")
        raise ValuesimError(f"no candidate in the box was a valid scenario; the first said: {first}")
    writer.table("loss_curve", curve)
    writer.table("candidates", rows)
    return {"loss": best_loss, "values": best_values, "evaluations": iterations * swarm, "curve": curve}


def _final(evaluator: Evaluator, scenario, searched, targets, found: dict[str, Any], writer) -> CalibrationResult:
    """The fit of the best candidate, per target with intervals, against the baselines."""
    values = found["values"]
    flags = [p.flag(v) for p, v in zip(searched, values)]
    fitted = {p.key: (int(v) if p.integer else float(v)) for p, v in zip(searched, values)}
    evaluation = evaluator.evaluate(values[None])
    rows: list[dict[str, Any]] = []
    summary: dict[str, float] = {}
    if targets.trajectories is not None:
        rows, summary = _trajectory_fit(evaluator, values, targets.trajectories, scenario)
    for j, target in enumerate(targets.metrics):
        rows.append(_metric_row(j, target, evaluation, evaluator.seeds))
    result = CalibrationResult(run_dir=writer.path, params=fitted, loss=float(evaluation.loss[0]), set_flags=flags,
                               evaluations=found["evaluations"], fit=rows, baselines=summary)
    writer.result(result, with_overrides(scenario, flags), found["curve"])
    return result


def _metric_row(j: int, target, evaluation, seeds: int) -> dict[str, Any]:
    mean, var = float(evaluation.metric_mean[0, j]), float(evaluation.metric_var[0, j])
    count = int(evaluation.metric_count[0, j]) if evaluation.metric_count is not None else seeds
    mc_se = math.sqrt(var / count) if count > 1 else 0.0
    if target.se is not None:
        half = 1.96 * target.se
        within = abs(mean - target.value) <= 1.96 * math.sqrt(target.se ** 2 + mc_se ** 2)
    else:
        half = target.tolerance
        within = abs(mean - target.value) <= target.tolerance
    name = f"metrics[{j}] {target.metric}/{target.group}" + (f"/{target.dimension}" if target.dimension else "") \
        + (f"@{target.step}" if target.step is not None else "")
    return {"target": name, "predictor": "model", "dimension": target.dimension or "", "value": mean,
            "ci_low": mean - 1.96 * mc_se, "ci_high": mean + 1.96 * mc_se, "target_value": target.value,
            "target_low": target.value - half, "target_high": target.value + half, "within": bool(within)}


def _trajectory_fit(evaluator: Evaluator, values, obs, scenario) -> tuple[list[dict], dict[str, float]]:
    simulation = evaluator.simulation(values[None])
    plain, debiased, (sq, count) = trajectory_errors(simulation, obs, 1, evaluator.seeds)
    network = simulation.world.network
    unit = units(network)
    base = baselines(obs, network)
    predictors = {"model": (sq[0], count), **{k: v for k, v in base.items() if k != "degroot_fitted_step"}}
    dims = list(scenario.spec.values.dimensions)
    rows = []
    for name, (err, cnt) in predictors.items():
        for d, dim in [(None, "all"), *enumerate(dims)]:
            mse, low, high = mse_interval(err, cnt, unit, d)
            rows.append({"target": f"trajectories ({obs.loss})", "predictor": name, "dimension": dim, "value": mse,
                         "ci_low": low, "ci_high": high, "target_value": math.nan, "target_low": math.nan,
                         "target_high": math.nan, "within": True})
    summary = {"model_mse": float(plain[0]), "model_mse_expected": float(debiased[0])}
    for name in ("persistence", "degroot", "degroot_fitted"):
        err, cnt = base[name]
        summary[f"{name}_mse"] = mse_interval(err, cnt, unit)[0]
        diff = mse_interval(sq[0], count, unit, minus=err)
        summary[f"model_minus_{name}"], summary[f"model_minus_{name}_low"], summary[f"model_minus_{name}_high"] = diff
    summary["degroot_fitted_step"] = float(base["degroot_fitted_step"])
    return rows, summary


class _Writer:
    """The calibration directory, written through the run log's atomic writes."""

    def __init__(self, path: Path, scenario, searched, targets, settings: dict[str, Any]):
        from ..runs.runlog import git_commit, utc_now, versions

        self.path = path
        self.manifest = {
            "kind": "calibration", "status": "running", "scenario": scenario.name, "seed": scenario.spec.seed,
            "worlds": settings["swarm"] * settings["seeds"], "steps": scenario.spec.steps, **settings,
            "params": [{"key": p.key, "low": p.low, "high": p.high, "how": p.kind} for p in searched],
            "trajectories": targets.trajectories.file if targets.trajectories else None,
            "metric_targets": len(targets.metrics), "versions": versions(), "git_commit": git_commit(),
            "started": utc_now(), "ended": None}
        self._write_manifest()

    def _write_manifest(self) -> None:
        from ..runs.runlog import atomic_write_bytes

        atomic_write_bytes(self.path / "manifest.json", json.dumps(self.manifest, indent=2, default=str).encode())

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        from ..runs.runlog import atomic_write_table

        atomic_write_table(self.path / f"{name}.parquet", pa.Table.from_pylist(rows))

    def result(self, result: CalibrationResult, scenario, curve) -> None:
        from ..runs.runlog import atomic_write_bytes

        atomic_write_bytes(self.path / "scenario.yaml", scenario.to_yaml().encode())
        self.table("fit", result.fit)
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in result.fit]  # strict JSON has no NaN
        data = {"params": result.params, "loss": result.loss, "set_flags": result.set_flags,
                "evaluations": result.evaluations, "baselines": result.baselines, "fit": rows}
        atomic_write_bytes(self.path / "fit.json", json.dumps(data, indent=2, default=_json).encode())
        from .plot import plot_fit

        plot_fit(self.path / "fit.png", curve, result.fit)
        self.manifest.update(fitted=result.params, loss=result.loss, set_flags=result.set_flags)

    def finish(self, status: str, error: str | None = None) -> None:
        from ..runs.runlog import utc_now

        self.manifest.update(status=status, ended=utc_now(), **({"error": error} if error else {}))
        self._write_manifest()


def _json(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)
