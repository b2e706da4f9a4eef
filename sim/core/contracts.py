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
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

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
class Dynamics(Protocol):
    """How internal values change given what agents expressed.

    ``apply`` returns the new values ``[B, N, K]`` (a new tensor; the input is
    not modified). It must keep values in [0, 1]. ``uses`` names the per-agent
    parameters it reads (``confidence``, ``rate``, ``anchoring``), so a
    scenario that sets one no listed dynamics uses can be told so.
    Zealots are held fixed by the engine, not by each dynamics.
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
class Metric(Protocol):
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
class NetworkGenerator(Protocol):
    """Builds the graph of who can influence whom.

    ``build(request)`` returns a ``networkx.Graph`` on nodes ``0..N-1`` or an
    edge array ``[E, 2]`` of int64 node indices. Direction, self-loops and
    duplicates are cleaned up by ``sim.core.network``.
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
class Policy(Protocol):
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
    """

    Params: ClassVar[type[BaseModel]]

    def express(
        self, state: State, world: World, group: Group, rng: Streams,
    ) -> torch.Tensor: ...
