"""TorchRL's ``EnvBase`` over the batched environment: ``batch_size=[B]``, tensors on the simulation's device.

A thin shell over :class:`~sim.marl.vector.VectorEnv` (no model logic; the engine does the work), laid out
as TorchRL's multi-agent environments (VMAS) and BenchMARL expect:

- ``("agents", "observation")`` ``[B, A, F]`` float32, ``("agents", "action")`` ``[B, A, D]`` (the agent's
  action flattened: D = the product of the action's shape; it is reshaped into the action's Box shape for
  the engine), ``("agents", "reward")`` ``[B, A, 1]`` float32;
- ``done`` / ``terminated`` / ``truncated`` ``[B, 1]`` bool per world: every agent of a world ends together,
  when the world reaches its episode length (a truncation; there are no terminal states).

A is the number of rl agents per world (``VectorEnv.agent_names()``, in that order). Ended worlds are not
restarted inside :meth:`_step`: TorchRL asks for it with ``"_reset"`` (``step_and_maybe_reset``, the
collectors), and :meth:`_reset` restarts exactly those worlds through the engine's world resets, on fresh
streams, as the VectorEnv's own autoreset does; so a rollout of this env with the same actions is the
VectorEnv's step for step (``tests/test_marl.py``). ``set_seed(s)`` rebuilds the worlds on their first
streams with run seed ``s``.
"""

from __future__ import annotations

import math

import torch

from ._deps import require
from .vector import VectorEnv

_tensordict = require("tensordict")
_envs = require("torchrl.envs")
_data = require("torchrl.data")


class TorchRLEnv(_envs.EnvBase):
    """``VectorEnv`` as a TorchRL environment with ``batch_size=[B]`` and an ``"agents"`` group of A agents."""

    def __init__(self, vector: VectorEnv):
        if vector.autoreset:
            raise ValueError("give TorchRLEnv a VectorEnv(..., autoreset=False): TorchRL resets ended worlds itself")
        self.vector = vector
        device = vector.simulation.world.device
        super().__init__(device=device, batch_size=torch.Size([vector.worlds]))
        b, a = vector.worlds, vector.agents_per_world
        self.action_shape = tuple(vector.action_space.shape)
        self.action_dim = math.prod(self.action_shape)
        obs = vector.observation_space
        low, high = torch.as_tensor(obs.low), torch.as_tensor(obs.high)
        if bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            observation = _data.Bounded(low.expand(b, a, -1), high.expand(b, a, -1), shape=(b, a, obs.shape[0]),
                                        dtype=torch.float32, device=device)
        else:
            observation = _data.Unbounded(shape=(b, a, obs.shape[0]), dtype=torch.float32, device=device)
        act = vector.action_space
        self.action_low = torch.as_tensor(act.low, dtype=torch.float32).reshape(-1)
        self.action_high = torch.as_tensor(act.high, dtype=torch.float32).reshape(-1)
        action = _data.Bounded(self.action_low.expand(b, a, -1), self.action_high.expand(b, a, -1),
                               shape=(b, a, self.action_dim), dtype=torch.float32, device=device)
        group = {"shape": (b, a), "device": device}
        self.observation_spec = _data.Composite(agents=_data.Composite(observation=observation, **group),
                                                shape=(b,), device=device)
        self.action_spec = _data.Composite(agents=_data.Composite(action=action, **group), shape=(b,), device=device)
        self.reward_spec = _data.Composite(
            agents=_data.Composite(reward=_data.Unbounded(shape=(b, a, 1), dtype=torch.float32, device=device),
                                   **group), shape=(b,), device=device)
        flag = {"n": 2, "shape": (b, 1), "dtype": torch.bool, "device": device}
        self.done_spec = _data.Composite(done=_data.Categorical(**flag), terminated=_data.Categorical(**flag),
                                         truncated=_data.Categorical(**flag), shape=(b,), device=device)

    def _observation(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(self.vector.worlds, self.vector.agents_per_world, -1)

    def _reset(self, tensordict=None, **kwargs):
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            obs = self.vector.reset()
        else:
            obs = self.vector.restart(mask.reshape(self.vector.worlds).to(self.device))
        b = self.vector.worlds
        false = torch.zeros((b, 1), dtype=torch.bool, device=self.device)
        return _tensordict.TensorDict({"agents": self._agents(observation=self._observation(obs)), "done": false,
                                       "terminated": false.clone(), "truncated": false.clone()},
                                      batch_size=self.batch_size, device=self.device)

    def _agents(self, **fields):
        return _tensordict.TensorDict(fields, batch_size=(self.vector.worlds, self.vector.agents_per_world),
                                      device=self.device)

    def _step(self, tensordict):
        action = tensordict.get(("agents", "action"))
        out = self.vector.step(action.reshape(self.vector.num_envs, *self.action_shape))
        b, a = self.vector.worlds, self.vector.agents_per_world
        truncated = out.truncated.reshape(b, a)[:, :1]
        terminated = out.terminated.reshape(b, a)[:, :1]
        agents = self._agents(observation=self._observation(out.observation), reward=out.reward.reshape(b, a, 1))
        return _tensordict.TensorDict({"agents": agents, "done": truncated | terminated, "terminated": terminated,
                                       "truncated": truncated}, batch_size=self.batch_size, device=self.device)

    def _set_seed(self, seed: int | None):
        if seed is not None:
            self.vector.reseed(int(seed))
        return seed


def torchrl_env(scenario, worlds: int | None = None, *, seed: int | None = None, device="cpu",
                streams: list[int] | None = None) -> TorchRLEnv:
    """The TorchRL environment of ``scenario`` over B worlds (see :class:`TorchRLEnv`)."""
    return TorchRLEnv(VectorEnv(scenario, worlds, seed=seed, device=device, streams=streams, autoreset=False))
