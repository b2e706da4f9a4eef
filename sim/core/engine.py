"""The one batched world engine.

A :class:`Simulation` is a scenario built into tensors with a leading world
axis B; the same step serves a single run, B replicates, a sweep, Shapley
coalitions, counterfactuals and RL environments. This docstring is the single
place the step is written down. A step, in order:

1. **Protocols** (the scenario's ``protocols:``, in order) act at their
   cadence: they choose who meets whom, ask group policies for protocol
   actions (declared as Gymnasium spaces; an action written in from outside
   with ``step(actions=...)`` wins), may move values by their own rule, and
   record outcomes in ``state.protocols[name]`` for metrics to read.
   Pairwise influence on the network is not a protocol object: a pairwise
   dynamics draws its own pairs in step 3, because the sequential model it
   reproduces draws pair and outcome together (``sim.core.pairing``); a
   synchronous dynamics takes every agent's neighbourhood. That keeps the
   results bit-identical to the reference loops and the code in one place.
2. **Expression.** Each group's policy produces what its agents show,
   ``expressed[B, N, K]``; in a world where an agent's ``state.own_policy``
   is False its group's baseline policy speaks for it instead. Agents whose
   policy shows their own current values (``honest``) are read live by the
   dynamics, so nothing is computed for them. An LLM group sends one batch for
   all its agents that speak, in all worlds. ``step(actions=...)`` may give a
   group's expression from outside.
3. **Dynamics.** The scenario's dynamics update the internal values, in the
   order listed. Zealots and absent agents are then held where they were.
4. **Alignment rules** (the scenario's ``alignment:``, in order) update AI
   groups' own values from the humans they serve, at their cadence, with
   batched state in ``state.alignment[name]``; absent agents stay put. Policies
   that measure their own agents (an LLM persona's questionnaire, when due)
   write the measured values in; they also do so once when the world is built.
5. **Metrics** observe on the device, vectorised over worlds (the runner asks
   at ``log_every``; the run log records metrics, value snapshots and events).
6. **Stop conditions**: the runner stops at ``steps``, or once no value moved
   more than ``stop.tolerance`` in a step in every world. Code driving the
   engine itself (an RL environment) restarts the worlds whose episode ended
   with :meth:`Simulation.reset_worlds`.

**Absent agents.** ``state.active[b, i]`` False means agent i is not in world
b: the engine freezes its values (as it does a zealot's), pairwise dynamics
never pick it as focal agent or partner and keep the others' interaction rate
per agent (``absence: aligned``, the default, spends its draw slots where they
are, so twins differing in its presence agree where it cannot reach;
``rebuilt`` ranks the draws among the active agents), synchronous dynamics leave it out of neighbourhoods, protocols and
LLM policies neither address it nor let it speak, and metrics do not count
it. ``sim.checks`` holds every plugin kind to this.

**Randomness.** Every draw comes from ``self.rng`` (``sim.core.rng.Streams``,
counter-based): a function of the run seed, the world's stream, the world's
step (``state.world_step``; the step being made, for protocols, policies and
dynamics; the step observed, for metrics; -1 for building) and a purpose.
World b of a batch is therefore the single-world run of its stream, and
worlds sharing a stream share their draws.

Nothing here knows about files, scenarios or the terminal: ``sim.config.build``
builds a Simulation and ``sim.runs.runner`` does the logging.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from pydantic import ValidationError

from ..errors import RunStop, ScenarioError
from .contracts import PolicyOutput, Reading, StepOutput
from .ops import unit_range_problem
from .rng import Streams
from .state import AGENT_PARAMETERS, AgentParams, Group, State, World

# ``actions`` for :meth:`Simulation.step`: group name -> {action name -> tensor [B, group.size, ...]}.
# The action ``"express"`` is the group's expressed vectors [B, group.size, K].
Actions = Mapping[str, Mapping[str, torch.Tensor]]
# Fresh initial values [B', N, K] and per-agent parameters for worlds on the given streams (step -1).
Redraw = Callable[[Streams], tuple[torch.Tensor, AgentParams]]


class StepError(Exception):
    """A plugin raised inside a step; says which plugin and which step (``where``: its scenario field and
    index, e.g. ``("metrics", 2)``, when the engine knows it)."""

    where: tuple[str, int] | None = None


@dataclass
class Simulation:
    """A built scenario: the world, its state, the plugins and the worlds' random streams."""

    scenario: Any  # what it was built from (a sim.config Scenario); the engine itself reads none of it
    world: World
    state: State
    rng: Streams  # the worlds' streams (their steps are set at each call)
    dynamics: list[tuple[str, Any]]
    policies: list[tuple[str, Any]]  # one per group, in group order
    metrics: list[tuple[str, Any]]
    metric_carry: list[Any]
    stop_tolerance: float | None = None
    baselines: list[tuple[str, Any] | None] = field(default_factory=list)  # per group; None: no baseline
    protocols: list[tuple[str, Any]] = field(default_factory=list)
    alignment: list[tuple[str, Any]] = field(default_factory=list)  # alignment rules, step 4
    redraw: Redraw | None = None
    # With per-world graphs (network.independent): the network of worlds on the given [B] streams, for worlds
    # restarted on new streams and checkpoints restored (``sim.config.build.WorldNetworks``); None: one graph.
    renetwork: Callable[[torch.Tensor], Any] | None = None
    # Events the policies and protocols reported since the runner last took them (LLM exchanges, ...).
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.baselines:
            self.baselines = [None] * len(self.policies)
        self._honest_own = self.world.honest
        self._honest_base = torch.cat([
            torch.full((g.size,), bool(getattr(base[1], "expresses_own_values", False)) if base else True,
                       dtype=torch.bool, device=self.world.device)
            for g, base in zip(self.world.groups, self.baselines)])[None]
        self._fingerprint = self._checksum()
        self._own_seen: tuple[torch.Tensor, int] | None = None
        self._resets = 0
        self._step_cache: dict[str, torch.Tensor] = {}
        self._variants: dict[int, tuple[list[tuple[str, Any]], torch.Tensor]] = {}
        self._spaces: dict[str, dict] = {}
        self._protocol_originals: dict[str, Any] = {}  # a protocol as built, before vary_protocol

    # ------------------------------------------------------------------ stepping

    def step(self, actions: Actions | None = None) -> None:
        """Advance every world by one step (see the module docstring).

        ``actions`` writes in, for this step only, what groups do instead of
        asking their policies: ``{"group": {"express": [B, n, K]}}`` for what
        its agents show, or a protocol action by its name.
        """
        self._actions = actions or {}
        self._check_actions()
        self._step_cache = {}
        self._sync_honesty()
        state, world = self.state, self.world
        before = state.values
        rng = self.rng.at(state.world_step + 1)
        values = self._run_protocols(before, rng)
        expressed = self._express(rng)
        for name, dynamics in self.dynamics:
            try:
                values = dynamics.apply(values, expressed, state, world, rng)
            except RunStop:
                raise
            except Exception as exc:
                raise StepError(f"step {state.step + 1}: dynamics {name!r} raised "
                                f"{type(exc).__name__}: {exc}") from exc
            if not getattr(dynamics, "keeps_unit_range", False):
                self._check_unit(values, f"dynamics {name!r}")
        values = self._hold_fixed(before, values)
        values = self._run_alignment(before, values, rng)
        state.values = values
        state.step += 1
        state.world_step = state.world_step + 1
        self._actions = {}
        self._note_convergence(before, values)
        self._measure(at_build=False)

    def advance(self, steps: int) -> None:
        """Run ``steps`` steps without observing or logging."""
        for _ in range(steps):
            self.step()

    def _sync_honesty(self) -> None:
        """``world.honest`` for this step: [1, N] while every agent acts by its own policy, else per world."""
        own = self.state.own_policy
        # own_policy rarely changes: skip two passes over [B, N] per step while it is the same tensor, unwritten
        # (held here, so that its id cannot be reused by another tensor)
        seen = (own, own._version)
        if self._own_seen is not None and self._own_seen[0] is own and self._own_seen[1] == own._version:
            return
        honest = self._honest_own if bool(own.all()) else torch.where(own, self._honest_own, self._honest_base)
        if honest.shape != self.world.honest.shape or not torch.equal(honest, self.world.honest):
            self.world = replace(self.world, honest=honest)
        self._own_seen = seen

    def _hold_fixed(self, before: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Zealots and absent agents keep the values they had before the step."""
        held = self.world.params.zealot
        if not bool(self.state.active.all()):
            held = held | ~self.state.active
        if values is before or not bool(held.any()):
            return values
        kept = [before, self.world.initial] + ([] if self.state.expressed is None else [self.state.expressed])
        if _shares_storage(values, *kept):  # a plugin handed back a view of the state: leave that alone
            return torch.where(held[..., None], before, values)
        # Copy back only the held rows, in place (the dynamics returned a new tensor): a where over
        # [B, N, K] is a full pass, the largest cost of a step at Shapley batch sizes.
        if held.shape[0] == 1:
            rows = held[0].nonzero().squeeze(1)
            values[:, rows] = before[:, rows]
        else:
            worlds, rows = held.expand(values.shape[:2]).nonzero(as_tuple=True)
            values[worlds, rows] = before[worlds, rows]
        return values

    def _check_actions(self) -> None:
        known = {g.name for g in self.world.groups}
        for name, given in self._actions.items():
            if name not in known:
                raise ValueError(f"actions for unknown group {name!r} (groups: {', '.join(sorted(known))})")
            if not isinstance(given, Mapping):
                raise TypeError(f"actions[{name!r}] must map action names to tensors, got {type(given).__name__}")
            allowed = self.action_names(name)
            for action in given:
                if action not in allowed:
                    raise ValueError(f"actions[{name!r}] names {action!r}, which no protocol asks of group "
                                     f"{name!r} (its actions: {', '.join(allowed)})")

    def action_names(self, group: str) -> list[str]:
        """What can be written in for ``group`` at a step: ``express`` and the protocols' declared actions."""
        names = ["express"]
        for name, _ in self.protocols:
            names += [action for (g, action) in self._action_spaces(name) if g == group]
        return names

    def _action_spaces(self, protocol_name: str) -> dict:
        """A protocol's declared actions (asked once: they depend on the groups, which do not change)."""
        if protocol_name not in self._spaces:
            self._spaces[protocol_name] = dict(self.protocols)[protocol_name].action_spaces(self.world)
        return self._spaces[protocol_name]

    def _express(self, rng: Streams) -> torch.Tensor:
        given = self._actions_for("express")
        if bool(self.world.honest.all()) and not given:
            return self.state.values
        # Start from the values (what honest agents show) and write in the groups that show anything else:
        # one copy, not a concatenation of every group's slice.
        expressed = self.state.values.clone()
        for group in self.world.groups:
            if group.name in given or not bool(self.world.honest[:, group.rows].all()):
                expressed[:, group.rows] = self._group_expression(group, rng)
        self.state.expressed = expressed
        return expressed

    def _actions_for(self, action: str) -> list[str]:
        return [g for g, acts in self._actions.items() if action in acts]

    def _group_expression(self, group: Group, rng: Streams) -> torch.Tensor:
        """What ``group``'s agents show this step (computed once per step, also for protocols that ask)."""
        if group.name in self._step_cache:
            return self._step_cache[group.name]
        index = self.world.groups.index(group)
        given = self._actions.get(group.name, {}).get("express")
        if given is not None:
            shown = self._external(group, "express", given, (self.world.k,))
        else:
            shown = self._own_expression(index, group, rng)
            own = self.state.own_policy[:, group.rows]
            baseline = self.baselines[index]
            if not bool(own.all()):
                if baseline is None:
                    raise ValueError(f"group {group.name!r} has agents without their own policy in some worlds "
                                     "but no baseline policy")
                base = self._call_policy("express", baseline[0], baseline[1], group, rng)
                shown = torch.where(own[..., None], shown, base)
        self._step_cache[group.name] = shown
        return shown

    def _own_expression(self, index: int, group: Group, rng: Streams) -> torch.Tensor:
        """The group policy's expression; with per-world parameters, each world's variant's."""
        if index not in self._variants:
            name, policy = self.policies[index]
            return self._call_policy("express", name, policy, group, rng)
        variants, choice = self._variants[index]
        shown = torch.stack([self._call_policy("express", name, policy, group, rng) for name, policy in variants])
        return shown[choice, torch.arange(self.world.b, device=choice.device)]

    def vary_policy(self, group: str, params: list[dict[str, Any]]) -> None:
        """Give group ``group``'s policy other parameters in each world: ``params[b]`` overrides world b's.

        A sweep or a swarm over a policy's parameters in one batch: each distinct
        set of parameters becomes one instance of the group's policy class, every
        instance expresses for all worlds and each world keeps its own instance's
        output (so the cost grows with the number of distinct sets, not with B).
        """
        index = [g.name for g in self.world.groups].index(group)
        if len(params) != self.world.b:
            raise ValueError(f"vary_policy needs one parameter set per world ({self.world.b}), got {len(params)}")
        name, policy = self.policies[index]
        cls = type(policy)
        distinct: list[str] = []
        variants, choice = [], []
        for override in params:
            merged = {**policy.params.model_dump(), **override}
            key = repr(sorted(merged.items()))
            if key not in distinct:
                distinct.append(key)
                try:
                    validated = cls.Params.model_validate(merged)
                except ValidationError as exc:
                    problem = exc.errors()[0]
                    field = ".".join(map(str, problem["loc"]))
                    raise ValueError(f"{name} parameters of world {len(choice)}: {field}: {problem['msg']}") from None
                variants.append((name, cls(validated)))
            choice.append(distinct.index(key))
        for _, variant in variants:
            prepare = getattr(variant, "prepare", None)
            if prepare is not None:
                prepare(self.world, self.world.groups[index])
        self._variants[index] = (variants, torch.tensor(choice, device=self.world.device))

    def vary_protocol(self, protocol: str, params: list[dict[str, Any]]) -> None:
        """Give protocol ``protocol`` other parameters in each world: ``params[b]`` overrides world b's.

        Keys are the protocol's fields (dotted into a mapping: ``susceptibility.financial``) among those
        its class names in ``per_world`` (``sim.core.perworld``); they are then held as ``[B]`` tensors by
        one instance, so a sweep or a swarm over them costs one batch, not one per point. The protocol's
        state restarts (its draws are a function of the streams, so only what the parameters change
        changes): call this before stepping.
        """
        from .perworld import varied

        names = [name for name, _ in self.protocols]
        if protocol not in names:
            raise ValueError(f"no protocol {protocol!r} (protocols: {', '.join(names) or 'none'})")
        index = names.index(protocol)
        original = self._protocol_originals.setdefault(protocol, self.protocols[index][1])
        self.protocols[index] = (protocol, varied(original, f"protocol {protocol!r}", params, self.world))
        self.start_protocols(only=protocol)

    def _external(self, group: Group, action: str, given: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        want = (self.world.b, group.size, *shape)
        if not torch.is_tensor(given) or tuple(given.shape) != want:
            got = list(given.shape) if torch.is_tensor(given) else type(given).__name__
            raise ValueError(f"actions[{group.name!r}][{action!r}] must be a tensor of shape {list(want)}, got {got}")
        return given.to(self.world.device)

    def _call_policy(self, method: str, name: str, policy: Any, group, rng: Streams, *args) -> torch.Tensor | None:
        """Call a policy method, keep its events, and name the policy and step if it raises."""
        step = self.state.step + (1 if method in ("express", "act") else 0)
        try:
            out = getattr(policy, method)(self.state, self.world, group, rng, *args)
        except RunStop:
            raise
        except Exception as exc:
            raise StepError(f"step {step}: policy {name!r} of group {group.name!r} raised "
                            f"{type(exc).__name__}: {exc}") from exc
        if isinstance(out, PolicyOutput):
            self.events.extend({"step": step, "group": group.name, **e} for e in out.events)
            out = out.expressed
        if method in ("express", "measure") and out is not None and not getattr(policy, "keeps_unit_range", False):
            self._check_unit(out, f"policy {name!r} of group {group.name!r}", step, method)
        return out

    def _check_unit(self, tensor: torch.Tensor, who: str, step: int | None = None, method: str = "apply") -> None:
        """Stop the run, naming the plugin and the step, when what it returned is not values in [0, 1]."""
        problem = unit_range_problem(tensor)
        if problem is not None:
            step = self.state.step + 1 if step is None else step
            raise StepError(f"step {step}: {who} {method}() returned {problem}")

    # ------------------------------------------------------------------ protocols

    def start_protocols(self, only: str | None = None) -> None:
        """Every protocol's and alignment rule's (or ``only``'s) batched state at step 0; the builder calls this."""
        rng = self.rng.at(-1)
        for name, protocol in self.protocols:
            if only is None or name == only:
                self.state.protocols[name] = protocol.start(self.world, rng)
        for name, rule in self.alignment:
            if only is None or name == only:
                self.state.alignment[name] = rule.start(self.world, rng)

    def _run_alignment(self, before: torch.Tensor, values: torch.Tensor, rng: Streams) -> torch.Tensor:
        """Step 4: alignment rules move AI groups' own values; absent agents stay where they were."""
        for name, rule in self.alignment:
            values = self._run_plugin("alignment rule", "alignment", name, self.state.alignment, values, "update",
                                      lambda v, rule=rule, name=name: rule.update(
                                          v, self.state, self.world, self.state.alignment[name], rng))
        if self.alignment and not bool(self.state.active.all()):
            values = torch.where(self.state.active[..., None], values, before)
        return values

    def _run_protocols(self, values: torch.Tensor, rng: Streams) -> torch.Tensor:
        """Step 1: each protocol acts, asking groups for its declared actions."""
        for name, protocol in self.protocols:
            def ask(group: str, action: str, protocol_name: str = name) -> torch.Tensor | None:
                return self._ask(protocol_name, group, action, rng)

            values = self._run_plugin("protocol", "protocol", name, self.state.protocols, values, "step",
                                      lambda v, protocol=protocol, name=name, ask=ask: protocol.step(
                                          v, self.state, self.world, self.state.protocols[name], rng, ask))
        return values

    def _run_plugin(self, label: str, event_key: str, name: str, carries: dict, values: torch.Tensor, method: str,
                    call: Callable[[torch.Tensor], Any]) -> torch.Tensor:
        """Run one protocol or alignment rule: keep its carry and events, check its values, name it if it fails."""
        step = self.state.step + 1
        try:
            out = call(values)
        except RunStop:
            raise
        except Exception as exc:
            raise StepError(f"step {step}: {label} {name!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, StepOutput):
            raise StepError(f"step {step}: {label} {name!r} returned a {type(out).__name__}, not a StepOutput")
        carries[name] = out.carry
        self.events.extend({"step": step, event_key: name, **e} for e in out.events)
        if out.values is None:
            return values
        self._check_unit(out.values, f"{label} {name!r}", method=method)
        return out.values

    def _ask(self, protocol_name: str, group_name: str, action: str, rng: Streams) -> torch.Tensor | None:
        """A group's protocol action this step: written in from outside, else its policy's ``act``, else None.

        ``action == "express"`` is the group's expression for this step (the
        same tensor the dynamics will receive).
        """
        group = self.world.group(group_name)
        if action == "express":
            return self._group_expression(group, rng)
        space = self._action_spaces(protocol_name).get((group_name, action))
        if space is None:
            raise ValueError(f"protocol {protocol_name!r} asked for action {action!r} of group {group_name!r}, "
                             "which its action_spaces() does not declare")
        given = self._actions.get(group_name, {}).get(action)
        if given is not None:
            return self._external(group, action, given, tuple(space.shape or ()))
        index = self.world.groups.index(group)
        name, policy = self.policies[index]
        if not hasattr(policy, "act"):
            return None
        return self._call_policy("act", name, policy, group, rng, action, space)

    # ------------------------------------------------------------------ measuring

    def measure_at_build(self) -> None:
        """The policies' start-of-run measurements (questionnaires), written in as where their agents start."""
        self._measure(at_build=True)

    def _measure(self, at_build: bool) -> None:
        """Write what policies measure of their own agents (questionnaires) into the values."""
        rng = self.rng.at(self.state.world_step)
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
                self._fingerprint = self._checksum()

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
        """Run every metric on the current state (updating their carries); readings stay on the device."""
        readings: list[Reading] = []
        rng = self.rng.at(self.state.world_step)
        for index, (name, metric) in enumerate(self.metrics):
            try:
                out, self.metric_carry[index] = metric.observe(
                    self.state, self.world, self.metric_carry[index], rng)
            except Exception as exc:
                error = StepError(f"step {self.state.step}: metric {name!r} raised {type(exc).__name__}: {exc}")
                error.where = ("metrics", index)
                raise error from exc
            readings.extend(out)
        return readings

    # ------------------------------------------------------------------ driving worlds from outside

    def reset_worlds(self, worlds: torch.Tensor, streams: torch.Tensor | None = None) -> None:
        """Restart some worlds from fresh initial values on fresh streams (episodes that ended).

        ``worlds`` is a ``[B]`` bool mask. Their stream numbers become
        ``streams`` (``[number of worlds to reset]``) or, by default, the next
        numbers never used in this batch (a world with a counterfactual twin
        restarts with it, both on the one new stream; ``streams`` then counts
        the factual worlds); their step counter, convergence and
        protocol state restart; initial values and per-world parameters are
        drawn afresh for the new streams. The other worlds are untouched. A
        metric that keeps a carry may define ``reset(carry, worlds)``;
        otherwise its carry is kept as it is.
        """
        mask = worlds.to(device=self.world.device, dtype=torch.bool)
        if tuple(mask.shape) != (self.world.b,):
            raise ValueError(f"worlds must be a [B] = [{self.world.b}] bool mask, got shape {list(mask.shape)}")
        twin = self.world.twin
        if twin is not None:  # a world and its counterfactual twin restart together, on one new stream
            factual = ~self.world.counterfactual
            mask = (mask | mask[twin]) & factual
        count = int(mask.sum())
        if count == 0:
            return
        if self.redraw is None:
            raise ValueError("this simulation was built without a way to redraw its worlds")
        if streams is None:
            start = int(self.rng.stream.max()) + 1
            streams = torch.arange(start, start + count)
        streams = torch.as_tensor(streams, dtype=torch.int64, device=self.world.device)
        stream = self.rng.stream.clone()
        stream[mask] = streams
        if twin is not None:
            stream[twin[mask]] = streams
            mask = mask | mask[twin]
            streams = stream[mask]
        self.rng = Streams(self.rng.seed, stream, self.rng.step)
        if self.renetwork is not None:  # a world's graph is its stream's: a new stream brings a new graph
            self.world = replace(self.world, network=self.renetwork(stream))
        fresh = Streams(self.rng.seed, streams).at(-1)
        initial, params = self.redraw(fresh)
        self._write_worlds(mask, initial.to(self.world.device), params)
        state = self.state
        state.world_step = torch.where(mask, 0, state.world_step)
        state.converged_at[mask.cpu()] = -1
        for carries, plugins in ((state.protocols, self.protocols), (state.alignment, self.alignment)):
            for name, plugin in plugins:
                restarted = plugin.start(self.world, self.rng.at(-1))
                carries[name] = {k: _masked_update(carries[name][k], v, mask) for k, v in restarted.items()}
        for index, (_, metric) in enumerate(self.metrics):
            if hasattr(metric, "reset") and self.metric_carry[index] is not None:
                self.metric_carry[index] = metric.reset(self.metric_carry[index], mask)
        self._resets += 1

    def _write_worlds(self, mask: torch.Tensor, initial: torch.Tensor, params: AgentParams) -> None:
        world, state = self.world, self.state
        world_initial = world.initial.clone()
        world_initial[mask] = initial
        fields = {}
        for name in (*AGENT_PARAMETERS, "zealot"):
            old, new = getattr(world.params, name), getattr(params, name).to(world.device)
            if old.shape[0] == 1 and new.shape[0] == 1 and torch.equal(old, new):
                fields[name] = old
                continue
            grown = old.expand(world.b, -1).clone()
            grown[mask] = new.expand(int(mask.sum()), -1)
            fields[name] = grown
        self.world = replace(world, initial=world_initial, params=AgentParams(**fields))
        values = state.values.clone()
        values[mask] = initial
        state.values = values
        if state.expressed is not None:
            expressed = state.expressed.clone()
            expressed[mask] = initial
            state.expressed = expressed

    def set_params(self, **params: torch.Tensor) -> None:
        """Set per-agent parameters for every world: ``confidence=[B or 1, N]`` and so on (a sweep or a swarm).

        Values must lie in the parameter's range (confidence in (0, 1], rate in
        (0, 0.5], anchoring in [0, 1]); ``zealot`` is a bool tensor.
        """
        current = {name: getattr(self.world.params, name) for name in (*AGENT_PARAMETERS, "zealot")}
        for name, value in params.items():
            if name not in current:
                raise ValueError(f"unknown per-agent parameter {name!r} (parameters: {', '.join(current)})")
            value = torch.as_tensor(value, device=self.world.device)
            if value.dim() == 1:
                value = value[None]
            if value.dim() != 2 or value.shape[0] not in (1, self.world.b) or value.shape[1] != self.world.n:
                raise ValueError(f"{name} must have shape [B or 1, N] = [{self.world.b} or 1, {self.world.n}], "
                                 f"got {list(value.shape)}")
            current[name] = _checked_param(name, value)
        self.world = replace(self.world, params=AgentParams(**current))

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """Everything a resumed run needs beyond the scenario and seed (which rebuild the world)."""
        state = self.state
        snap = {
            "step": state.step,
            "values": state.values.cpu(),
            "active": state.active.cpu(),
            "own_policy": state.own_policy.cpu(),
            "world_step": state.world_step.cpu(),
            "converged_at": state.converged_at.clone(),
            "expressed": None if state.expressed is None else state.expressed.cpu(),
            "protocols": _carries(state.protocols, "cpu"),
            "alignment": _carries(state.alignment, "cpu"),
            "streams": self.rng.state_dict(),
            "metric_carry": self.metric_carry,
            "fingerprint": self._fingerprint,
        }
        if self._resets:  # restarted worlds no longer start where the scenario puts them
            snap["initial"] = self.world.initial.cpu()
            snap["params"] = {name: getattr(self.world.params, name).cpu()
                              for name in (*AGENT_PARAMETERS, "zealot")}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        if list(snap["fingerprint"]) != list(self._fingerprint):
            raise ScenarioError("the checkpoint does not belong to this world (its initial values or network "
                                "differ: was a file the scenario reads changed?)")
        device = self.world.device
        expressed = snap.get("expressed")
        self.state = State(values=snap["values"].to(device), active=snap["active"].to(device), step=snap["step"],
                           converged_at=snap["converged_at"],
                           expressed=None if expressed is None else expressed.to(device),
                           world_step=snap["world_step"].to(device), own_policy=snap["own_policy"].to(device),
                           protocols=_carries(snap.get("protocols", {}), device),
                           alignment=_carries(snap.get("alignment", {}), device))
        if "initial" in snap:
            params = AgentParams(**{k: v.to(device) for k, v in snap["params"].items()})
            self.world = replace(self.world, initial=snap["initial"].to(device), params=params)
            self._resets = 1
        rng = Streams.from_state_dict(self.rng.seed, snap["streams"], device)
        if self.renetwork is not None and not torch.equal(rng.stream, self.rng.stream):
            self.world = replace(self.world, network=self.renetwork(rng.stream))  # graphs of restarted worlds
        self.rng = rng
        self.metric_carry = snap["metric_carry"]

    def fingerprint(self) -> list[float]:
        """A cheap checksum of the world as built, to refuse resuming onto a different one."""
        return list(self._fingerprint)

    def _checksum(self) -> list[float]:
        w = self.world
        return [float(w.initial.double().sum()), float(w.network.cols.double().sum()), float(w.n), float(w.b)]


def _checked_param(name: str, value: torch.Tensor) -> torch.Tensor:
    if name == "zealot":
        return value.to(torch.bool)
    interval = AGENT_PARAMETERS[name]
    value = value.to(torch.float32)
    low, high = interval.low, interval.high
    bad = ~torch.isfinite(value) | (value > high) | ((value <= low) if interval.gt is not None else (value < low))
    if bool(bad.any()):
        raise ValueError(f"{name} {interval.message(float(value[bad][0]))}")
    return value


def _carries(carries: dict[str, dict[str, torch.Tensor]], device) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.to(device) for k, v in carry.items()} for name, carry in carries.items()}


def _masked_update(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = old.clone()
    out[mask] = new[mask].to(out)
    return out


def _shares_storage(tensor: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether ``tensor`` is a view of (or the same memory as) any of ``others``."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(pointer == other.untyped_storage().data_ptr() for other in others)
