"""A simulation as a coalition game: every coalition x replicate is a world of one batch.

The worth v_r(S) is a metric of the scenario (one number per world: a reading, a scope, a dimension;
at the end, averaged over the run or at a step, or its change within each of W windows) in replicate r,
in a world where the players in S act by their own policy and the agents of the other players take the
**null**:

- ``absent``: they are not in the world (``state.active``): never matched, never heard, not counted;
- ``noop``: present but showing nothing new: they express their initial values (baseline policy
  ``zealot``) and their values do not move (per-world zealots);
- ``baseline:POLICY``: they act by POLICY (e.g. ``honest`` in place of a manipulator); ``baseline``
  alone uses each group's own ``baseline:`` field of the scenario.

Replicate r of every coalition runs on random stream r (common random numbers), so worlds of two
coalitions differ only through the players that differ; ``common_random_numbers=False`` gives every
world a stream of its own instead (for comparison). The grand coalition's world in replicate r is the
plain run of stream r. Worlds are cut into chunks of at most ``batch`` worlds, each built and run as one
batch by an executor (:mod:`sim.shapley.executors`). Every world runs the scenario's ``steps`` (a
``stop.tolerance`` does not end it early); the metric is observed at the run log's cadence (step 0, every
``log_every`` steps, the last step) plus the steps the worth needs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from .. import registry
from ..config.build import build_simulation
from ..config.scenario import Scenario, scenario_from_dict, scenario_from_yaml
from ..errors import PluginError, ScenarioError
from .executors import Executor, LocalExecutor
from .players import Player, player_masks

NULLS = ("absent", "noop", "baseline")


@dataclass(frozen=True)
class Null:
    """What a player outside the coalition does: ``absent``, ``noop`` or ``baseline`` (with ``policy`` or
    the scenario's baselines when None)."""

    kind: str
    policy: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Null":
        kind, _, policy = str(text).partition(":")
        if kind not in NULLS or (policy and kind != "baseline"):
            raise ScenarioError(f"must be absent, noop, baseline or baseline:POLICY, got {text!r}", location="--null")
        if policy:
            installed = registry.names("policies")
            if policy not in installed:
                close = difflib.get_close_matches(policy, installed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ScenarioError(f"unknown policy {policy!r}{hint} (installed: {', '.join(installed)})",
                                    location="--null")
        return cls(kind, policy or None)

    @property
    def label(self) -> str:
        return f"baseline:{self.policy}" if self.policy else self.kind


@dataclass(frozen=True)
class Worth:
    """Which number of a world is its worth: ``metric[:scope[:dimension]]`` at ``at`` or per window."""

    metric: str
    scope: str = "all"
    dimension: str | None = None
    at: str | int = "final"
    windows: int | None = None

    @classmethod
    def parse(cls, text: str, at: str | int = "final", windows: int | None = None) -> "Worth":
        parts = str(text).split(":")
        if not parts[0] or len(parts) > 3:
            raise ScenarioError(f"must be METRIC[:GROUP[:DIMENSION]], got {text!r}", location="--metric")
        at = _parse_at(at)
        if windows is not None:
            if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
                raise ScenarioError(f"must be an integer >= 1, got {windows!r}", location="--windows")
            if at != "final":
                raise ScenarioError(f"windows measure the change within each window up to the last step; "
                                    f"--at {at} does not combine with them", location="--windows")
        return cls(parts[0], parts[1] if len(parts) > 1 and parts[1] else "all",
                   parts[2] if len(parts) > 2 and parts[2] else None, at, windows)

    @property
    def label(self) -> str:
        return ":".join([self.metric, self.scope] + ([self.dimension] if self.dimension else []))

    def check_steps(self, steps: int) -> None:
        if isinstance(self.at, int) and not 0 <= self.at <= steps:
            raise ScenarioError(f"must be final, mean or a step in [0, {steps}], got {self.at}", location="--at")
        if self.windows is not None and self.windows > steps:
            raise ScenarioError(f"must be at most the scenario's {steps} steps, got {self.windows}",
                                location="--windows")

    def boundaries(self, steps: int) -> list[int]:
        return [round(k * steps / self.windows) for k in range(self.windows + 1)]

    def outputs(self, steps: int) -> tuple[str, ...]:
        if self.windows is not None:
            edges = self.boundaries(steps)
            return tuple(f"{a}-{b}" for a, b in zip(edges, edges[1:]))
        return (self.at if isinstance(self.at, str) else f"step {self.at}",)

    def observation_steps(self, steps: int, log_every: int) -> list[int]:
        wanted = set(range(0, steps + 1, log_every)) | {steps}
        if isinstance(self.at, int):
            wanted.add(self.at)
        if self.windows is not None:
            wanted.update(self.boundaries(steps))
        return sorted(wanted)

    def reduce(self, series: np.ndarray, observed: list[int], steps: int, log_every: int) -> np.ndarray:
        """``series [W, T]`` at the ``observed`` steps -> worths ``[W, M]``."""
        column = {step: t for t, step in enumerate(observed)}
        if self.windows is not None:
            edges = [column[s] for s in self.boundaries(steps)]
            return np.stack([series[:, b] - series[:, a] for a, b in zip(edges, edges[1:])], axis=1)
        if self.at == "mean":
            cadence = [column[s] for s in sorted(set(range(0, steps + 1, log_every)) | {steps})]
            return series[:, cadence].mean(axis=1, keepdims=True)
        return series[:, [column[steps if self.at == "final" else self.at]]]


def _parse_at(at) -> str | int:
    if at in ("final", "mean"):
        return at
    try:
        step = int(str(at))
    except ValueError:
        raise ScenarioError(f"must be final, mean or a step number, got {at!r}", location="--at") from None
    if step < 0:
        raise ScenarioError(f"must be final, mean or a step number >= 0, got {at!r}", location="--at")
    return step


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to evaluate worlds (plain data, so it travels to Ray workers)."""

    scenario_yaml: str
    base_dir: str
    players: tuple[Player, ...]
    worth: Worth
    null: Null
    device: str
    edges: np.ndarray | None = None

    def scenario(self) -> Scenario:
        return _scenario_of(self.scenario_yaml, self.base_dir)


@lru_cache(maxsize=8)
def _scenario_of(text: str, base_dir: str) -> Scenario:
    return scenario_from_yaml(text, "<shapley scenario>", base_dir=base_dir)


def evaluate_worlds(plan: Plan, coalitions: np.ndarray, streams: np.ndarray) -> np.ndarray:
    """Worths ``[W, M]`` of worlds ``w``: coalition ``coalitions[w]`` ([W, P] bool) on stream ``streams[w]``."""
    scenario = plan.scenario()
    spec = scenario.spec
    simulation = build_simulation(scenario, streams=[int(s) for s in streams], device=plan.device,
                                  network=plan.edges)
    apply_coalitions(simulation, plan.players, plan.null, torch.as_tensor(coalitions, device=simulation.world.device))
    observed = plan.worth.observation_steps(spec.steps, spec.log_every)
    series, step = [], 0
    for target in observed:
        simulation.advance(target - step)
        step = target
        series.append(read_metric(simulation.observe(), plan.worth))
    worths = plan.worth.reduce(np.stack(series, axis=1), observed, spec.steps, spec.log_every)
    if not np.isfinite(worths).all():
        w = int(np.flatnonzero(~np.isfinite(worths).all(axis=1))[0])
        outside = [p.name for p, inside in zip(plan.players, coalitions[w]) if not inside]
        raise ScenarioError(f"{plan.worth.label} is undefined (NaN) in the world where {', '.join(outside) or 'no one'}"
                            f" {'is' if len(outside) == 1 else 'are'} {plan.null.label}: its scope has no agent "
                            "left there; choose a scope the players do not empty, or another null", location="--metric")
    return worths


def apply_coalitions(simulation, players: tuple[Player, ...], null: Null, coalitions: torch.Tensor) -> None:
    """Give every world its coalition: the agents of players outside it take the null."""
    masks = player_masks(list(players), simulation.world)  # [P, B or 1, N]
    left_out = ~coalitions.to(torch.bool)  # [B, P]
    if masks.shape[1] == 1:  # the same agents in every world: one [B, P] x [P, N] product, not a [P, B, N] pass
        outside = (left_out.to(torch.float32) @ masks[:, 0].to(torch.float32)) > 0
    else:
        outside = (masks & left_out.T[:, :, None]).any(dim=0)  # [B, N]
    state = simulation.state
    if null.kind == "absent":
        state.active = state.active & ~outside
        return
    state.own_policy = state.own_policy & ~outside
    if null.kind == "noop":
        zealot = simulation.world.params.zealot.expand(simulation.world.b, simulation.world.n)
        simulation.set_params(zealot=zealot | outside)


def read_metric(readings, worth: Worth) -> np.ndarray:
    """The worth's reading, scope and dimension: ``[B]`` float64."""
    for reading in readings:
        if reading.metric == worth.metric:
            scope = reading.scopes.index(worth.scope)
            column = 0 if worth.dimension is None else reading.dimensions.index(worth.dimension)
            return reading.value[:, scope, column].detach().to("cpu", torch.float64).numpy()
    raise ScenarioError(f"no metric wrote {worth.metric!r} in this step", location="--metric")


def prepare_scenario(scenario: Scenario, worth: Worth, null: Null) -> Scenario:
    """The scenario the worlds run: only the metric plugin the worth reads, and the null's baselines."""
    data = scenario.to_dict()
    data["metrics"] = [metric_plugin(scenario, worth.metric)]
    if null.kind == "noop" or null.policy:
        for group in data["population"]:
            group["baseline"] = "zealot" if null.kind == "noop" else null.policy
    try:
        return scenario_from_dict(data, base_dir=scenario.base_dir)
    except ScenarioError as exc:
        raise ScenarioError(f"the scenario with the null {null.label} does not validate: {exc.message}",
                            location="--null", path=exc.path) from None


def metric_plugin(scenario: Scenario, reading: str) -> Any:
    """The metric plugin (as a scenario entry) that writes ``reading``: one the scenario lists, else any
    installed one that declares it."""
    listed = [(ref.name, ref.as_yaml()) for ref in scenario.spec.metrics]
    installed = [(name, name) for name in registry.names("metrics") if name not in dict(listed)]
    known: list[str] = []
    for name, entry in listed + installed:
        try:
            writes = getattr(registry.get("metrics", name), "writes", None) or ()
        except PluginError:
            continue
        if reading in writes:
            return entry
        known.extend(writes)
    for name, entry in listed:  # a listed metric that does not declare what it writes: look at its readings
        try:
            writes = getattr(registry.get("metrics", name), "writes", None)
        except PluginError:
            continue
        if writes is None:
            probe = build_simulation(scenario, worlds=1, measure=False)
            if reading in [r.metric for r in probe.observe()]:
                return entry
    close = difflib.get_close_matches(reading, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ScenarioError(f"no metric writes {reading!r}{hint} (readings: {', '.join(sorted(set(known)))})",
                        location="--metric")


def check_worth(simulation, worth: Worth) -> None:
    """The scope and dimension exist for the metric (checked on a built world)."""
    reading = next((r for r in simulation.observe() if r.metric == worth.metric), None)
    if reading is None:
        raise ScenarioError(f"no metric wrote {worth.metric!r}", location="--metric")
    if worth.scope not in reading.scopes:
        raise ScenarioError(f"{worth.metric}: unknown scope {worth.scope!r} (scopes: {', '.join(reading.scopes)})",
                            location="--metric")
    dims = [d for d in reading.dimensions if d is not None]
    if worth.dimension is None and dims:
        raise ScenarioError(f"{worth.metric} has one value per dimension; name one: "
                            f"{worth.metric}:{worth.scope}:DIMENSION (dimensions: {', '.join(dims)})",
                            location="--metric")
    if worth.dimension is not None and worth.dimension not in dims:
        where = f"dimensions: {', '.join(dims)}" if dims else "it has no dimensions"
        raise ScenarioError(f"{worth.metric}: unknown dimension {worth.dimension!r} ({where})", location="--metric")


def _check_scope_survives(simulation, masks: torch.Tensor, worth: Worth) -> None:
    """With absent players the empty coalition must leave an agent in the worth's scope (else v is NaN)."""
    world = simulation.world
    scope = torch.ones(world.n, dtype=torch.bool, device=world.device)
    if worth.scope != "all":
        scope = torch.zeros_like(scope)
        scope[world.group(worth.scope).rows] = True
    left = (scope & ~masks.any(dim=0)).sum(dim=1)  # [B]
    if bool((left == 0).any()):
        raise ScenarioError(f"{worth.label}: every agent of scope {worth.scope!r} belongs to a player, so with "
                            "--null absent a coalition without them has no one to measure (the worth is undefined); "
                            "measure a scope of agents that are no player's, or use --null noop or baseline",
                            location="--metric")


class SimulationGame:
    """A scenario as a coalition game over ``players`` (see the module docstring)."""

    deterministic = False

    def __init__(self, scenario: Scenario, players: list[Player], worth: Worth, null: Null, *, replicates: int = 8,
                 batch: int | None = None, device: str = "cpu", executor: Executor | None = None,
                 common_random_numbers: bool = True, progress: Callable[[int], None] | None = None):
        spec = scenario.spec
        worth.check_steps(spec.steps)
        self.source = scenario
        self.scenario = prepare_scenario(scenario, worth, null)
        self.players = tuple(p.name for p in players)
        self.outputs = worth.outputs(spec.steps)
        self.replicates = replicates
        self.worth, self.null = worth, null
        self.common_random_numbers = common_random_numbers
        self.executor = executor or LocalExecutor()
        self.progress = progress
        check = build_simulation(self.scenario, streams=list(range(replicates)), device=device)
        masks = player_masks(players, check.world)  # every player has agents in every replicate; none shared
        check_worth(check, worth)
        if null.kind == "absent":
            _check_scope_survives(check, masks, worth)
        network = check.world.network
        edges = None  # per-world graphs (network.independent) are rebuilt by each batch, one per stream it holds
        if network.shared:  # the one graph is handed to every batch, not rebuilt by each
            edges = torch.stack([network.rows(), network.col], dim=1).cpu().numpy()
            edges = edges[edges[:, 0] < edges[:, 1]]
        self.plan = Plan(self.scenario.to_yaml(), str(self.scenario.base_dir), tuple(players), worth, null,
                         str(device), edges)
        k = self.scenario.space.dimensions
        self.batch = batch or default_batch(check.world.n, len(k))
        self.worlds_run = 0
        self._next_stream = 0

    def __call__(self, coalitions: np.ndarray, replicates: int) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool)
        c = coalitions.shape[0]
        rows = np.repeat(coalitions, replicates, axis=0)
        if self.common_random_numbers:
            streams = np.tile(np.arange(replicates), c)
        else:  # every world a stream no other world used
            streams = np.arange(self._next_stream, self._next_stream + c * replicates)
            self._next_stream += c * replicates
        size = -(-len(rows) // -(-len(rows) // self.batch))  # chunks of equal size, none over the batch
        chunks = [(self.plan, rows[i:i + size], streams[i:i + size]) for i in range(0, len(rows), size)]
        out = []
        for worths in self.executor.map(evaluate_worlds, chunks):
            out.append(worths)
            self.worlds_run += len(worths)
            if self.progress:
                self.progress(self.worlds_run)
        return np.concatenate(out).reshape(c, replicates, len(self.outputs))


def default_batch(n_agents: int, k: int) -> int:
    """Worlds per chunk: about 64 million value entries (a few GB of state in all), at most 4,096 worlds.

    Building a batch costs a fixed share of a second (populations, players, protocol state); large chunks
    spread it over more worlds, which at 10^4 agents is a fifth of the whole run with chunks of 512."""
    return int(max(1, min(4096, 64_000_000 // max(n_agents * k, 1))))
