"""``valuesim train``: train a shared policy for a scenario's rl agents with a library's own algorithm.

A training run is a directory like a simulation run's (``runs/<scenario>__<UTC time>__s<seed>__train``):

```
scenario.yaml        the resolved scenario
train.json           settings, versions, status (running | complete | failed), and the evaluation: the mean
                     episode return per agent of the trained policy and of the random policy
evaluations.jsonl    the periodic evaluations (timesteps, mean return of the deterministic policy)
checkpoints/         the algorithm's checkpoints (``policy_<timesteps>_steps.zip``): ``--resume`` goes on from
                     the latest
tensorboard/         TensorBoard logs, when tensorboard is installed
policy.zip           the trained policy, with policy.json (what it observes and does) beside it:
                     ``policy: {trained: {path: runs/<run>/policy.zip}}`` in a scenario
```

Backends: ``sb3`` (stable-baselines3's PPO over :class:`~sim.marl.sb3.SB3VecEnv`), ``torchrl`` (TorchRL's
``ClipPPOLoss``, GAE and ``Collector`` over :class:`~sim.marl.torchrl_env.TorchRLEnv`, tensors on the
device: ``sim.marl.torchrl_train``; its policy is ``policy.pt``, its checkpoints ``.pt``), ``rllib`` (RLlib's PPO
on a local Ray instance or ``RAY_ADDRESS``'s cluster over :class:`~sim.marl.rllib_env.RLlibEnv`:
``sim.marl.rllib_train``; its policy is ``policy_rllib/``, its checkpoints directories). The algorithm is the
library's; nothing here learns.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config.scenario import Scenario, load_scenario, scenario_from_yaml
from ..errors import ValuesimError
from ..runs.runlog import atomic_write_bytes, git_commit, new_run_dir, versions
from ._deps import require
from .spaces import from_symmetric
from .policy import policy_spec, save_policy
from .vector import VectorEnv

BACKENDS = ("sb3", "torchrl", "rllib")
ALGOS = {"sb3": {"ppo": "PPO"}, "torchrl": {"ppo": "ClipPPOLoss"}, "rllib": {"ppo": "PPO"}}
EVAL_STREAM = 1 << 20  # evaluation worlds run on streams from here: never the training worlds' streams
Progress = Callable[[int, int], None]


def train(scenario: Scenario | str | Path, *, backend: str = "sb3", algo: str = "ppo", timesteps: int = 50_000,
          worlds: int | None = None, device: str = "auto", seed: int | None = None, out: str | Path | None = None,
          runs_dir: str | Path = "runs", overrides=(), algo_params: dict[str, Any] | None = None,
          eval_every: int | None = None, eval_worlds: int = 8, checkpoint_every: int | None = None,
          progress_bar: bool = False, tag: str = "train", command: list[str] | None = None) -> Path:
    """Train the scenario's rl agents and return the run directory (see the module docstring).

    ``timesteps`` counts agent-steps (one action of one agent), as SB3 does; ``worlds`` (B) is the batch;
    ``algo_params`` go to the algorithm (``{"n_steps": 64, "learning_rate": 1e-3}``); ``eval_every`` and
    ``checkpoint_every`` are in agent-steps too (default: ten of each over the run).
    """
    if backend not in BACKENDS:
        raise ValuesimError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if algo not in ALGOS[backend]:
        raise ValuesimError(f"--algo must be one of {', '.join(ALGOS[backend])} for {backend}, got {algo!r}")
    if timesteps < 1:
        raise ValuesimError(f"--timesteps must be at least 1, got {timesteps}")
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, overrides)
    seed = scenario.spec.seed if seed is None else seed
    device = _device(device)
    vector = VectorEnv(scenario, worlds=worlds, seed=seed, device=device)
    path = Path(out) if out is not None else new_run_dir(Path(runs_dir), scenario.name, seed, tag)
    if path.exists() and any(path.iterdir()):
        raise ValuesimError(f"run directory {path} exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    settings = {"backend": backend, "algo": algo, "timesteps": timesteps, "worlds": vector.worlds,
                "agents_per_world": vector.agents_per_world, "device": device, "seed": seed,
                "algo_params": dict(algo_params or {}), "eval_worlds": eval_worlds,
                "eval_every": eval_every or max(1, timesteps // 10),
                "checkpoint_every": checkpoint_every or max(1, timesteps // 10)}
    atomic_write_bytes(path / "scenario.yaml", scenario.to_yaml().encode())
    record = {"scenario": scenario.name, "source": scenario.source.name, "base_dir": str(scenario.base_dir),
              "settings": settings, "command": command, "versions": _versions(), "git_commit": git_commit(),
              "started": _now(), "status": "running"}
    _write_record(path, record)
    return _run(path, scenario, vector, record, resume_from=None, progress_bar=progress_bar)


def resume(run_dir: str | Path, *, progress_bar: bool = False) -> Path:
    """Go on with an interrupted training run from its latest checkpoint, to its ``timesteps``."""
    path = Path(run_dir)
    record_path = path / "train.json"
    if not record_path.is_file():
        raise ValuesimError(f"{path} is not a training run (no train.json)")
    record = json.loads(record_path.read_text())
    if record["status"] == "complete":
        raise ValuesimError(f"{path} is complete: nothing to resume")
    suffix = {"torchrl": ".pt", "rllib": ""}.get(record["settings"]["backend"], ".zip")  # rllib: directories
    checkpoints = sorted((path / "checkpoints").glob(f"policy_*_steps{suffix}"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise ValuesimError(f"{path} has no checkpoint to resume from (checkpoints/ is empty)")
    settings = record["settings"]
    scenario = scenario_from_yaml((path / "scenario.yaml").read_text(), name=record["source"],
                                  base_dir=record["base_dir"])
    vector = VectorEnv(scenario, worlds=settings["worlds"], seed=settings["seed"], device=settings["device"])
    record.update(status="running", resumed=_now())
    _write_record(path, record)
    return _run(path, scenario, vector, record, resume_from=checkpoints[-1], progress_bar=progress_bar)


def _run(path: Path, scenario: Scenario, vector: VectorEnv, record: dict, resume_from: Path | None,
         progress_bar: bool) -> Path:
    settings = record["settings"]
    if settings["backend"] == "torchrl":
        from .torchrl_train import run

        return run(path, scenario, vector, record, resume_from, progress_bar)
    if settings["backend"] == "rllib":
        from .rllib_train import run

        return run(path, scenario, vector, record, resume_from, progress_bar)
    sb3 = require("stable_baselines3")
    callbacks = require("stable_baselines3.common.callbacks")
    from .sb3 import SB3VecEnv

    env = require("stable_baselines3.common.vec_env").VecMonitor(SB3VecEnv(vector))
    n = vector.num_envs
    cls = getattr(sb3, ALGOS[settings["backend"]][settings["algo"]])
    started = time.perf_counter()
    try:
        if resume_from is None:
            model = cls("MlpPolicy", env, seed=settings["seed"], device="cpu", verbose=0,
                        tensorboard_log=str(path / "tensorboard") if _has("tensorboard") else None,
                        **_defaults(vector, settings["algo_params"]))
        else:
            model = cls.load(str(resume_from), env=env, device="cpu")
        evaluator = _Evaluations(scenario, settings, vector.action_space, path / "evaluations.jsonl",
                                 cls_callback=callbacks.BaseCallback)
        checkpoints = callbacks.CheckpointCallback(save_freq=max(1, settings["checkpoint_every"] // n),
                                                   save_path=str(path / "checkpoints"), name_prefix="policy")
        remaining = settings["timesteps"] - (model.num_timesteps if resume_from is not None else 0)
        model.learn(total_timesteps=max(remaining, 0), callback=[checkpoints, evaluator.callback],
                    progress_bar=progress_bar and _has("tqdm") and _has("rich"),
                    reset_num_timesteps=resume_from is None, tb_log_name=settings["algo"])
        save_policy(model, policy_spec(vector, settings["algo"]), path)
        trained, random = final_returns(scenario, _model_actor(model, vector.action_space), vector, settings)
    except BaseException as exc:
        record_stopped(path, record, exc)
        raise
    record_complete(path, record, started, int(model.num_timesteps), trained, random, settings, vector)
    return path


def final_returns(scenario: Scenario, actor, vector, settings: dict) -> tuple[float, float]:
    """The trained ``actor``'s evaluation return and a random actor's, for ``train.json``."""
    return (evaluate(scenario, actor, settings),
            evaluate(scenario, random_actor(vector.action_space, settings["seed"]), settings))


def evaluate(scenario: Scenario, actor, settings: dict) -> float:
    """The mean episode return per agent of ``actor`` (observations ``[E, F]`` -> actions) over one episode in
    each of ``eval_worlds`` worlds on the evaluation streams."""
    worlds = settings["eval_worlds"]
    vector = VectorEnv(scenario, streams=list(range(EVAL_STREAM, EVAL_STREAM + worlds)), seed=settings["seed"],
                       device=settings["device"], autoreset=False)
    obs = vector.reset()
    total = torch.zeros(vector.num_envs, dtype=torch.float64, device=obs.device)
    for _ in range(vector.episode):
        out = vector.step(actor(obs))
        total += out.reward.double()
        obs = out.observation
    return float(total.mean())


def random_actor(space, seed: int):
    """Uniform actions in the Box ``space``, from a generator of its own (the return to beat)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)

    def act(obs: torch.Tensor) -> torch.Tensor:
        u = torch.rand((obs.shape[0], *space.shape), generator=generator)
        return (low + u * (high - low)).to(obs.device)

    return act


def _model_actor(model, space):
    """The model's deterministic actions, mapped from [-1, 1] onto ``space`` as in training."""
    def act(obs: torch.Tensor) -> torch.Tensor:
        action, _ = model.predict(obs.cpu().numpy(), deterministic=True)
        return from_symmetric(torch.as_tensor(np.asarray(action, dtype=np.float32), device=obs.device), space)

    return act


class _Evaluations:
    """Evaluate the deterministic policy every ``eval_every`` agent-steps; one JSON line each."""

    def __init__(self, scenario: Scenario, settings: dict, space, file: Path, cls_callback):
        outer = self
        self.scenario, self.settings, self.space, self.file = scenario, settings, space, file

        class Callback(cls_callback):
            def _on_step(self) -> bool:
                every = outer.settings["eval_every"]
                if self.num_timesteps // every > (self.num_timesteps - self.training_env.num_envs) // every:
                    value = evaluate(outer.scenario, _model_actor(self.model, outer.space), outer.settings)
                    self.logger.record("eval/mean_return", value)
                    with open(outer.file, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"timesteps": int(self.num_timesteps), "return": value}) + "\n")
                return True

        self.callback = Callback()


def _defaults(vector: VectorEnv, given: dict[str, Any]) -> dict[str, Any]:
    """PPO's rollout sized to the batch: about 2048 agent-steps per update at least, whole minibatches."""
    n_steps = given.get("n_steps") or max(8, math.ceil(2048 / vector.num_envs))
    batch = given.get("batch_size") or min(n_steps * vector.num_envs, 512)
    return {**given, "n_steps": n_steps, "batch_size": batch}


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValuesimError(f"--device must be auto, cpu, cuda or cuda:<index>, got {name!r}")
    return name


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = versions()
    for dist in ("gymnasium", "pettingzoo", "stable-baselines3", "torchrl", "tensordict", "ray", "tensorboard"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_record(path: Path, record: dict) -> None:
    atomic_write_bytes(path / "train.json", (json.dumps(record, indent=2) + "\n").encode())


def record_stopped(path: Path, record: dict, exc: BaseException) -> None:
    """Mark a training run failed (or interrupted, for Ctrl-C) in its ``train.json``, whatever the backend."""
    record.update(status="failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                  error=f"{type(exc).__name__}: {exc}", ended=_now())
    _write_record(path, record)


def record_complete(path: Path, record: dict, started: float, timesteps: int, trained: float, random: float,
                    settings: dict, vector) -> None:
    """Mark a training run complete with its final returns (the trained policy's and a random one's)."""
    record.update(status="complete", ended=_now(), seconds=round(time.perf_counter() - started, 3),
                  timesteps_done=timesteps,
                  evaluation={"return": trained, "random_return": random, "worlds": settings["eval_worlds"],
                              "episode": vector.episode})
    _write_record(path, record)
