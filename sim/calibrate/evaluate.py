"""Evaluating candidates: every candidate a set of worlds of one batch, compared on common random numbers.

Candidate c of a batch of C is worlds ``c*R .. c*R+R-1``, on streams
``0..R-1``: every candidate meets the same pair draws and the same initial
values, so differences in loss are differences of parameters, not of luck.
Per-world keys reach the worlds through ``set_params`` / ``vary_policy`` /
``vary_protocol``; candidates that differ in a per-batch key are batches of
their own (see :mod:`.params`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config.build import build_simulation
from ..config.population import agent_params
from ..core.rng import Streams
from ..errors import ScenarioError
from .params import Parameter, with_overrides
from .targets import MetricTarget, Observed, Targets


@dataclass
class Evaluation:
    """The loss of each candidate and, per candidate, each target's simulated mean and its variance over seeds."""

    loss: np.ndarray  # [C]; inf where the candidate is not a valid scenario
    metric_mean: np.ndarray  # [C, M]
    metric_var: np.ndarray  # [C, M] (over the R seeds, unbiased)
    trajectory: np.ndarray  # [C]: the trajectories term (debiased MSE)
    trajectory_plain: np.ndarray  # [C]: MSE of the mean prediction over R seeds
    invalid: dict[int, str] = field(default_factory=dict)  # candidate -> why
    # [C, M]: the seeds whose world defines the reading (R, but fewer for a reading that is NaN in some
    # worlds by design: a decision trial's per-domain reading in a world that decides in another domain)
    metric_count: np.ndarray | None = None


class Evaluator:
    """Loss of candidates (values of the searched parameters) on ``seeds`` common streams."""

    def __init__(self, scenario, params: list[Parameter], targets: Targets, seeds: int, device: str = "cpu"):
        if seeds < 1:
            raise ScenarioError(f"must be at least 1, got {seeds}", location="--seeds")
        self.scenario, self.params, self.targets = scenario, params, targets
        self.seeds, self.device = seeds, device
        self.horizon = max([scenario.spec.steps if t.step is None else t.step for t in targets.metrics] or [0])
        self._cache: dict[tuple, Any] = {}
        self._readings = self._check_metric_targets() if targets.metrics else []

    # ------------------------------------------------------------------ public

    def evaluate(self, values: np.ndarray) -> Evaluation:
        """``values`` [C, d] in the parameters' own units -> an :class:`Evaluation`."""
        c, m = len(values), len(self.targets.metrics)
        out = Evaluation(loss=np.full(c, np.inf), metric_mean=np.full((c, m), np.nan),
                         metric_var=np.full((c, m), np.nan), trajectory=np.full(c, np.nan),
                         trajectory_plain=np.full(c, np.nan), metric_count=np.zeros((c, m), dtype=np.int64))
        batch_keys = [i for i, p in enumerate(self.params) if p.kind == "batch"]
        groups: dict[tuple, list[int]] = {}
        for index, row in enumerate(values):
            groups.setdefault(tuple(row[i] for i in batch_keys), []).append(index)
        for key, members in groups.items():
            flags = [self.params[i].flag(v) for i, v in zip(batch_keys, key)]
            try:
                scenario = with_overrides(self.scenario, flags) if flags else self.scenario
                self._evaluate_batch(scenario, values[members], members, out)
            except ScenarioError as exc:
                for member in members:
                    out.invalid[member] = str(exc)
        return out

    def simulation(self, values: np.ndarray):
        """A built batch of ``len(values)`` candidates x R seeds with their parameters set (all in one batch)."""
        flags = [p.flag(v) for p, v in zip(self.params, values[0]) if p.kind == "batch"]
        scenario = with_overrides(self.scenario, flags) if flags else self.scenario
        return self._build(scenario, values, cache=False)

    # ------------------------------------------------------------------ one batch

    def _evaluate_batch(self, scenario, values: np.ndarray, members: list[int], out: Evaluation) -> None:
        simulation = self._build(scenario, values, cache=self.targets.trajectories is not None
                                 and not self.targets.metrics)
        terms, weights = [], []
        c = len(values)
        if self.targets.trajectories is not None:
            obs = self.targets.trajectories
            plain, debiased, _ = trajectory_errors(simulation, obs, c, self.seeds)
            out.trajectory[members], out.trajectory_plain[members] = debiased, plain
            terms.append(debiased)
            weights.append(obs.weight)
        if self.targets.metrics:
            if self.targets.trajectories is not None:  # the trajectories moved the batch: start it afresh
                simulation = self._build(scenario, values, cache=False)
            mean, var, count = self._metric_readings(simulation, c)
            out.metric_mean[members], out.metric_var[members], out.metric_count[members] = mean, var, count
            for j, target in enumerate(self.targets.metrics):
                if not bool((count[:, j] > 0).all()):
                    raise self.targets.error(("metrics", j), f"{target.metric} for {target.group}"
                                             f"{'/' + target.dimension if target.dimension else ''} is NaN in "
                                             f"every one of the {self.seeds} seeds' worlds (try more --seeds)")
                z = (mean[:, j] - target.value) ** 2 - var[:, j] / count[:, j]
                terms.append(z / target.scale ** 2)
                weights.append(target.weight)
        weights = np.asarray(weights)
        out.loss[members] = (np.stack(terms, axis=1) * weights).sum(axis=1) / weights.sum()

    def _build(self, scenario, values: np.ndarray, cache: bool):
        c, r = len(values), self.seeds
        streams = [s for _ in range(c) for s in range(r)]
        key = (scenario.to_yaml(), c)
        if cache and key in self._cache:
            simulation = self._cache[key]
        else:
            simulation = build_simulation(scenario, streams=streams, device=self.device)
            if cache:
                self._cache = {key: simulation}
        self._set_agents(scenario, simulation, values)
        self._set_policies(simulation, values)
        self._set_protocols(simulation, values)
        return simulation

    def _set_agents(self, scenario, simulation, values: np.ndarray) -> None:
        agents = [i for i, p in enumerate(self.params) if p.kind == "agents"]
        if not agents:
            return
        streams = Streams.of(scenario.spec.seed, list(range(self.seeds))).at(-1)
        fields: dict[str, list[torch.Tensor]] = {}
        for row in values:
            candidate = with_overrides(scenario, [self.params[i].flag(row[i]) for i in agents])
            drawn = agent_params(candidate, streams)
            for name in ("confidence", "rate", "anchoring", "zealot"):
                fields.setdefault(name, []).append(getattr(drawn, name).expand(self.seeds, -1))
        simulation.set_params(**{name: torch.cat(parts) for name, parts in fields.items()})

    def _set_policies(self, simulation, values: np.ndarray) -> None:
        by_group: dict[str, list[int]] = {}
        for i, p in enumerate(self.params):
            if p.kind == "policy":
                by_group.setdefault(p.group, []).append(i)
        for group, indices in by_group.items():
            per_world = []
            for row in values:
                overrides = {self.params[i].path[-1]: _number(self.params[i], row[i]) for i in indices}
                per_world += [overrides] * self.seeds
            try:
                simulation.vary_policy(group, per_world)
            except ValueError as exc:
                raise ScenarioError(str(exc), location="--param") from None

    def _set_protocols(self, simulation, values: np.ndarray) -> None:
        by_protocol: dict[str, list[int]] = {}
        for i, p in enumerate(self.params):
            if p.kind == "protocol":
                by_protocol.setdefault(p.protocol, []).append(i)
        for protocol, indices in by_protocol.items():
            per_world = []
            for row in values:
                per_world += [{self.params[i].field: float(row[i]) for i in indices}] * self.seeds
            try:
                simulation.vary_protocol(protocol, per_world)
            except ValueError as exc:
                raise ScenarioError(str(exc), location="--param") from None

    # ------------------------------------------------------------------ metric targets

    def _check_metric_targets(self) -> list[tuple[str, int, int]]:
        """Each metric target's (reading, scope index, dimension index), checked on a probe world."""
        probe = build_simulation(self.scenario, worlds=1, device=self.device, measure=False)
        readings = {r.metric: r for r in probe.observe()}
        found = []
        for i, target in enumerate(self.targets.metrics):
            reading = readings.get(target.metric)
            if reading is None:
                raise self.targets.error(("metrics", i, "metric"), _unknown("reading", target.metric, readings,
                                                                             "the scenario's metrics write"))
            if target.group not in reading.scopes:
                raise self.targets.error(("metrics", i, "group"), _unknown("group", target.group, reading.scopes,
                                                                            f"{target.metric} is read for"))
            dims = [d for d in reading.dimensions]
            if target.dimension is None and len(dims) > 1:
                raise self.targets.error(("metrics", i), f"{target.metric} is read per dimension: give a dimension "
                                                         f"({', '.join(map(str, dims))})")
            if target.dimension is not None and dims == [None]:
                raise self.targets.error(("metrics", i, "dimension"), f"{target.metric} is not read per dimension: "
                                                                      "leave dimension out")
            if target.dimension is not None and target.dimension not in dims:
                raise self.targets.error(("metrics", i, "dimension"), _unknown(
                    "dimension", target.dimension, [d for d in dims if d], f"{target.metric} is read for"))
            found.append((target.metric, reading.scopes.index(target.group),
                          0 if target.dimension is None else dims.index(target.dimension)))
        return found

    def _metric_readings(self, simulation, c: int) -> tuple[np.ndarray, np.ndarray]:
        targets: list[MetricTarget] = self.targets.metrics
        at = [self.scenario.spec.steps if t.step is None else t.step for t in targets]
        got = np.full((c * self.seeds, len(targets)), np.nan)
        for step in range(self.horizon + 1):
            if step:
                simulation.step()
            if step == 0 or step in at:
                readings = {r.metric: r for r in simulation.observe()}
                for j, (name, scope, dim) in enumerate(self._readings):
                    if at[j] == step:
                        got[:, j] = readings[name].value[:, scope, dim].double().cpu().numpy()
        got = got.reshape(c, self.seeds, len(targets))
        # a reading NaN in a world is not defined there (see Evaluation.metric_count): averaged over the rest
        defined = ~np.isnan(got)
        count = defined.sum(axis=1)
        total = np.where(defined, got, 0.0).sum(axis=1)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        sq = np.where(defined, (got - mean[:, None]) ** 2, 0.0).sum(axis=1)
        var = np.where(count > 1, sq / np.maximum(count - 1, 1), 0.0)
        return mean, var, count


def trajectory_errors(simulation, obs: Observed, c: int, r: int):
    """Squared errors of the simulated against the observed trajectories, candidate by candidate.

    Returns ``plain`` [C] (MSE of the mean prediction over the R seeds),
    ``debiased`` [C] (that less the seeds' variance over R: an unbiased
    estimate of the MSE of the model's expected prediction) and ``per_agent``,
    the mean prediction's squared error summed per agent and dimension over
    the steps, [C, N, K], with the count of observations per agent [N].
    """
    device = simulation.world.device
    values = torch.as_tensor(obs.values, device=device)
    seen = torch.as_tensor(obs.seen, device=device)
    b, n, k = simulation.state.values.shape
    state = simulation.state
    first = torch.where(seen[0][None, :, None], values[0][None], state.values)
    simulation.world = _with_initial(simulation.world, first)
    state.values = first.contiguous()
    state.world_step = torch.full_like(state.world_step, int(obs.steps[0]))
    sq = torch.zeros((c, n, k), dtype=torch.float64, device=device)
    var_sum = torch.zeros((c,), dtype=torch.float64, device=device)
    count = torch.zeros(n, dtype=torch.float64, device=device)
    for t in range(1, len(obs.steps)):
        if obs.loss == "one_step" and t > 1:  # restart from what was observed at the snapshot before
            state.values = torch.where(seen[t - 1][None, :, None], values[t - 1][None], state.values).contiguous()
            state.world_step = torch.full_like(state.world_step, int(obs.steps[t - 1]))
        simulation.advance(int(obs.steps[t] - obs.steps[t - 1]))
        pred = state.values.double().reshape(c, r, n, k)
        mask = seen[t].double()
        mean = pred.mean(dim=1)
        sq += (mean - values[t].double()[None]) ** 2 * mask[None, :, None]
        if r > 1:
            var_sum += (pred.var(dim=1) * mask[None, :, None]).sum(dim=(1, 2))
        count += mask
    total = float(count.sum()) * k
    plain = (sq.sum(dim=(1, 2)) / total).cpu().numpy()
    debiased = plain - (var_sum / total / r).cpu().numpy()
    return plain, debiased, (sq.cpu().numpy(), count.cpu().numpy())


def _with_initial(world, initial: torch.Tensor):
    from dataclasses import replace

    return replace(world, initial=initial.to(world.initial.dtype))


def _number(param: Parameter, value: float):
    return int(value) if param.integer else float(value)


def _unknown(what: str, given: str, known, context: str) -> str:
    import difflib

    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(given), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {given!r}{hint} ({context}: {', '.join(known)})"
