"""What an ``rl`` group sees, does and is rewarded by: the translation between a scenario's ``rl:`` entry and
the engine's tensors, shared by every environment and by trained policies.

- :func:`observe` turns the state into observations ``[B, n, F]`` (float32, on the state's device) from the
  group's feature list (``own``, ``neighbours``, ``step``, ``{group: ..}``, ``{protocol: .., outcome: ..}``);
  it is a pure function of the state, so a trained policy deployed in a run computes exactly what it saw in
  training.
- :func:`observation_space` / :func:`action_space` are the Gymnasium spaces per agent.
- :class:`Reward` reads the group's reward metric after a step: ``[B]`` float64.

Nothing here imports an RL library; only Gymnasium (a core dependency) for the spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.spaces import Box

from ..config.distributions import DimResolver
from ..config.scenario import instantiate
from ..config.schema import RLObserveGroup, RLObserveProtocol, RLSpec
from ..core.ops import masked_mean, neighbour_sums
from ..core.state import Group, State, World
from ..errors import ScenarioError


def feature_sizes(features: list[Any], k: int) -> list[tuple[int, float, float]]:
    """Each feature's (width, low, high)."""
    out = []
    for feature in features:
        if feature in ("own", "neighbours") or isinstance(feature, RLObserveGroup):
            out.append((k, 0.0, 1.0))
        elif feature == "step":
            out.append((1, 0.0, 1.0))
        else:
            out.append((1, -np.inf, np.inf))
    return out


def observation_space(features: list[Any], k: int) -> Box:
    """One float32 Box per agent: the features' widths concatenated, with their bounds."""
    sizes = feature_sizes(features, k)
    low = np.concatenate([np.full(w, lo, dtype=np.float32) for w, lo, _ in sizes])
    high = np.concatenate([np.full(w, hi, dtype=np.float32) for w, _, hi in sizes])
    return Box(low, high, dtype=np.float32)


def observe(features: list[Any], episode: int, state: State, world: World, group: Group) -> torch.Tensor:
    """The group's observations ``[B, group.size, F]``, float32, in the order of ``features``."""
    b, n, k = world.b, group.size, world.k
    own = state.values[:, group.rows]
    parts = []
    for feature in features:
        if feature == "own":
            parts.append(own)
        elif feature == "neighbours":
            sums, count = neighbour_sums(world.network, group.start, group.stop, state.values,
                                         state.active.to(state.values.dtype))
            mean = sums / count.clamp_min(1)[..., None]
            parts.append(torch.where((count > 0)[..., None], mean, own))
        elif feature == "step":
            step = (state.world_step.to(torch.float32) / episode).clamp(0, 1)
            parts.append(step[:, None, None].expand(b, n, 1))
        elif isinstance(feature, RLObserveGroup):
            other = world.group(feature.group)
            mean = masked_mean(state.values[:, other.rows], state.active[:, other.rows]).nan_to_num(0.5)
            parts.append(mean[:, None, :].expand(b, n, k))
        else:
            outcome = state.protocols[feature.protocol][feature.outcome].double().reshape(b, -1).mean(1)
            parts.append((outcome * feature.scale)[:, None, None].expand(b, n, 1))
    return torch.cat([p.to(torch.float32) for p in parts], dim=-1)


def check_features(features: list[Any], world: World, protocols: dict, where: str) -> None:
    """A feature naming a group, protocol or outcome that does not exist is an error naming what does."""
    names = [g.name for g in world.groups]
    for i, feature in enumerate(features):
        if isinstance(feature, RLObserveGroup) and feature.group not in names:
            raise ValueError(f"{where}.observe[{i}]: no group {feature.group!r} (groups: {', '.join(names)})")
        if isinstance(feature, RLObserveProtocol):
            if feature.protocol not in protocols:
                raise ValueError(f"{where}.observe[{i}]: no protocol {feature.protocol!r} "
                                 f"(protocols: {', '.join(protocols) or 'none'})")
            if feature.outcome not in protocols[feature.protocol]:
                raise ValueError(f"{where}.observe[{i}]: protocol {feature.protocol!r} has no outcome "
                                 f"{feature.outcome!r} (outcomes: {', '.join(protocols[feature.protocol])})")


def express_space(k: int) -> Box:
    """The ``express`` action: the value vector an agent shows, in [0, 1]^K."""
    return Box(0.0, 1.0, shape=(k,), dtype=np.float32)


def clip_action(action: torch.Tensor, space: Box) -> torch.Tensor:
    """An action into its Box (policies with Gaussian heads propose any real number)."""
    low = torch.as_tensor(space.low, device=action.device, dtype=torch.float32)
    high = torch.as_tensor(space.high, device=action.device, dtype=torch.float32)
    return torch.maximum(torch.minimum(action.to(torch.float32), high), low)


def symmetric(space: Box) -> Box:
    """The Box ``[-1, 1]`` of ``space``'s shape: what learners with Gaussian heads train in (SB3's advice)."""
    return Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)


def from_symmetric(action: torch.Tensor, space: Box) -> torch.Tensor:
    """An action in ``[-1, 1]`` (clipped there) mapped linearly onto the Box ``space``."""
    low = torch.as_tensor(space.low, device=action.device, dtype=torch.float32)
    high = torch.as_tensor(space.high, device=action.device, dtype=torch.float32)
    return low + (action.to(torch.float32).clamp(-1, 1) + 1) * 0.5 * (high - low)


@dataclass
class RLGroup:
    """One ``rl`` group of a built simulation: its rows, its spec, its spaces."""

    group: Group
    index: int  # its position in the scenario's population
    spec: RLSpec
    episode: int
    observation_space: Box
    action_space: Box

    @property
    def name(self) -> str:
        return self.group.name

    def observe(self, state: State, world: World) -> torch.Tensor:
        return observe(self.spec.observe, self.episode, state, world, self.group)


def rl_groups(simulation) -> list[RLGroup]:
    """The simulation's ``rl`` groups, with their spaces; a spec naming what does not exist is a ScenarioError."""
    scenario = simulation.scenario
    out = []
    for i, (spec, group) in enumerate(zip(scenario.spec.population, simulation.world.groups)):
        if spec.kind != "rl":
            continue
        where = f"population[{i}].rl"
        try:
            check_features(spec.rl.observe, simulation.world, simulation.state.protocols, where)
        except ValueError as exc:
            path, _, message = str(exc).partition(": ")
            raise scenario.error(path, message) from None
        out.append(RLGroup(group=group, index=i, spec=spec.rl, episode=spec.rl.episode or scenario.spec.steps,
                           observation_space=observation_space(spec.rl.observe, simulation.world.k),
                           action_space=_action_space(simulation, group.name, spec.rl.action, f"{where}.action")))
    if not out:
        raise ScenarioError("the scenario has no group of kind rl: nothing to train (give a group kind: rl and an "
                            "rl: entry)")
    return out


def _action_space(simulation, group: str, action: str, where: str) -> Box:
    if action == "express":
        return express_space(simulation.world.k)
    allowed = simulation.action_names(group)
    if action not in allowed:
        raise simulation.scenario.error(where, f"must be one of {', '.join(allowed)} (what the scenario's "
                                               f"protocols let group {group!r} do), got {action!r}")
    for _, protocol in simulation.protocols:
        space = protocol.action_spaces(simulation.world).get((group, action))
        if space is not None:
            if not isinstance(space, Box):
                raise simulation.scenario.error(where, f"{action!r} is a {type(space).__name__} space; the "
                                                       "environments train Box actions only so far")
            return Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
    raise AssertionError(action)  # action_names lists only declared actions


class Reward:
    """An rl group's reward after a step: ``sign`` times one reading of its metric, reduced to ``[B]``.

    It keeps its own instance of the metric (and its carry), so the reward costs one metric per step
    whatever else the scenario logs; :meth:`reset` forgets restarted worlds as the metric says.
    """

    def __init__(self, simulation, rl: RLGroup):
        spec = rl.spec.reward
        self.spec, self.where = spec, f"population[{rl.index}].rl.reward"
        self.scenario = simulation.scenario
        self.metric = instantiate("metrics", spec.metric)
        self.carry = None
        dims = simulation.world.space.dimensions
        try:
            self.target = None if spec.target is None else DimResolver(dims)(spec.target).expand(len(dims))
        except ValueError as exc:
            raise self.scenario.error(f"{self.where}.target", str(exc)) from None
        self._pick = None

    def start(self, simulation, worlds: torch.Tensor | None = None) -> None:
        """At the start of an episode (of ``worlds``, a [B] mask; None: all): forget, and for ``change``
        rewards read the quantity the first step's change is measured from."""
        if worlds is not None:
            self.reset(worlds)
        if not self.spec.change:
            return
        now = self._quantity(simulation)
        self.previous = now if worlds is None else torch.where(worlds, now, self.previous)

    def __call__(self, simulation) -> torch.Tensor:
        """The reward of the step just made, ``[B]`` float64."""
        value = self._quantity(simulation)
        if self.spec.change:
            value, self.previous = value - self.previous, value
        return self.spec.sign * value

    def _quantity(self, simulation) -> torch.Tensor:
        state, world = simulation.state, simulation.world
        readings, self.carry = self.metric.observe(state, world, self.carry, simulation.rng.at(state.world_step))
        reading = self._reading(readings)
        scope, dim = self._pick or self._locate(reading, world)
        value = reading.value[:, scope].double()  # [B, D]
        if self.target is not None:
            gap = value - self.target.to(value)
            value = gap.square().sum(-1).sqrt() / gap.shape[-1] ** 0.5
        elif dim is None:
            value = value.nanmean(-1)
        else:
            value = value[:, dim]
        return value.nan_to_num(0.0)

    def reset(self, worlds: torch.Tensor) -> None:
        if self.carry is not None and hasattr(self.metric, "reset"):
            self.carry = self.metric.reset(self.carry, worlds)

    def _reading(self, readings):
        if self.spec.reading is None:
            if not readings:
                raise self.scenario.error(f"{self.where}.metric", "the metric returned no reading")
            return readings[0]
        for reading in readings:
            if reading.metric == self.spec.reading:
                return reading
        raise self.scenario.error(f"{self.where}.reading", f"no reading {self.spec.reading!r} (the metric gives: "
                                                           f"{', '.join(r.metric for r in readings)})")

    def _locate(self, reading, world: World) -> tuple[int, int | None]:
        if self.spec.scope not in reading.scopes:
            raise self.scenario.error(f"{self.where}.scope", f"must be one of {', '.join(reading.scopes)} (the "
                                                             f"scopes of {reading.metric}), got {self.spec.scope!r}")
        dim = None
        if self.target is not None and tuple(reading.dimensions) != tuple(world.space.dimensions):
            raise self.scenario.error(f"{self.where}.target", f"{reading.metric} is not a value vector (its "
                                                              f"dimensions: {reading.dimensions}); drop target")
        if self.spec.dimension is not None:
            if self.spec.dimension not in reading.dimensions:
                raise self.scenario.error(f"{self.where}.dimension", f"must be one of "
                                          f"{', '.join(map(str, reading.dimensions))}, got {self.spec.dimension!r}")
            dim = list(reading.dimensions).index(self.spec.dimension)
        self._pick = (list(reading.scopes).index(self.spec.scope), dim)
        return self._pick
