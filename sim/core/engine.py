"""The one batched world engine.

A :class:`Simulation` is a scenario built into tensors with a leading world
axis B; the same step serves a single run, B replicates, a sweep, Shapley
coalitions and RL environments. This docstring is the single place the step
is written down. A step, in order:

1. **Who interacts.** Under the ``influence`` protocol (the only one so far)
   a pairwise dynamics draws its own pairs, because the sequential model it
   reproduces draws pair and outcome together (``sim.core.pairing``); a
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

Nothing here knows about files or the terminal; ``sim.runs.runner`` does the logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import RunStop, ScenarioError
from .contracts import PolicyOutput, Reading
from .rng import Streams
from .state import State, World


class StepError(Exception):
    """A plugin raised inside a step; says which plugin and which step."""


@dataclass
class Simulation:
    """A built scenario: the world, its state, the plugins and the worlds' random streams."""

    scenario: Any  # what it was built from (a sim.config Scenario); the engine reads only ``stop_tolerance``
    world: World
    state: State
    rng: Streams  # the worlds' streams (their steps are set at each call)
    dynamics: list[tuple[str, Any]]
    policies: list[tuple[str, Any]]  # one per group, in group order
    metrics: list[tuple[str, Any]]
    metric_carry: list[Any]
    stop_tolerance: float | None = None
    # Events the policies reported since the runner last took them (LLM exchanges, ...).
    events: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ stepping

    def step(self) -> None:
        """Advance every world by one step (see the module docstring)."""
        state, world = self.state, self.world
        before = state.values
        rng = self.rng.at(state.step + 1)
        expressed = self._express(rng)
        values = before
        for name, dynamics in self.dynamics:
            try:
                values = dynamics.apply(values, expressed, state, world, rng)
            except RunStop:
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

    def _express(self, rng: Streams) -> torch.Tensor:
        if bool(self.world.honest.all()):
            return self.state.values
        parts = []
        for group, (name, policy) in zip(self.world.groups, self.policies):
            parts.append(self._call_policy("express", name, policy, group, rng))
        expressed = torch.cat(parts, dim=1)
        self.state.expressed = expressed
        return expressed

    def _call_policy(self, method: str, name: str, policy: Any, group, rng: Streams) -> torch.Tensor | None:
        """Call a policy method, keep its events, and name the policy and step if it raises."""
        step = self.state.step + (1 if method == "express" else 0)
        try:
            out = getattr(policy, method)(self.state, self.world, group, rng)
        except RunStop:
            raise
        except Exception as exc:
            raise StepError(f"step {step}: policy {name!r} of group {group.name!r} raised "
                            f"{type(exc).__name__}: {exc}") from exc
        if isinstance(out, PolicyOutput):
            self.events.extend({"step": step, "group": group.name, **e} for e in out.events)
            return out.expressed
        return out

    def measure_at_build(self) -> None:
        """The policies' start-of-run measurements (questionnaires), written in as where their agents start."""
        self._measure(at_build=True)

    def _measure(self, at_build: bool) -> None:
        """Write what policies measure of their own agents (questionnaires) into the values."""
        rng = self.rng.at(self.state.step)
        for group, (name, policy) in zip(self.world.groups, self.policies):
            if not hasattr(policy, "measure"):
                continue
            measured = self._call_policy("measure", name, policy, group, rng)
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
        tol = self.stop_tolerance
        if tol is None:
            return
        moved = (after - before).abs().amax(dim=(1, 2)).cpu()
        newly = (moved <= tol) & (self.state.converged_at < 0)
        self.state.converged_at[newly] = self.state.step

    @property
    def converged(self) -> bool:
        """Every world has had a step in which no value moved more than ``stop.tolerance``."""
        return self.stop_tolerance is not None and bool((self.state.converged_at >= 0).all())

    # ------------------------------------------------------------------ observing

    def take_events(self) -> list[dict[str, Any]]:
        """The events reported since the last call, oldest first."""
        events, self.events = self.events, []
        return events

    def observe(self) -> list[Reading]:
        """Run every metric on the current state (updating their carries)."""
        readings: list[Reading] = []
        rng = self.rng.at(self.state.step)
        for index, (name, metric) in enumerate(self.metrics):
            try:
                out, self.metric_carry[index] = metric.observe(
                    self.state, self.world, self.metric_carry[index], rng)
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
            "streams": self.rng.state_dict(),
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
        self.rng = Streams.from_state_dict(self.rng.seed, snap["streams"], device)
        self.metric_carry = snap["metric_carry"]

    def fingerprint(self) -> list[float]:
        """A cheap checksum of the built world, to refuse resuming onto a different one."""
        w = self.world
        return [float(w.initial.double().sum()), float(w.network.col.double().sum()), float(w.n), float(w.b)]
