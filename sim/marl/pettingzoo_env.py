"""A scenario with ``rl`` groups as a PettingZoo ``ParallelEnv`` (one world), and its AEC form by conversion.

A thin shell over :class:`~sim.marl.vector.VectorEnv` with one world: dicts of numpy arrays by agent name
at the boundary, nothing else. Agents are ``<group>_<i>`` for each rl group. ``reset(seed=s)`` rebuilds
the world with run seed ``s`` on the env's stream (so two envs reset with one seed run alike: PettingZoo's
seed test); ``reset()`` starts the next episode on a fresh stream. Every agent is truncated together when
the world reaches its episode length; valuesim episodes have no terminal state.
"""

from __future__ import annotations

import numpy as np
import torch

from ._deps import require
from .vector import VectorEnv

_pz = require("pettingzoo")


class ParallelEnv(_pz.ParallelEnv):
    """One world of ``scenario`` (on random stream ``stream``) for PettingZoo's parallel API."""

    metadata = {"name": "valuesim", "render_modes": [], "is_parallelizable": True}

    def __init__(self, scenario, *, seed: int | None = None, stream: int = 0, device="cpu"):
        self.render_mode = None
        self._vector = VectorEnv(scenario, streams=[stream], seed=seed, device=device, autoreset=False)
        self.possible_agents = self._vector.agent_names()
        self.agents: list[str] = []
        self._observation_space = self._vector.observation_space
        self._action_space = self._vector.action_space

    @property
    def simulation(self):
        return self._vector.simulation

    def observation_space(self, agent: str):
        return self._observation_space  # one object for every agent and call (spaces are seeded in place)

    def action_space(self, agent: str):
        return self._action_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs = self._vector.reset(seed=seed)
        self.agents = list(self.possible_agents)
        return self._by_agent(obs), {a: {} for a in self.agents}

    def step(self, actions: dict):
        if not self.agents:
            raise ValueError("step() after the episode ended: call reset()")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"no action for {missing[0]!r}: every agent acts at every step")
        stacked = torch.as_tensor(np.stack([np.asarray(actions[a], dtype=np.float32) for a in self.agents]))
        out = self._vector.step(stacked)
        obs = self._by_agent(out.observation)
        rewards = dict(zip(self.agents, out.reward.cpu().tolist()))
        terminated = dict(zip(self.agents, out.terminated.cpu().tolist()))
        truncated = dict(zip(self.agents, out.truncated.cpu().tolist()))
        infos = {a: {} for a in self.agents}
        if any(truncated.values()):
            self.agents = []
        return obs, rewards, terminated, truncated, infos

    def _by_agent(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        rows = obs.cpu().numpy()
        return {a: rows[i] for i, a in enumerate(self.possible_agents)}

    def state(self) -> np.ndarray:
        """Every agent's values in the world, flattened (a centralised critic's view)."""
        return self.simulation.state.values[0].reshape(-1).cpu().numpy().astype(np.float32)

    def render(self):
        return None

    def close(self):
        pass


def parallel_env(scenario, **kwargs) -> ParallelEnv:
    """The PettingZoo parallel environment of ``scenario`` (see :class:`ParallelEnv`)."""
    return ParallelEnv(scenario, **kwargs)


def aec_env(scenario, **kwargs):
    """The same environment in PettingZoo's AEC (turn by turn) form, by PettingZoo's own conversion."""
    from pettingzoo.utils.conversions import parallel_to_aec

    return parallel_to_aec(ParallelEnv(scenario, **kwargs))
