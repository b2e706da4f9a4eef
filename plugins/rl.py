"""Policies of reinforcement-learning agents: ``external`` (actions written in) and ``trained`` (a saved policy).

``external`` is the default policy of an ``rl`` group: an environment (``sim.marl``) writes the group's
actions in before each step (``Simulation.step(actions=...)``), and the engine then uses those. A step
with no action written in (a plain ``valuesim run`` of a training scenario) falls back to the documented
default: its agents show their own current values, as honest agents do (but as a vector computed at the
start of the step), and protocol actions take the protocol's own default.

``trained`` acts by a policy trained with ``valuesim train``: ``policy: {trained: {path:
runs/<run>/policy.zip}}``. It computes the observations the policy was trained on (kept in
``policy.json`` beside the zip) from the state and answers with the policy's deterministic (most likely) action,
for ``express`` or for the protocol action it was trained for.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from sim.contracts import Group, NoParams, PluginParams, State, Streams, World


class External:
    """Actions come from outside (an RL environment); without any, show one's own values."""

    Params: ClassVar = NoParams
    # False even though the default shows own values: the dynamics must read what is written in.
    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params

    def express(self, state: State, world: World, group: Group, rng: Streams) -> torch.Tensor:
        return state.values[:, group.rows]


class Trained:
    """Act by a policy saved by ``valuesim train`` (``path``: its ``policy.zip``, or the run directory)."""

    class Params(PluginParams):
        path: str
        """The trained policy: ``runs/<run>/policy.zip`` or its run directory; relative paths are looked up
        beside the scenario first, then in the current directory."""

    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params
        self._policy = None

    def _load(self, world: World):
        if self._policy is None:
            from sim.marl.policy import load_policy

            self._policy = load_policy(self._resolve(world))
        return self._policy

    def _resolve(self, world: World) -> Path:
        path = Path(self.params.path)
        if not path.is_absolute():
            beside = Path(world.context.get("base_dir", ".")) / path
            path = beside if beside.exists() else path
        if not path.exists():
            raise ValueError(f"no trained policy at {self.params.path} (give the policy.zip that "
                             "`valuesim train` wrote, or its run directory)")
        return path

    def prepare(self, world: World, group: Group) -> None:
        self._load(world).check(world, group)

    def express(self, state: State, world: World, group: Group, rng: Streams) -> torch.Tensor:
        policy = self._load(world)
        if policy.action != "express":
            return state.values[:, group.rows]
        return policy.act(state, world, group).to(state.values.dtype)

    def act(self, state: State, world: World, group: Group, rng: Streams, action: str, space) -> torch.Tensor | None:
        policy = self._load(world)
        if policy.action != action:
            return None
        return policy.act(state, world, group)
