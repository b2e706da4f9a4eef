"""What a calibration fits: a targets file (YAML) of metric values and/or observed value trajectories.

```yaml
metrics:                       # values a metric should read, as a published table gives them
  - metric: variance           # a reading name, as in metrics.parquet's ``metric`` column
    group: all                 # a group name or all (default all)
    dimension: security        # for a per-dimension reading (default: the reading's only dimension)
    step: 50                   # the step it is read at (default: the scenario's last step)
    value: 0.021
    se: 0.002                  # its standard error, or ``tolerance: 0.005``: one of the two
    weight: 1                  # its weight in the loss (default 1)
trajectories:                  # observed values of agents over time
  file: observed.parquet       # .parquet or .csv: agent, step, one column per value dimension
  loss: one_step               # one_step (default) or free_run
  weight: 1
```

Paths are relative to the targets file. Agents are the scenario's agent
indices (0..N-1, in group order); an observed file may hold any subset of
agents and steps (at least two steps).

The loss of a candidate is the weighted mean of its terms, each an unbiased
estimate (over the R seeds) of the squared error of the model's *expected*
outcome: for a metric, ((mean - value) / scale)^2 - var / (R scale^2), with
scale the standard error or the tolerance; for trajectories, the mean squared
error of the mean prediction over every observed agent, dimension and step,
less the seeds' variance over R. ``one_step`` predicts each observed snapshot
from the one before it (the model restarted from what was observed, as the
value-change study predicted each user's next values); ``free_run`` starts
from the first snapshot and never looks at the data again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import ValidationError, model_validator

from ..core.contracts import Strict
from ..core.interval import Interval
from ..errors import ScenarioError

Positive = Annotated[float, Interval(gt=0)]


class MetricTarget(Strict):
    """A value one metric reading should take."""

    metric: str
    group: str = "all"
    dimension: str | None = None
    step: Annotated[int, Interval(ge=0)] | None = None
    value: float
    se: Positive | None = None
    tolerance: Positive | None = None
    weight: Positive = 1.0

    @model_validator(mode="after")
    def _one_scale(self) -> "MetricTarget":
        if (self.se is None) == (self.tolerance is None):
            raise ValueError("give exactly one of se or tolerance")
        return self

    @property
    def scale(self) -> float:
        return float(self.se if self.se is not None else self.tolerance)


class TrajectoryTarget(Strict):
    """Observed value trajectories and the loss they are fitted with."""

    file: str
    loss: Literal["one_step", "free_run"] = "one_step"
    weight: Positive = 1.0


class TargetsSpec(Strict):
    metrics: list[MetricTarget] = []
    trajectories: TrajectoryTarget | None = None

    @model_validator(mode="after")
    def _something(self) -> "TargetsSpec":
        if not self.metrics and self.trajectories is None:
            raise ValueError("give metrics, trajectories or both")
        return self


@dataclass(frozen=True)
class Observed:
    """Observed trajectories as tensors: ``steps`` [T] (sorted), ``values`` [T, N, K], ``seen`` [T, N] bool."""

    file: str
    steps: np.ndarray
    values: np.ndarray
    seen: np.ndarray
    loss: str
    weight: float


@dataclass(frozen=True)
class Targets:
    """A loaded targets file: its metric targets, its observed trajectories, and where each came from."""

    name: str
    metrics: list[MetricTarget]
    trajectories: Observed | None
    lines: dict  # path tuple -> line, for errors found later (a reading the scenario does not write)

    def locate(self, path: tuple) -> str:
        for cut in range(len(path), -1, -1):
            if tuple(path[:cut]) in self.lines:
                return f"{self.name}:{self.lines[tuple(path[:cut])]}"
        return self.name

    def error(self, path: tuple, message: str) -> ScenarioError:
        from ..config.yamlsource import format_path

        return ScenarioError(message, location=self.locate(path), path=format_path(path))


def load_targets(path: str | Path, scenario) -> Targets:
    """Read and check a targets file against ``scenario`` (its steps, agents and dimensions)."""
    from ..config.scenario import _scenario_error
    from ..config.yamlsource import read_yaml

    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"targets file not found: {path}", location="--targets")
    source = read_yaml(path)
    if not isinstance(source.data, dict):
        raise ScenarioError("a targets file must be a mapping with metrics and/or trajectories",
                            location=source.locate(()))
    try:
        spec = TargetsSpec.model_validate(source.data)
    except ValidationError as exc:
        raise _scenario_error(exc, source, ()) from None
    targets = Targets(name=str(path), metrics=list(spec.metrics), trajectories=None, lines=source.lines)
    steps = scenario.spec.steps
    for i, target in enumerate(spec.metrics):
        if target.step is not None and target.step > steps:
            raise targets.error(("metrics", i, "step"), f"must be at most the scenario's steps ({steps}), "
                                                        f"got {target.step}")
    if spec.trajectories is not None:
        if scenario.spec.network.independent:  # the observed agents lived on one graph; the baselines need it
            raise targets.error(("trajectories",), "observed trajectories are fitted on one network, but the "
                                "scenario has network.independent: true (a graph per world); set it to false")
        observed = read_observed(path.parent / spec.trajectories.file, spec.trajectories, scenario,
                                 targets, source.data["trajectories"]["file"])
        targets = Targets(name=targets.name, metrics=targets.metrics, trajectories=observed, lines=targets.lines)
    return targets


def read_observed(file: Path, spec: TrajectoryTarget, scenario, targets: Targets, named: str) -> Observed:
    """An observed-trajectories file as tensors; a bad row is an error naming the file and its line."""
    import pandas as pd

    where = ("trajectories", "file")
    if not file.is_file():
        raise targets.error(where, f"file not found: {named} (resolved to {file})")
    if file.suffix not in (".csv", ".parquet"):
        raise targets.error(where, f"must be a .csv or .parquet file, got {named}")
    try:
        frame = pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
    except Exception as exc:  # an unreadable data file: say which and why
        raise targets.error(where, f"cannot read {named}: {type(exc).__name__}: {exc}") from None
    dims = list(scenario.spec.values.dimensions)
    missing = [c for c in ("agent", "step", *dims) if c not in frame.columns]
    if missing:
        raise ScenarioError(f"missing column(s) {', '.join(missing)} (an observed file has agent, step and one "
                            f"column per dimension: {', '.join(dims)}; it has {', '.join(map(str, frame.columns))})",
                            location=str(file))
    n = scenario.spec.num_agents
    row = _row_namer(file)
    for column, low, high, integer in (("agent", 0, n - 1, True), ("step", 0, scenario.spec.steps, True),
                                       *((d, 0.0, 1.0, False) for d in dims)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values < low) | (values > high)
        if integer:
            bad |= np.isfinite(values) & (values != np.round(values))
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            allowed = (f"an agent index in [0, {n})" if column == "agent" else
                       f"a step in [0, {high}] (the scenario's steps)" if column == "step" else "a number in [0, 1]")
            given = frame[column].iloc[at]
            given = repr(given) if isinstance(given, str) else str(given)
            raise ScenarioError(f"{column}: must be {allowed}, got {given}", location=row(at))
    agent = frame["agent"].to_numpy().astype(np.int64)
    step = frame["step"].to_numpy().astype(np.int64)
    dup = pd.DataFrame({"a": agent, "s": step}).duplicated().to_numpy()
    if dup.any():
        at = int(np.flatnonzero(dup)[0])
        raise ScenarioError(f"agent {agent[at]} at step {step[at]} is observed twice", location=row(at))
    steps = np.unique(step)
    if steps.size < 2:
        raise ScenarioError(f"needs at least two observed steps to fit a change, got {steps.size}",
                            location=str(file))
    values = np.zeros((steps.size, n, len(dims)), dtype=np.float32)
    seen = np.zeros((steps.size, n), dtype=bool)
    at = np.searchsorted(steps, step)
    values[at, agent] = frame[dims].to_numpy(dtype=np.float32)
    seen[at, agent] = True
    return Observed(file=str(file), steps=steps, values=values, seen=seen, loss=spec.loss, weight=spec.weight)


def _row_namer(file: Path):
    """``file:line`` of data row i (a CSV's header is line 1), or ``file row i`` for Parquet."""
    if file.suffix == ".csv":
        return lambda i: f"{file}:{i + 2}"
    return lambda i: f"{file} row {i + 1}"
