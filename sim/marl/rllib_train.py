"""``valuesim train --backend rllib``: RLlib's PPO over :class:`~sim.marl.rllib_env.RLlibEnv`, on Ray.

RLlib does everything that learns (its new API stack: env runners, a PPO ``RLModule`` and ``Learner``); one
shared policy, ``"shared"``, acts for every rl agent (``policy_mapping_fn``). Ray is a local instance
(``ray.init(num_cpus=...)``) unless ``RAY_ADDRESS`` names a cluster, in which case env runners
(``--param num_env_runners=N``) sample there; the instance is shut down at the end if this started it.

Settings (``--param``, SB3's names where they mean the same, mapped onto RLlib's): ``n_steps`` (steps per
world per batch: ``train_batch_size_per_learner = worlds * n_steps * A``), ``batch_size`` (minibatch),
``n_epochs``, ``learning_rate``, ``gamma``, ``gae_lambda``, ``clip_range``, ``ent_coef``, ``vf_coef``,
``max_grad_norm``, ``num_env_runners`` (default 0: sampling in this process), ``num_cpus`` (of a local
instance, default 1). ``--worlds`` is ``num_envs_per_env_runner``. ``timesteps`` counts agent-steps.

On a cluster the env runners are Ray workers in other processes and on other machines: they get the scenario as
text in ``env_config`` and import ``sim.marl.rllib_env`` (RLlib pickles the env class by reference), so every
node needs valuesim installed (the ``ray`` extra), and files the scenario names by path must exist there too.
``train.json``'s ``"ray"`` says where the run trained: the GCS address of the instance, whether it was a local
one started by this run (``"local"``), and the number of nodes alive.

Files: ``checkpoints/policy_<timesteps>_steps/`` (RLlib's algorithm checkpoints; ``--resume`` restores the
latest), and the trained policy ``policy_rllib/`` (RLlib's ``RLModule`` checkpoint) with ``policy.json``
(``"backend": "rllib"``), loaded by :func:`sim.marl.policy.load_policy`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ._deps import require

POLICY_DIR = "policy_rllib"
MODULE = "shared"
DEFAULTS = {"n_steps": None, "batch_size": None, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99,
            "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
            "num_env_runners": 0, "num_cpus": 1}


def _mean_action(module, obs: torch.Tensor, shape) -> torch.Tensor:
    """The RLlib module's deterministic action (its Gaussian's mean) in [-1, 1] for observations ``[E, F]``."""
    with torch.no_grad():
        out = module.forward_inference({"obs": obs.to(torch.float32).cpu()})
    inputs = out["action_dist_inputs"]
    return inputs[:, :inputs.shape[1] // 2].reshape(obs.shape[0], *shape)


class RLlibModel:
    """A saved RLlib ``RLModule`` with SB3's two-method face for :class:`sim.marl.policy.LoadedPolicy`
    (actions in [-1, 1]: ``policy.json`` says ``symmetric``, as RLlib's ``normalize_actions`` trains them)."""

    def __init__(self, module):
        self.module = module
        self.observation_space = module.observation_space
        self.shape = tuple(module.action_space.shape)

    @classmethod
    def load(cls, path: str | Path) -> "RLlibModel":
        rl_module = require("ray.rllib.core.rl_module.rl_module")
        return cls(rl_module.RLModule.from_checkpoint(str(Path(path).resolve())))

    def predict(self, obs: np.ndarray, deterministic: bool = True):
        if not deterministic:
            raise ValueError("the rllib policy acts deterministically only here (its mean action)")
        return _mean_action(self.module, torch.as_tensor(obs), self.shape).numpy(), None


def _settings(vector, given: dict) -> dict:
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        from ..errors import ValuesimError

        raise ValuesimError(f"--param {unknown[0]}: not an rllib PPO setting ({', '.join(DEFAULTS)})")
    p = {**DEFAULTS, **given}
    p["n_steps"] = int(p["n_steps"] or max(8, math.ceil(2048 / vector.num_envs)))
    p["batch_size"] = int(p["batch_size"] or min(p["n_steps"] * vector.num_envs, 512))
    return p


def _config(scenario, vector, settings: dict, p: dict):
    from .rllib_env import RLlibEnv, env_config

    ppo = require("ray.rllib.algorithms.ppo")
    return (ppo.PPOConfig()
            .environment(RLlibEnv, env_config=env_config(scenario, seed=settings["seed"], device="cpu"))
            .framework("torch")
            .env_runners(num_env_runners=int(p["num_env_runners"]), num_envs_per_env_runner=vector.worlds)
            .training(train_batch_size_per_learner=vector.num_envs * p["n_steps"], minibatch_size=p["batch_size"],
                      num_epochs=int(p["n_epochs"]), lr=float(p["learning_rate"]), gamma=float(p["gamma"]),
                      lambda_=float(p["gae_lambda"]), clip_param=float(p["clip_range"]),
                      entropy_coeff=float(p["ent_coef"]), vf_loss_coeff=float(p["vf_coef"]),
                      grad_clip=float(p["max_grad_norm"]))
            .multi_agent(policies={MODULE}, policy_mapping_fn=lambda agent_id, *args, **kwargs: MODULE)
            .debugging(seed=settings["seed"]))


def run(path: Path, scenario, vector, record: dict, resume_from: Path | None, progress_bar: bool) -> Path:
    """Train (or go on from ``resume_from``) and write the run directory (``sim.marl.train``)."""
    from .policy import policy_spec, write_spec
    from .spaces import from_symmetric
    from .train import evaluate, final_returns, record_complete, record_stopped
    from ..shapley.executors import ray_cluster

    ray = require("ray")
    settings = record["settings"]
    p = _settings(vector, settings["algo_params"])
    started_ray = not ray.is_initialized()  # this run connects (and disconnects at the end)
    address = os.environ.get("RAY_ADDRESS") if started_ray else None
    if started_ray:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=int(p["num_cpus"]), include_dashboard=False, log_to_driver=False)
    started, a = time.perf_counter(), vector.agents_per_world
    done_steps = 0
    algo = None
    record["ray"] = ray_cluster(ray, started_ray and not address)  # where it trained, for train.json
    try:
        algo = _config(scenario, vector, settings, p).build_algo()
        if resume_from is not None:
            algo.restore_from_path(str(resume_from.resolve()))
            done_steps = int(resume_from.name.split("_")[1])
        module = algo.get_module(MODULE)
        shape = tuple(vector.action_space.shape)

        def actor_fn(obs: torch.Tensor) -> torch.Tensor:
            return from_symmetric(_mean_action(module, obs, shape).to(obs.device), vector.action_space)

        (path / "checkpoints").mkdir(exist_ok=True)
        while done_steps < settings["timesteps"]:
            result = algo.train()
            # RLlib's lifetime count of world-steps (restored with a checkpoint), times A agents
            before, done_steps = done_steps, int(result["num_env_steps_sampled_lifetime"]) * a
            if done_steps // settings["eval_every"] > before // settings["eval_every"]:
                value = evaluate(scenario, actor_fn, settings)
                with open(path / "evaluations.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"timesteps": done_steps, "return": value}) + "\n")
            if done_steps // settings["checkpoint_every"] > before // settings["checkpoint_every"]:
                algo.save_to_path(str((path / "checkpoints" / f"policy_{done_steps}_steps").resolve()))
        module.save_to_path(str((path / POLICY_DIR).resolve()))
        write_spec(path, {**policy_spec(vector, settings["algo"]), "backend": "rllib", "file": POLICY_DIR,
                          "symmetric": True})
        trained, random = final_returns(scenario, actor_fn, vector, settings)
    except BaseException as exc:
        record_stopped(path, record, exc)
        raise
    finally:
        if algo is not None:
            algo.stop()
        if started_ray:
            ray.shutdown()
    record_complete(path, record, started, done_steps, trained, random, settings, vector)
    return path
