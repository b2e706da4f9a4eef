"""Multi-agent RL over the batched engine: every scenario with ``rl`` groups is an environment.

- :class:`~sim.marl.vector.VectorEnv`: B worlds x the RL agents, flattened for one shared policy, tensors
  on the device, one engine call per step, ended worlds restarted by the engine (no RL library needed);
- :func:`~sim.marl.pettingzoo_env.parallel_env` / :func:`~sim.marl.pettingzoo_env.aec_env`: one world as a
  PettingZoo ``ParallelEnv`` and its AEC form (the ``rl`` extra);
- :class:`~sim.marl.sb3.SB3VecEnv`: stable-baselines3's ``VecEnv`` (the ``rl`` extra);
- :class:`~sim.marl.torchrl_env.TorchRLEnv` (and ``sim.marl.torchrl_env.torchrl_env(scenario, B)``): TorchRL's ``EnvBase``
  with ``batch_size=[B]``, tensors on the device (the ``rl`` extra);
- :class:`~sim.marl.rllib_env.RLlibEnv`: RLlib's ``MultiAgentEnv`` of one world (the ``ray`` extra);
- :func:`~sim.marl.train.train`: ``valuesim train`` (SB3's PPO, TorchRL's: ``sim.marl.torchrl_train``, or RLlib's:
  ``sim.marl.rllib_train``), the trained policy saved in the run
  directory and named in a scenario as ``policy: {trained: {path: ...}}`` (``sim.marl.policy``).

The RL libraries are imported only inside this package; a missing one names the extra to install.
"""

__all__ = ["VectorEnv", "parallel_env", "aec_env", "SB3VecEnv", "TorchRLEnv", "train", "load_policy"]


def __getattr__(name: str):
    if name == "VectorEnv":
        from .vector import VectorEnv
        return VectorEnv
    if name in ("parallel_env", "aec_env"):
        from . import pettingzoo_env
        return getattr(pettingzoo_env, name)
    if name == "SB3VecEnv":
        from .sb3 import SB3VecEnv
        return SB3VecEnv
    if name == "TorchRLEnv":
        from .torchrl_env import TorchRLEnv
        return TorchRLEnv
    if name == "train":
        from .train import train
        return train
    if name == "load_policy":
        from .policy import load_policy
        return load_policy
    raise AttributeError(name)
