"""``valuesim train --backend torchrl``: TorchRL's PPO over :class:`~sim.marl.torchrl_env.TorchRLEnv`.

Every piece that learns is TorchRL's: a ``ProbabilisticActor`` with a ``TanhNormal`` head on the action's
Box, a value ``TensorDictModule``, ``ClipPPOLoss`` with its GAE value estimator, a ``Collector`` (the former ``SyncDataCollector``)
over the batched environment (B worlds per frame, tensors on the simulation's device) and a replay buffer
sampled without replacement for the epochs; the loop that wires them is the one of TorchRL's multi-agent
PPO tutorial. One shared policy and one shared critic act for every rl agent of every world (independent
PPO with parameter sharing; the critic sees what the agent sees).

Settings (``--param``, SB3's names where they mean the same): ``n_steps`` (steps per world per batch),
``batch_size`` (agent-steps per minibatch), ``n_epochs``, ``learning_rate``, ``gamma``, ``gae_lambda``,
``clip_range``, ``ent_coef``, ``vf_coef``, ``max_grad_norm``, ``hidden`` (layer widths). ``timesteps``
counts agent-steps, as for SB3: the collector's frames are world-steps, ``timesteps / A`` of them.

Files: ``checkpoints/policy_<timesteps>_steps.pt`` (actor, critic, optimiser, counters, RNG), and the
trained policy ``policy.pt`` with ``policy.json`` (``"backend": "torchrl"``), loaded by
:func:`sim.marl.policy.load_policy` into the same actor.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._deps import require
from .torchrl_env import TorchRLEnv

_td = require("tensordict")
_tdnn = require("tensordict.nn")
_modules = require("torchrl.modules")
_collectors = require("torchrl.collectors")
_data = require("torchrl.data")
_objectives = require("torchrl.objectives")
_envs_utils = require("torchrl.envs.utils")

POLICY_FILE = "policy.pt"
DEFAULTS = {"n_steps": None, "batch_size": None, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99,
            "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
            "hidden": [64, 64]}
OBS, ACTION = ("agents", "observation"), ("agents", "action")


def build_actor(obs_dim: int, action_dim: int, low, high, hidden) -> "_modules.ProbabilisticActor":
    """TorchRL's stochastic actor: an MLP to (loc, scale), a ``TanhNormal`` onto the Box ``[low, high]``."""
    net = nn.Sequential(_modules.MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=list(hidden),
                                     activation_class=nn.Tanh),
                        _tdnn.NormalParamExtractor())
    module = _tdnn.TensorDictModule(net, in_keys=[OBS], out_keys=[("agents", "loc"), ("agents", "scale")])
    return _modules.ProbabilisticActor(module, in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[ACTION],
                                       distribution_class=_modules.TanhNormal,
                                       distribution_kwargs={"low": torch.as_tensor(low, dtype=torch.float32),
                                                            "high": torch.as_tensor(high, dtype=torch.float32)},
                                       return_log_prob=True)


def build_critic(obs_dim: int, hidden) -> "_tdnn.TensorDictModule":
    net = _modules.MLP(in_features=obs_dim, out_features=1, num_cells=list(hidden), activation_class=nn.Tanh)
    return _tdnn.TensorDictModule(net, in_keys=[OBS], out_keys=[("agents", "state_value")])


def act(actor, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    """The actor's actions ``[E, D]`` for observations ``[E, F]`` (each row one agent)."""
    e = obs.shape[0]
    td = _td.TensorDict({"agents": _td.TensorDict({"observation": obs.to(torch.float32)[:, None]},
                                                  batch_size=(e, 1))}, batch_size=(e,), device=obs.device)
    kind = _envs_utils.ExplorationType.DETERMINISTIC if deterministic else _envs_utils.ExplorationType.RANDOM
    with torch.no_grad(), _envs_utils.set_exploration_type(kind):
        actor(td)
    return td.get(ACTION)[:, 0]


class TorchRLModel:
    """A saved TorchRL policy with SB3's two-method face (``observation_space``, ``predict``) for
    :class:`sim.marl.policy.LoadedPolicy`."""

    def __init__(self, actor, obs_dim: int, action_dim: int):
        from gymnasium.spaces import Box

        self.actor, self.action_dim = actor, action_dim
        self.observation_space = Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)

    @classmethod
    def load(cls, path: str | Path) -> "TorchRLModel":
        saved = torch.load(str(path), map_location="cpu", weights_only=True)
        actor = build_actor(saved["obs_dim"], saved["action_dim"], saved["low"], saved["high"], saved["hidden"])
        actor.load_state_dict(saved["actor"])
        return cls(actor, saved["obs_dim"], saved["action_dim"])

    def predict(self, obs: np.ndarray, deterministic: bool = True):
        return act(self.actor, torch.as_tensor(obs), deterministic).numpy(), None


def _settings(vector, given: dict) -> dict:
    p = {**DEFAULTS, **given}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        from ..errors import ValuesimError

        raise ValuesimError(f"--param {unknown[0]}: not a torchrl PPO setting ({', '.join(DEFAULTS)})")
    p["n_steps"] = int(p["n_steps"] or max(8, math.ceil(2048 / vector.num_envs)))
    p["batch_size"] = int(p["batch_size"] or min(p["n_steps"] * vector.num_envs, 512))
    return p


def run(path: Path, scenario, vector, record: dict, resume_from: Path | None, progress_bar: bool) -> Path:
    """Train (or go on training from ``resume_from``) and write the run directory (``sim.marl.train``).

    TorchRL's modules initialise and sample from torch's global generators (the CPU's, and the training
    device's on CUDA), so those are seeded for this training only and put back afterwards.
    """
    seed, device = record["settings"]["seed"], torch.device(vector.device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # not torch.manual_seed: it seeds every GPU, and fork_rng restores only the ones it was given
        torch.random.default_generator.manual_seed(seed)
        for cuda in devices:
            with torch.cuda.device(cuda):
                torch.cuda.manual_seed(seed)
        return _run(path, scenario, vector, record, resume_from, progress_bar)


def _run(path: Path, scenario, vector, record: dict, resume_from: Path | None, progress_bar: bool) -> Path:
    from .policy import policy_spec, write_spec
    from .train import _has, evaluate, final_returns, record_complete, record_stopped

    settings = record["settings"]
    p = _settings(vector, settings["algo_params"])
    vector.autoreset = False
    env = TorchRLEnv(vector)
    env.set_seed(settings["seed"])
    a, device = vector.agents_per_world, env.device
    obs_dim, action_dim = vector.observation_space.shape[0], env.action_dim
    actor = build_actor(obs_dim, action_dim, env.action_low.to(device), env.action_high.to(device),
                        p["hidden"]).to(device)
    critic = build_critic(obs_dim, p["hidden"]).to(device)
    loss = _objectives.ClipPPOLoss(actor_network=actor, critic_network=critic, clip_epsilon=p["clip_range"],
                                   entropy_coeff=p["ent_coef"], critic_coeff=p["vf_coef"], normalize_advantage=True)
    loss.set_keys(reward=("agents", "reward"), action=ACTION, value=("agents", "state_value"),
                  done=("agents", "done"), terminated=("agents", "terminated"))
    loss.make_value_estimator(_objectives.ValueEstimators.GAE, gamma=p["gamma"], lmbda=p["gae_lambda"])
    optimiser = torch.optim.Adam(loss.parameters(), lr=p["learning_rate"])
    done_steps = 0
    if resume_from is not None:
        # onto the CPU: the generator states must stay there (torch.set_rng_state refuses a CUDA tensor), and
        # load_state_dict copies weights and Adam's moments onto the device of the modules they go into
        saved = torch.load(str(resume_from), map_location="cpu", weights_only=False)
        actor.load_state_dict(saved["actor"])
        critic.load_state_dict(saved["critic"])
        optimiser.load_state_dict(saved["optimiser"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        done_steps = int(saved["timesteps"])
    frames_per_batch = vector.worlds * p["n_steps"]
    remaining = max(settings["timesteps"] - done_steps, 0)
    total_frames = math.ceil(remaining / a / frames_per_batch) * frames_per_batch
    minibatch = max(1, p["batch_size"] // a)  # world-steps per minibatch (each holds A agent-steps)
    logger = None
    if _has("tensorboard"):
        logger = require("torchrl.record.loggers.tensorboard").TensorboardLogger(
            exp_name=settings["algo"], log_dir=str(path / "tensorboard"))
    bar = require("tqdm").tqdm(total=settings["timesteps"], initial=done_steps, unit="step") \
        if progress_bar and _has("tqdm") else None
    (path / "checkpoints").mkdir(exist_ok=True)
    started = time.perf_counter()

    def checkpoint(steps: int) -> None:
        tmp = path / "checkpoints" / ".checkpoint.tmp"
        # on CUDA the actor samples from the device's generator: it is saved too, so a resumed run draws on
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        torch.save({"actor": actor.state_dict(), "critic": critic.state_dict(), "optimiser": optimiser.state_dict(),
                    "timesteps": steps, "rng": torch.get_rng_state(), "cuda_rng": cuda_rng}, str(tmp))
        tmp.replace(path / "checkpoints" / f"policy_{steps}_steps.pt")

    def actor_fn(obs: torch.Tensor) -> torch.Tensor:
        return act(actor, obs).reshape(obs.shape[0], *vector.action_space.shape)

    try:
        if total_frames:
            collector = _collectors.Collector(env, actor, frames_per_batch=frames_per_batch,
                                                      total_frames=total_frames, device=device, storing_device=device,
                                                      auto_register_policy_transforms=False)
            buffer = _data.ReplayBuffer(storage=_data.LazyTensorStorage(frames_per_batch, device=device),
                                        sampler=_data.SamplerWithoutReplacement(), batch_size=minibatch)
            for batch in collector:
                shape = batch.get_item_shape(("next", "agents", "reward"))
                for key in ("done", "terminated"):
                    batch.set(("next", "agents", key), batch.get(("next", key)).unsqueeze(-1).expand(shape))
                with torch.no_grad():
                    loss.value_estimator(batch, params=loss.critic_network_params,
                                         target_params=loss.target_critic_network_params)
                buffer.extend(batch.reshape(-1))
                for _ in range(p["n_epochs"]):
                    for _ in range(max(1, frames_per_batch // minibatch)):
                        parts = loss(buffer.sample())
                        total = parts["loss_objective"] + parts["loss_critic"] + parts.get("loss_entropy", 0.0)
                        total.backward()
                        nn.utils.clip_grad_norm_(loss.parameters(), p["max_grad_norm"])
                        optimiser.step()
                        optimiser.zero_grad()
                collector.update_policy_weights_()
                before, done_steps = done_steps, done_steps + batch.numel() * a
                if bar is not None:
                    bar.update(done_steps - before)
                mean_reward = float(batch.get(("next", "agents", "reward")).mean())
                if logger is not None:
                    logger.log_scalar("train/mean_reward", mean_reward, step=done_steps)
                    logger.log_scalar("train/loss_objective", float(parts["loss_objective"].detach()), step=done_steps)
                if done_steps // settings["eval_every"] > before // settings["eval_every"]:
                    value = evaluate(scenario, actor_fn, settings)
                    if logger is not None:
                        logger.log_scalar("eval/mean_return", value, step=done_steps)
                    with open(path / "evaluations.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"timesteps": done_steps, "return": value}) + "\n")
                if done_steps // settings["checkpoint_every"] > before // settings["checkpoint_every"]:
                    checkpoint(done_steps)
            collector.shutdown()
        checkpoint(done_steps)
        tmp = path / ".policy.tmp.pt"
        torch.save({"actor": {k: v.cpu() for k, v in actor.state_dict().items()}, "obs_dim": obs_dim,
                    "action_dim": action_dim, "low": env.action_low, "high": env.action_high,
                    "hidden": list(p["hidden"])}, str(tmp))
        tmp.replace(path / POLICY_FILE)
        write_spec(path, {**policy_spec(vector, settings["algo"]), "backend": "torchrl", "file": POLICY_FILE,
                          "symmetric": False})
        trained, random = final_returns(scenario, actor_fn, vector, settings)
    except BaseException as exc:
        record_stopped(path, record, exc)
        raise
    finally:
        if bar is not None:
            bar.close()
    record_complete(path, record, started, done_steps, trained, random, settings, vector)
    return path
