"""stable-baselines3's ``VecEnv`` over the batched environment: numpy at the boundary, as SB3 wants.

Each of the ``B * A`` rows of :class:`~sim.marl.vector.VectorEnv` is one SB3 environment, so one shared
policy is trained for every RL agent of every world (parameter sharing). Seeding goes the SB3 way:
``PPO(..., seed=s)`` calls :meth:`seed`, and the next :meth:`reset` rebuilds the worlds with that seed
(the SuperSuit path has no ``seed`` and fails there). Ended worlds restart inside the batched step; their
last observation is in ``infos[i]["terminal_observation"]`` with ``"TimeLimit.truncated"`` set, so PPO
bootstraps from it. Actions are trained in ``[-1, 1]`` and mapped onto the action's Box at the boundary
(SB3's Gaussian policies start at 0: the middle of the Box, not its lower edge); a saved policy records it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._deps import require
from .spaces import from_symmetric, symmetric
from .vector import VectorEnv

_vec = require("stable_baselines3.common.vec_env")


class SB3VecEnv(_vec.VecEnv):
    """``VectorEnv`` as an SB3 ``VecEnv`` (``num_envs = B * A``)."""

    render_mode = None

    def __init__(self, vector: VectorEnv):
        self.vector = vector
        self._actions = None
        super().__init__(vector.num_envs, vector.observation_space, symmetric(vector.action_space))

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs = self.vector.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        actions = torch.as_tensor(np.asarray(self._actions, dtype=np.float32)).reshape(
            (self.num_envs, *self.action_space.shape))
        out = self.vector.step(from_symmetric(actions, self.vector.action_space))
        dones = (out.terminated | out.truncated).cpu().numpy()
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if out.final_observation is not None:
            final = out.final_observation.cpu().numpy()
            truncated = out.truncated.cpu().numpy()
            for i in np.flatnonzero(dones):
                infos[i] = {"terminal_observation": final[i], "TimeLimit.truncated": bool(truncated[i])}
        return out.observation.cpu().numpy(), out.reward.cpu().numpy(), dones, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        raise NotImplementedError(f"the batched environment has no per-environment method {method_name!r}")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
