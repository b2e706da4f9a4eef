"""RLlib's ``MultiAgentEnv`` over one world: the environment RLlib's env runners step (on one machine or a
Ray cluster); RLlib vectorises and distributes copies of it itself.

A thin shell over :class:`~sim.marl.vector.VectorEnv` with one world, as the PettingZoo env is: dicts by
agent name (``<group>_<i>``) at the boundary, numpy observations, every agent truncated together when the
world reaches its episode length (``"__all__"``). It is built from ``env_config`` (what Ray ships to its
workers): ``scenario`` (the scenario's YAML text), ``name``, ``base_dir``, ``seed``, ``device`` and ``stream``
(the first world's random stream). Each env runner and each of its vectorised copies starts on a stream of
its own, ``stream + (worker_index * 64 + vector_index) << 20``; ``reset()`` goes on to the next fresh stream,
``reset(seed=s)`` rebuilds the world with run seed ``s``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config.scenario import scenario_from_yaml
from ._deps import require
from .vector import VectorEnv

_multi = require("ray.rllib.env.multi_agent_env")
STREAM_STRIDE = 1 << 20


def env_config(scenario, *, seed: int, device: str = "cpu", stream: int = 0) -> dict:
    """The ``env_config`` of :class:`RLlibEnv` for ``scenario`` (plain data, as Ray ships it to workers)."""
    return {"scenario": scenario.to_yaml(), "name": scenario.source.name, "base_dir": str(scenario.base_dir),
            "seed": seed, "device": device, "stream": stream}


class RLlibEnv(_multi.MultiAgentEnv):
    """One world of a scenario as an RLlib multi-agent environment (see the module docstring)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = dict(config or {})
        scenario = scenario_from_yaml(config["scenario"], name=config.get("name", "<string>"),
                                      base_dir=config.get("base_dir", "."))
        worker = int(getattr(config, "worker_index", 0) or 0)
        vector = int(getattr(config, "vector_index", 0) or 0)
        stream = int(config.get("stream", 0)) + (worker * 64 + vector) * STREAM_STRIDE
        self.vector = VectorEnv(scenario, streams=[stream], seed=config.get("seed"),
                                device=config.get("device", "cpu"), autoreset=False)
        self.possible_agents = self.vector.agent_names()
        self.agents = list(self.possible_agents)
        self.observation_spaces = {a: self.vector.observation_space for a in self.possible_agents}
        self.action_spaces = {a: self.vector.action_space for a in self.possible_agents}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs = self.vector.reset(seed=seed)
        self.agents = list(self.possible_agents)
        return self._by_agent(obs), {a: {} for a in self.agents}

    def step(self, action_dict: dict):
        actions = torch.as_tensor(np.stack([np.asarray(action_dict[a], dtype=np.float32)
                                            for a in self.possible_agents]))
        out = self.vector.step(actions)
        rewards = dict(zip(self.possible_agents, out.reward.cpu().tolist()))
        truncated = bool(out.truncated.any())
        terminateds = {a: False for a in self.possible_agents} | {"__all__": False}
        truncateds = {a: truncated for a in self.possible_agents} | {"__all__": truncated}
        return self._by_agent(out.observation), rewards, terminateds, truncateds, {}

    def _by_agent(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        rows = obs.cpu().numpy()
        return {a: rows[i] for i, a in enumerate(self.possible_agents)}
