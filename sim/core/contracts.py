"""The contracts a plugin implements. Small on purpose: read these before writing one.

Every plugin is a class with

- ``Params``: a pydantic model of its parameters (strict: unknown keys are
  errors; ranges live in the field types). The scenario's parameters for the
  plugin are validated against it, with errors pointing at the file and line.
- ``__init__(self, params)``: keeps the validated parameters, nothing else.
  Plugins hold configuration, never run state: state and the random streams are
  passed in and the new state is returned.
- one method that does the work, listed per kind below. It is vectorised over
  worlds and agents: a Python loop over agents is a defect.

Shapes: B worlds, N agents, K value dimensions, G groups (see ``sim.core.state``).

Randomness: the working method receives ``rng``, a :class:`~sim.core.rng.Streams`
for the worlds at the current step. Draw fixed-shape tensors ``[B, ...]`` for a
named purpose (``rng.uniform("mypolicy/jitter", (B, n, K))``), one purpose per
distinct draw, never a number of values that depends on the state: world b's
numbers then depend only on its stream, so twin worlds share them.

The network: a plugin that reads ``world.network`` (a
:class:`~sim.core.state.Network`) must also serve per-world graphs, which a
scenario asks for with ``network.independent: true``: each stream's world
then has its own graph. ``network.rowptr``, ``.col`` and ``.degree()`` are
the one shared graph and raise ``NetworkError`` with per-world graphs (the
engine stops the run naming the plugin and the step), so a plugin written
for one graph never silently reads another world's. The accessors that work
in both cases: ``network.by_graph()`` (the worlds on each graph, and that
graph alone: run the one-graph code once per entry on those worlds' rows),
``network.of_world(b)``, ``network.world_degree()`` ``[B or 1, N]``, and for
compiled kernels ``network.rowptrs`` ``[G, N + 1]``, ``network.cols`` and
``network.world_graph(B)``. ``sim.core.ops.neighbour_sums`` and
``neighbour_min`` already do this.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, runtime_checkable
from typing import Protocol as _Contract

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from .rng import Streams
from .state import Group, State, World


class Strict(BaseModel):
    """Frozen; an unknown key is an error that names the nearest allowed key."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = [name for name in cls.model_fields]
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise PydanticCustomError(
                        "unknown_key", "unknown key '{key}'{hint} (allowed: {allowed})",
                        {"key": key, "hint": hint, "allowed": ", ".join(allowed)},
                    )
        return data


class PluginParams(Strict):
    """Base for a plugin's ``Params``: frozen; an unknown key is an error naming the nearest allowed one."""


class NoParams(PluginParams):
    """For plugins that take no parameters."""


@runtime_checkable
class Dynamics(_Contract):
    """How internal values change given what agents expressed.

    ``apply`` returns the new values ``[B, N, K]`` (a new tensor; the input is
    not modified). It must keep values in [0, 1]. ``uses`` names the per-agent
    parameters it reads (``confidence``, ``rate``, ``anchoring``), so a
    scenario that sets one no listed dynamics uses can be told so.
    Zealots are held fixed by the engine, not by each dynamics.

    The engine checks every step that what ``apply`` returned is finite and in
    [0, 1], and stops the run naming the plugin and the step if not; a dynamics
    whose tests prove it never leaves the range may say
    ``keeps_unit_range = True`` to skip that one reduction pass.

    Optional: ``prepare(world)`` runs when the world is built and raises
    ``ValueError`` if the dynamics cannot serve it (a file it reads, a group it
    names); the message is shown as a scenario error at its entry. Metrics may
    have the same hook.
    """

    Params: ClassVar[type[BaseModel]]
    uses: ClassVar[tuple[str, ...]]

    def apply(
        self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
        rng: Streams,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Reading:
    """One metric's observation at one step, shaped ``[B, S, D]``.

    ``scopes`` labels axis 1 (group names, ``"all"`` for the whole population)
    and ``dimensions`` labels axis 2 (value dimension names, or ``(None,)`` for
    a metric that is not per dimension). The run log turns a reading into tidy
    rows: world, step, metric, group, dimension, value.
    """

    metric: str
    value: torch.Tensor
    scopes: tuple[str, ...]
    dimensions: tuple[str | None, ...] = (None,)


@runtime_checkable
class Metric(_Contract):
    """An observer of the state.

    ``observe(state, world, carry, rng)`` returns ``(readings, carry)``.
    ``carry`` is the metric's memory between observations (``None`` at the
    first call; a dict of tensors or numbers, saved in checkpoints). The
    random streams are those of the observed step; a metric draws under its
    own purpose names, so observing never changes the dynamics.
    """

    Params: ClassVar[type[BaseModel]]

    def observe(
        self, state: State, world: World, carry: Any, rng: Streams,
    ) -> tuple[list[Reading], Any]: ...


@dataclass(frozen=True)
class NetworkRequest:
    """What a network generator is told: the population and where the scenario lives.

    ``seed`` is an integer derived from the run's seed (pass it to networkx
    generators); ``base_dir`` resolves relative file paths.
    """

    n: int
    groups: tuple[Group, ...]
    seed: int
    base_dir: Path


@runtime_checkable
class NetworkGenerator(_Contract):
    """Builds the graph of who can influence whom.

    ``build(request)`` returns a ``networkx.Graph`` on nodes ``0..N-1`` or an
    edge array ``[E, 2]`` of int64 node indices. Direction, self-loops and
    duplicates are cleaned up by ``sim.core.network``.

    With ``network.independent: true`` it is called once per distinct world
    stream, each time with that stream's ``request.seed``. A generator whose
    graph does not depend on the seed (a file, the complete graph) sets the
    class attribute ``random = False``; the build then refuses
    ``independent: true`` for several streams instead of building identical
    graphs. Without the attribute a generator counts as random.
    """

    Params: ClassVar[type[BaseModel]]

    def build(self, request: NetworkRequest) -> Any | np.ndarray: ...


@dataclass(frozen=True)
class PolicyOutput:
    """A policy's answer when it has more to say than a tensor: ``expressed`` plus ``events`` for the log.

    Each event is a JSON-ready dict (the run log adds time and step); LLM
    policies log one per exchange with the model.
    """

    expressed: torch.Tensor
    events: list[dict[str, Any]]


@runtime_checkable
class Policy(_Contract):
    """What a group's agents express at a step.

    ``express(state, world, group, rng)`` returns ``[B, group.size, K]``
    in [0, 1]: the value vector each agent of the group shows its partners.
    It is called once per step, before the dynamics. A policy whose agents
    show their own current values sets ``expresses_own_values = True``; the
    dynamics then read those values live and ``express`` is not called.

    ``express`` may return a :class:`PolicyOutput` instead of a tensor, to
    log events. ``state.expressed`` holds what every agent showed last step
    (``None`` before the first), for policies whose agents keep showing their
    last message between messages.

    Optional: ``prepare(world, group)`` runs once when the world is built and
    raises ``ValueError`` if the policy cannot serve it (a target group that
    does not exist, a goal vector of the wrong length); the message is shown
    as a scenario error at the group's ``policy``.

    Optional: ``measure(state, world, group, rng)`` returns ``None`` or a
    :class:`PolicyOutput` whose ``expressed`` holds the group's own values as
    measured now (an LLM persona's questionnaire); the engine calls it when the
    world is built and after every step, and writes what it returns into the
    group's values.

    Optional: ``act(state, world, group, rng, action, space)`` answers a
    protocol's request for an action (see :class:`Protocol`): a tensor
    ``[B, group.size, *space.shape]`` of values in the Gymnasium ``space``. A
    policy without ``act`` leaves the protocol to its default.

    Absent agents (``state.active`` False) are never heard: what a policy
    returns for them is ignored, and an LLM policy does not let them speak.

    The engine checks every step that what ``express`` and ``measure``
    returned is finite and in [0, 1], and stops the run naming the policy and
    the step if not; a policy that can only return values already in range
    (its agents' own values, a validated vector) may say
    ``keeps_unit_range = True`` to skip that reduction pass.
    """

    Params: ClassVar[type[BaseModel]]

    def express(
        self, state: State, world: World, group: Group, rng: Streams,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepOutput:
    """What a protocol's ``step`` and an alignment rule's ``update`` return.

    - ``values``: the new values ``[B, N, K]`` if the plugin moved any (a new
      tensor), else ``None``;
    - ``carry``: its batched state for the next step (a dict of tensors with a
      leading B, on the values' device; saved in checkpoints; outcomes that
      metrics read live here, at ``state.protocols[name]`` or
      ``state.alignment[name]``);
    - ``events``: JSON-ready dicts for the run log (the engine adds the step
      and the plugin's name).
    """

    values: torch.Tensor | None
    carry: dict[str, torch.Tensor]
    events: list[dict[str, Any]]


# The name protocols use for it.
ProtocolOutput = StepOutput


@runtime_checkable
class Protocol(_Contract):
    """Who meets whom, when, and what counts as an outcome: step 1 of the engine's step.

    - ``start(world, rng)`` returns the protocol's batched state at step 0:
      a dict of tensors, each with a leading B (draws use ``rng`` at step -1);
    - ``action_spaces(world)`` declares what the protocol may ask groups to
      decide: ``{(group name, action name): gymnasium.spaces.Space}`` (an RL
      environment trains exactly these);
    - ``step(values, state, world, carry, rng, ask)`` acts (at its own
      cadence: it may do nothing on most steps) and returns a
      :class:`ProtocolOutput`. ``ask(group, action)`` gives a declared
      action of a group's agents, ``[B, group.size, *space.shape]``: written
      in from outside (an RL environment), else from the group policy's
      ``act``, else ``None`` (the protocol's default applies);
      ``ask(group, "express")`` gives what the group's agents show this step.

    A protocol never addresses or hears an absent agent (``state.active``
    False) and does not move its values; ``sim.checks`` verifies both.

    Optionally, ``per_world``: a tuple naming the numeric fields of
    ``Params`` that may differ between worlds of one batch (a sweep or a
    calibration swarm; ``Simulation.vary_protocol``). Such a field may then
    hold a ``[B]`` tensor, and the protocol reads it through
    ``sim.contracts.per_world(value, world)`` (see ``sim.core.perworld``).
    """

    Params: ClassVar[type[BaseModel]]

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]: ...

    def action_spaces(self, world: World) -> dict[tuple[str, str], Any]: ...

    def step(self, values: torch.Tensor, state: State, world: World, carry: dict[str, torch.Tensor],
             rng: Streams, ask: Any) -> ProtocolOutput: ...


@runtime_checkable
class AlignmentRule(_Contract):
    """How an AI group's own values follow the humans it serves: step 4 of the engine's step.

    - ``start(world, rng)`` returns the rule's batched state at step 0 (a dict
      of tensors with a leading B, e.g. a history of the humans' mean for a
      trend fit);
    - ``update(values, state, world, carry, rng)`` returns a
      :class:`StepOutput` whose ``values`` move only the rows of the AI
      group(s) it updates (at its own cadence: ``state.world_step`` says when).

    Absent agents count for nothing: an absent human is not part of the
    aggregate the rule follows, and an absent AI agent is not moved (the engine
    also holds it); ``sim.checks.check_alignment`` verifies both.
    """

    Params: ClassVar[type[BaseModel]]

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]: ...

    def update(self, values: torch.Tensor, state: State, world: World, carry: dict[str, torch.Tensor],
               rng: Streams) -> StepOutput: ...
