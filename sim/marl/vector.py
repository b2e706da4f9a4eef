"""The batched environment: B worlds x the RL agents, flattened for one shared policy, on the device.

Conventions are VMAS's / TorchRL's: observations ``[num_envs, F]``, actions ``[num_envs, *action shape]``,
rewards and dones ``[num_envs]``, all tensors on the simulation's device; ``num_envs = B * A`` where A is
the number of RL agents per world (the rl groups' agents in population order), and row ``b * A + a`` is
agent a of world b. One :meth:`VectorEnv.step` is one engine step of every world. Worlds whose episode
ended (``world_step`` reached the episode length: a truncation; valuesim episodes have no terminal state)
are restarted by the engine on fresh streams (:meth:`~sim.core.engine.Simulation.reset_worlds`); the
observation they ended on is returned beside the fresh one.

World b of a batch built on streams ``[s_0, ..., s_{B-1}]`` is, episode for episode until its first reset,
the one-world environment of stream s_b (``tests/test_marl.py`` holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.build import build_simulation
from ..errors import ScenarioError
from .spaces import Reward, clip_action, rl_groups


@dataclass
class Step:
    """What :meth:`VectorEnv.step` returns (tensors on the device, first axis ``num_envs``)."""

    observation: torch.Tensor  # [num_envs, F], after the restarts of ended worlds
    reward: torch.Tensor  # [num_envs] float32
    terminated: torch.Tensor  # [num_envs] bool (always False: no terminal states)
    truncated: torch.Tensor  # [num_envs] bool: the episode reached its length
    final_observation: torch.Tensor | None  # [num_envs, F] before the restarts; None when no world ended


class VectorEnv:
    """B worlds of ``scenario`` as one batched environment with a shared observation and action space.

    ``worlds`` (B) or ``streams`` chooses the worlds, as for ``sim.build``; ``seed`` overrides the
    scenario's. Every rl group must have the same observation and action space (one shared policy).
    """

    def __init__(self, scenario, worlds: int | None = None, *, seed: int | None = None, device="cpu",
                 streams: list[int] | None = None, autoreset: bool = True):
        self.scenario, self.device, self.autoreset = scenario, device, autoreset
        self._streams = list(streams) if streams is not None else list(range(worlds or scenario.spec.worlds))
        self._build(seed)

    def _build(self, seed: int | None) -> None:
        self.seed = self.scenario.spec.seed if seed is None else seed
        self.simulation = build_simulation(self.scenario, streams=self._streams, seed=self.seed, device=self.device)
        self.groups = rl_groups(self.simulation)
        first = self.groups[0]
        for other in self.groups[1:]:
            if other.observation_space != first.observation_space or other.action_space != first.action_space:
                raise ScenarioError(f"rl groups {first.name!r} and {other.name!r} observe or act differently; the "
                                    "batched environment trains one shared policy (give them the same rl: entry)")
            if other.episode != first.episode:
                raise ScenarioError(f"rl groups {first.name!r} and {other.name!r} have different episode lengths")
        self.rewards = [Reward(self.simulation, g) for g in self.groups]
        for reward in self.rewards:
            reward.start(self.simulation)
        self.observation_space, self.action_space = first.observation_space, first.action_space
        self.episode = first.episode
        self.agents_per_world = sum(g.group.size for g in self.groups)
        self.worlds = self.simulation.world.b
        self.num_envs = self.worlds * self.agents_per_world
        self._fresh = True

    def agent_names(self) -> list[str]:
        """The A agents of one world, in row order: ``<group>_<i>``."""
        return [f"{g.name}_{i}" for g in self.groups for i in range(g.group.size)]

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Observations ``[num_envs, F]`` at the start of an episode in every world.

        The first call (or one with a ``seed``: the worlds are rebuilt on their first streams with that
        seed) starts where the built worlds start; a later call restarts every world on fresh streams.
        """
        if seed is not None:
            self._build(seed)
        elif not self._fresh:
            self._restart(torch.ones(self.worlds, dtype=torch.bool, device=self.simulation.world.device))
        self._fresh = False
        return self.observe()

    def observe(self) -> torch.Tensor:
        sim = self.simulation
        obs = torch.cat([g.observe(sim.state, sim.world) for g in self.groups], dim=1)
        return obs.reshape(self.num_envs, -1)

    def step(self, actions: torch.Tensor) -> Step:
        """One engine step of every world with ``actions`` ``[num_envs, *action shape]`` (clipped into the space)."""
        sim = self.simulation
        shape = tuple(self.action_space.shape)
        actions = torch.as_tensor(actions, device=sim.world.device)
        if tuple(actions.shape) != (self.num_envs, *shape):
            raise ValueError(f"actions must have shape {[self.num_envs, *shape]} (worlds x agents, action), "
                             f"got {list(actions.shape)}")
        per_world = clip_action(actions, self.action_space).reshape(self.worlds, self.agents_per_world, *shape)
        written, start = {}, 0
        for g in self.groups:
            given = per_world[:, start:start + g.group.size]
            if g.spec.action == "express":
                given = given.to(sim.state.values.dtype)
            written[g.name] = {g.spec.action: given}
            start += g.group.size
        sim.step(actions=written)
        reward = torch.cat([r(sim)[:, None].expand(-1, g.group.size) for r, g in zip(self.rewards, self.groups)],
                           dim=1).reshape(-1).to(torch.float32)
        ended = sim.state.world_step >= self.episode  # [B]
        truncated = ended.repeat_interleave(self.agents_per_world)
        terminated = torch.zeros_like(truncated)
        observation, final = self.observe(), None
        if self.autoreset and bool(ended.any()):
            final = observation
            self._restart(ended)
            observation = self.observe()
        return Step(observation, reward, terminated, truncated, final)

    def reseed(self, seed: int) -> None:
        """Rebuild the worlds on their first streams with run seed ``seed``; the next :meth:`reset` starts there."""
        self._build(seed)

    def restart(self, worlds: torch.Tensor) -> torch.Tensor:
        """Restart the worlds of the ``[B]`` mask ``worlds`` on fresh streams (the others go on unchanged) and
        return every world's observation ``[num_envs, F]``: the autoreset of :meth:`step`, asked for from outside
        (TorchRL's ``"_reset"``)."""
        worlds = worlds.to(device=self.simulation.world.device, dtype=torch.bool)
        if bool(worlds.any()):
            self._restart(worlds)
        self._fresh = False
        return self.observe()

    def _restart(self, worlds: torch.Tensor) -> None:
        self.simulation.reset_worlds(worlds)
        for reward in self.rewards:
            reward.start(self.simulation, worlds)
