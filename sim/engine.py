"""The one batched world engine.

A :class:`Simulation` is a scenario built into tensors with a leading world
axis B; the same step serves a single run, B replicates, a sweep, Shapley
coalitions and RL environments. This docstring is the single place the step
is written down. A step, in order:

1. **Who interacts.** Under the ``influence`` protocol (the only one so far)
   a pairwise dynamics draws its own pairs, because the sequential model it
   reproduces draws pair and outcome together (``sim.pairing``); a
   synchronous dynamics takes every agent's neighbourhood.
2. **Expression.** Each group's policy produces what its agents show,
   ``expressed[B, N, K]``. Agents whose policy shows their own current values
   (``honest``) are read live by the dynamics, so nothing is computed for them.
   An LLM group sends one batch for all its agents that speak, in all worlds.
3. **Dynamics.** The scenario's dynamics update the internal values, in the
   order listed. Zealots are held fixed.
4. **Alignment rules** update AI groups' values (none are defined yet). Policies
   that measure their own agents (an LLM persona's questionnaire, when due)
   write the measured values in; they also do so once when the world is built.
5. **Metrics** observe (the runner asks at ``log_every``; the run log records
   metrics, value snapshots and the policies' events).
6. **Stop conditions**: the runner stops at ``steps``, or once no value moved
   more than ``stop.tolerance`` in a step in every world.

Nothing here knows about files or the terminal; ``sim.runner`` does the logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import registry
from .contracts import NetworkRequest, PolicyOutput, Reading
from .errors import ScenarioError, ValuesimError
from .llm import BudgetExhausted
from .network import build_network, edges_to_network
from .population import agent_params, initial_values, layout
from .rng import Generators
from .scenario import Scenario, instantiate
from .schema import PluginRef
from .state import State, World


class StepError(Exception):
    """A plugin raised inside a step; says which plugin and which step."""


@dataclass
class Simulation:
    """A built scenario: the world, its state, the plugins and the generators."""

    scenario: Scenario
    world: World
    state: State
    generators: Generators
    dynamics: list[tuple[str, Any]]
    policies: list[tuple[str, Any]]  # one per group, in group order
    metrics: list[tuple[str, Any]]
    metric_carry: list[Any]
    # Events the policies reported since the runner last took them (LLM exchanges, ...).
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, scenario: Scenario, *, worlds: int | None = None, device: str | torch.device = "cpu",
              seed: int | None = None, network: np.ndarray | None = None,
              context: dict[str, Any] | None = None, measure: bool = True) -> "Simulation":
        """Build the world of ``scenario`` (B = ``worlds`` or the scenario's ``worlds``) on ``device``.

        ``network`` (an ``[E, 2]`` edge array) replaces the scenario's network,
        for benchmarks that give several tools the very same graph.
        ``context`` carries run-level services to plugins (``world.context``):
        the LLM response cache and its mode. ``measure=False`` skips the
        policies' start-of-run measurements (questionnaires put to a model), for
        checking a scenario without calling anything.
        """
        device = _device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ScenarioError("--device cuda was asked for, but this torch build sees no CUDA device "
                                "(see the README for installing a CUDA build of torch)")
        spec = scenario.spec
        b = worlds or spec.worlds
        gens = Generators.from_seed(spec.seed if seed is None else seed, device)
        groups = layout(scenario)
        n = groups[-1].stop
        if network is None:
            net = _scenario_network(scenario, groups, gens.network_seed)
        else:
            net = edges_to_network(n, network)
        init = initial_values(scenario, b, gens.population)
        params = agent_params(scenario, b, gens.population)
        policies = [(g.policy.name, instantiate("policies", g.policy)) for g in spec.population]
        honest = torch.cat([torch.full((grp.size,), getattr(p, "expresses_own_values", False), dtype=torch.bool)
                            for grp, (_, p) in zip(groups, policies)])
        group_index = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([g.size for g in groups]))
        run_seed = spec.seed if seed is None else seed
        world = World(space=scenario.space, groups=groups, network=net.to(device), params=params.to(device),
                      initial=init.to(device), group_index=group_index.to(device), honest=honest.to(device),
                      context={"seed": run_seed, **(context or {})})
        state = State(values=world.initial.clone(), active=torch.ones((b, n), dtype=torch.bool, device=device))
        _prepare_policies(scenario, world, policies)
        dynamics = [(ref.name, instantiate("dynamics", ref)) for ref in spec.dynamics]
        _check_parameters_used(scenario, [d for _, d in dynamics])
        simulation = cls(scenario=scenario, world=world, state=state, generators=gens, dynamics=dynamics,
                   policies=policies,
                   metrics=[(ref.name, instantiate("metrics", ref)) for ref in spec.metrics],
                   metric_carry=[None] * len(spec.metrics))
        if measure:
            simulation._measure(at_build=True)
        return simulation

    # ------------------------------------------------------------------ stepping

    def step(self) -> None:
        """Advance every world by one step (see the module docstring)."""
        state, world = self.state, self.world
        before = state.values
        expressed = self._express()
        values = before
        for name, dynamics in self.dynamics:
            try:
                values = dynamics.apply(values, expressed, state, world, self.generators.dynamics)
            except BudgetExhausted:
                raise
            except Exception as exc:
                raise StepError(f"step {state.step + 1}: dynamics {name!r} raised "
                                f"{type(exc).__name__}: {exc}") from exc
        if bool(world.params.zealot.any()):
            values = torch.where(world.params.zealot[..., None], before, values)
        state.values = values
        state.step += 1
        self._note_convergence(before, values)
        self._measure(at_build=False)

    def advance(self, steps: int) -> None:
        """Run ``steps`` steps without observing or logging."""
        for _ in range(steps):
            self.step()

    def _express(self) -> torch.Tensor:
        if bool(self.world.honest.all()):
            return self.state.values
        parts = []
        for group, (name, policy) in zip(self.world.groups, self.policies):
            parts.append(self._call_policy("express", name, policy, group))
        expressed = torch.cat(parts, dim=1)
        self.state.expressed = expressed
        return expressed

    def _call_policy(self, method: str, name: str, policy: Any, group) -> torch.Tensor | None:
        """Call a policy method, keep its events, and name the policy and step if it raises."""
        step = self.state.step + (1 if method == "express" else 0)
        try:
            out = getattr(policy, method)(self.state, self.world, group, self.generators.policies)
        except BudgetExhausted:
            raise
        except Exception as exc:
            raise StepError(f"step {step}: policy {name!r} of group {group.name!r} raised "
                            f"{type(exc).__name__}: {exc}") from exc
        if isinstance(out, PolicyOutput):
            self.events.extend({"step": step, "group": group.name, **e} for e in out.events)
            return out.expressed
        return out

    def _measure(self, at_build: bool) -> None:
        """Write what policies measure of their own agents (questionnaires) into the values."""
        for group, (name, policy) in zip(self.world.groups, self.policies):
            if not hasattr(policy, "measure"):
                continue
            measured = self._call_policy("measure", name, policy, group)
            if measured is None:
                continue
            values = self.state.values.clone()
            values[:, group.rows] = measured.to(values)
            self.state.values = values
            if at_build:  # the measured profile is where this agent starts
                initial = self.world.initial.clone()
                initial[:, group.rows] = measured.to(initial)
                self.world = replace(self.world, initial=initial)

    def _note_convergence(self, before: torch.Tensor, after: torch.Tensor) -> None:
        tol = self.scenario.spec.stop.tolerance
        if tol is None:
            return
        moved = (after - before).abs().amax(dim=(1, 2)).cpu()
        newly = (moved <= tol) & (self.state.converged_at < 0)
        self.state.converged_at[newly] = self.state.step

    @property
    def converged(self) -> bool:
        """Every world has had a step in which no value moved more than ``stop.tolerance``."""
        return self.scenario.spec.stop.tolerance is not None and bool((self.state.converged_at >= 0).all())

    # ------------------------------------------------------------------ observing

    def take_events(self) -> list[dict[str, Any]]:
        """The events reported since the last call, oldest first."""
        events, self.events = self.events, []
        return events

    def observe(self) -> list[Reading]:
        """Run every metric on the current state (updating their carries)."""
        readings: list[Reading] = []
        for index, (name, metric) in enumerate(self.metrics):
            try:
                out, self.metric_carry[index] = metric.observe(
                    self.state, self.world, self.metric_carry[index], self.generators.metrics)
            except Exception as exc:
                raise StepError(f"step {self.state.step}: metric {name!r} raised {type(exc).__name__}: {exc}") \
                    from exc
            readings.extend(out)
        return readings

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs beyond the scenario and seed (which rebuild the world)."""
        return {
            "step": self.state.step,
            "values": self.state.values.cpu(),
            "active": self.state.active.cpu(),
            "converged_at": self.state.converged_at.clone(),
            "expressed": None if self.state.expressed is None else self.state.expressed.cpu(),
            "generators": self.generators.state_dict(),
            "metric_carry": self.metric_carry,
            "fingerprint": self.fingerprint(),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap["fingerprint"] != self.fingerprint():
            raise ScenarioError("the checkpoint does not belong to this world (its initial values or network "
                                "differ: was a file the scenario reads changed?)")
        device = self.world.device
        expressed = snap.get("expressed")
        self.state = State(values=snap["values"].to(device), active=snap["active"].to(device), step=snap["step"],
                           converged_at=snap["converged_at"],
                           expressed=None if expressed is None else expressed.to(device))
        self.generators.load_state_dict(snap["generators"])
        self.metric_carry = snap["metric_carry"]

    def fingerprint(self) -> list[float]:
        """A cheap checksum of the built world, to refuse resuming onto a different one."""
        w = self.world
        return [float(w.initial.double().sum()), float(w.network.col.double().sum()), float(w.n), float(w.b)]


def _prepare_policies(scenario: Scenario, world: World, policies) -> None:
    """Let each policy refuse a world it cannot serve (optional ``prepare``), as a scenario error."""
    for i, (group, (name, policy)) in enumerate(zip(world.groups, policies)):
        prepare = getattr(policy, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare(world, group)
        except ScenarioError as exc:
            if exc.location is not None:
                raise
            raise scenario.error(f"population[{i}].policy", f"{name}: {exc}") from None
        except (ValueError, ValuesimError) as exc:  # a policy or its backend refusing this world
            raise scenario.error(f"population[{i}].policy", f"{name}: {exc}") from None


def _device(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ScenarioError(f"must be cpu, cuda or cuda:<index>, got {str(name)!r}", location="--device")
    return device


def _scenario_network(scenario: Scenario, groups, seed: int):
    spec = scenario.spec.network
    generator = instantiate("networks", PluginRef(name=spec.generator, params=spec.params))
    request = NetworkRequest(n=groups[-1].stop, groups=groups, seed=seed, base_dir=scenario.base_dir)
    try:
        return build_network(generator, request)
    except ScenarioError as exc:
        if exc.location is None and exc.path:
            raise scenario.error(exc.path, exc.message) from None
        raise


def _check_parameters_used(scenario: Scenario, dynamics: list[Any]) -> None:
    """A per-agent parameter set in the scenario but read by no listed dynamics is an error."""
    used = set()
    for plugin in dynamics:
        used.update(getattr(plugin, "uses", ()))
    for i, group in enumerate(scenario.spec.population):
        for name in ("confidence", "rate", "anchoring"):
            # a resolved scenario spells out every default, so only a value away from it counts as set
            if getattr(group, name) != type(group).model_fields[name].default and name not in used:
                users = [n for n in registry.names("dynamics") if name in getattr(registry.get("dynamics", n),
                                                                                  "uses", ())]
                raise scenario.error(
                    f"population[{i}].{name}",
                    f"is set, but no listed dynamics uses it (add one of: {', '.join(users)})")
