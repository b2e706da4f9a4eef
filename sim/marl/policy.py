"""A trained policy as a file: the SB3 model (``policy.zip``; ``policy.pt`` for a TorchRL actor) and what it
observes (``policy.json``).

``policy.json`` holds the group's observation features, episode length, action name and space, and the
value dimensions, so the policy can act in any scenario whose group it fits, computing the very
observations it was trained on (``sim.marl.spaces.observe``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import TypeAdapter

from ..config.schema import RLFeature
from ..core.state import Group, World
from ..errors import ValuesimError
from ._deps import require
from .spaces import clip_action, from_symmetric, observation_space, observe

POLICY_FILE, SPEC_FILE = "policy.zip", "policy.json"
TORCHRL_FILE = "policy.pt"  # a policy trained with --backend torchrl (sim.marl.torchrl_train)
_FEATURES = TypeAdapter(list[RLFeature])


def policy_spec(vector, algo: str) -> dict:
    """What ``policy.json`` records for the policy trained on ``vector`` (a :class:`~sim.marl.vector.VectorEnv`)."""
    first = vector.groups[0]
    space = vector.action_space
    return {"format": 1, "algo": algo, "groups": [g.name for g in vector.groups],
            "dimensions": list(vector.simulation.world.space.dimensions),
            "observe": _FEATURES.dump_python(first.spec.observe, mode="json"), "episode": first.episode,
            "action": first.spec.action, "action_low": space.low.tolist(), "action_high": space.high.tolist(),
            "symmetric": True}  # the model acts in [-1, 1], mapped onto the action's Box (sim.marl.sb3)


def save_policy(model, spec: dict, directory: Path) -> Path:
    """Write ``policy.zip`` (the model) and ``policy.json`` (``spec``) into ``directory``, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".policy.tmp.zip"
    model.save(str(tmp))
    tmp.replace(directory / POLICY_FILE)
    write_spec(directory, spec)
    return directory / POLICY_FILE


def write_spec(directory: Path, spec: dict) -> None:
    """Write ``policy.json`` (what a scenario's ``trained:`` policy reads back) into ``directory``, atomically."""
    from ..runs.runlog import atomic_write_bytes

    atomic_write_bytes(directory / SPEC_FILE, json.dumps(spec, indent=2).encode())


class LoadedPolicy:
    """A saved policy, ready to act for a group: ``act(state, world, group)`` -> ``[B, n, *action shape]``."""

    def __init__(self, model, spec: dict, deterministic: bool = True):
        self.model, self.spec, self.deterministic = model, spec, deterministic
        self.features = _FEATURES.validate_python(spec["observe"])
        self.action = spec["action"]
        gym = require("gymnasium")
        self.action_space = gym.spaces.Box(np.array(spec["action_low"], dtype=np.float32),
                                           np.array(spec["action_high"], dtype=np.float32), dtype=np.float32)

    def check(self, world: World, group: Group) -> None:
        """Refuse a world the policy was not trained for (other value dimensions, another observation size)."""
        if list(world.space.dimensions) != self.spec["dimensions"]:
            raise ValueError(f"the policy was trained on value dimensions {self.spec['dimensions']}, this scenario "
                             f"has {list(world.space.dimensions)}")
        names = [g.name for g in world.groups]
        for feature in self.features:
            needed = getattr(feature, "group", None)
            if needed is not None and needed not in names:
                raise ValueError(f"the policy observes group {needed!r}, which this scenario lacks")
        want = observation_space(self.features, world.k).shape
        if tuple(self.model.observation_space.shape) != tuple(want):
            raise ValueError(f"policy.json's observation {list(want)} does not match the model's "
                             f"{list(self.model.observation_space.shape)}")

    def act(self, state, world: World, group: Group) -> torch.Tensor:
        obs = observe(self.features, self.spec["episode"], state, world, group)
        flat = obs.reshape(-1, obs.shape[-1]).cpu().numpy()
        action, _ = self.model.predict(flat, deterministic=self.deterministic)
        action = torch.as_tensor(np.asarray(action, dtype=np.float32), device=state.values.device)
        action = from_symmetric(action, self.action_space) if self.spec.get("symmetric") else \
            clip_action(action, self.action_space)
        return action.reshape(world.b, group.size, *self.action_space.shape)


def load_policy(path: str | Path, deterministic: bool = True) -> LoadedPolicy:
    """The policy saved at ``path`` (its ``policy.zip`` or the directory holding it)."""
    path = Path(path)
    if path.is_dir() and (path / SPEC_FILE).is_file() and \
            json.loads((path / SPEC_FILE).read_text()).get("backend") == "rllib":
        from .rllib_train import RLlibModel

        spec = json.loads((path / SPEC_FILE).read_text())
        return LoadedPolicy(RLlibModel.load(path / spec["file"]), spec, deterministic)
    if path.is_dir():
        zip_path = path / POLICY_FILE
        if not zip_path.is_file() and (path / TORCHRL_FILE).is_file():
            zip_path = path / TORCHRL_FILE
    else:
        zip_path = path
    spec_path = zip_path.with_name(SPEC_FILE)
    if not zip_path.is_file() or not spec_path.is_file():
        raise ValuesimError(f"a trained policy is {POLICY_FILE} with {SPEC_FILE} beside it; {path} has "
                            f"{'no ' + SPEC_FILE if zip_path.is_file() else 'no ' + zip_path.name}")
    spec = json.loads(spec_path.read_text())
    if spec.get("backend") == "torchrl":
        from .torchrl_train import TorchRLModel

        return LoadedPolicy(TorchRLModel.load(zip_path), spec, deterministic)
    algos = {"ppo": "PPO"}
    sb3 = require("stable_baselines3")
    model = getattr(sb3, algos[spec["algo"]]).load(str(zip_path), device="cpu")
    return LoadedPolicy(model, spec, deterministic)
