"""Test helpers: a saved (untrained) policy for the tiny world of ``sim.checks``, so the ``trained`` policy
plugin is checked against the policy contract like every other (``tests/test_checks.py``)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from ..plugin.checks import tiny_world
from ._deps import require
from .policy import save_policy
from .spaces import express_space, observation_space, symmetric

FEATURES = ["own", "neighbours", "step"]


class _Spaces(gym.Env):
    """Only the spaces, for building a model; never stepped."""

    def __init__(self, observation, action):
        self.observation_space, self.action_space = observation, action

    def reset(self, *, seed=None, options=None):
        return np.zeros(self.observation_space.shape, dtype=np.float32), {}

    def step(self, action):
        return self.reset()[0], 0.0, False, True, {}


def checker_policy(directory: str | Path, seed: int = 0) -> Path:
    """An untrained PPO policy for ``sim.checks.tiny_world`` (K = 3, observing own, neighbours, step)."""
    world, _ = tiny_world()
    observation, action = observation_space(FEATURES, world.k), express_space(world.k)
    model = require("stable_baselines3").PPO("MlpPolicy", _Spaces(observation, symmetric(action)), n_steps=8,
                                             batch_size=8, seed=seed, device="cpu")
    spec = {"format": 1, "algo": "ppo", "groups": [], "dimensions": list(world.space.dimensions),
            "observe": FEATURES, "episode": 10, "action": "express", "action_low": action.low.tolist(),
            "action_high": action.high.tolist(), "symmetric": True}
    return save_policy(model, spec, Path(directory))
