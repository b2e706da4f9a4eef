"""Agent-steps per second: valuesim's batched environment against PettingZoo + SuperSuit on the same scenario.

This is a benchmark, not a test: it measures and prints, and never fails on a figure. The scenario is
``scenarios/train_influencer.yaml`` with ``--agents`` rl influencers (default 4). For each B in
``--worlds`` it times, after a warm-up, random actions (drawn before the clock starts) through

- ``batched``: ``sim.marl.VectorEnv(scenario, worlds=B)``: one engine call for all B worlds, rewards and
  observations on the device, ended worlds restarted in the same call;
- ``sb3``: the same through ``SB3VecEnv`` (numpy at the boundary, as stable-baselines3 sees it);
- ``torchrl``: the same through ``TorchRLEnv`` (``batch_size=[B]``, TensorDicts on ``--device``, ended worlds
  restarted by TorchRL's ``step_and_maybe_reset``): the GPU training path (``--device cuda``);
- ``supersuit``: the one-world PettingZoo ``ParallelEnv`` through SuperSuit's
  ``pettingzoo_env_to_vec_env_v1`` + ``concat_vec_envs_v1(B, base_class="stable_baselines3")``, the usual
  recipe for training one shared policy with SB3: B copies stepped one after another in Python.

Figures are agent-steps per second (B x agents x steps / time) and the ratio batched / supersuit.

Usage::

    python benchmarks/env_throughput.py
    python benchmarks/env_throughput.py --worlds 1,16,256 --agents 4 --seconds 2 --json env.json
    python benchmarks/env_throughput.py --worlds 4096 --device cuda --supersuit-max 0   # where a GPU is
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import sim  # before torch: sets the threading environment (see DEVELOPERS.md)

import numpy as np
import torch

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "train_influencer.yaml"


def _scenario(agents: int):
    return sim.load_scenario(SCENARIO, [f"population.influencer.count={agents}"])


def _timed(step, actions, seconds: float) -> tuple[int, float]:
    for a in actions[:3]:  # warm-up (kernels compiled, caches filled)
        step(a)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(actions[done % len(actions)])
        done += 1
    return done, time.perf_counter() - start


def batched(scenario, worlds: int, seconds: float, rng: np.random.Generator, device: str = "cpu") -> float:
    from sim.marl import VectorEnv

    env = VectorEnv(scenario, worlds=worlds, device=device)
    env.reset()
    actions = [torch.as_tensor(rng.random((env.num_envs, 2), dtype=np.float32), device=device) for _ in range(64)]
    steps, elapsed = _timed(env.step, actions, seconds)
    return steps * env.num_envs / elapsed


def through_sb3(scenario, worlds: int, seconds: float, rng: np.random.Generator) -> float:
    from sim.marl import SB3VecEnv, VectorEnv

    env = SB3VecEnv(VectorEnv(scenario, worlds=worlds))
    env.reset()
    actions = [rng.uniform(-1, 1, (env.num_envs, 2)).astype(np.float32) for _ in range(64)]
    steps, elapsed = _timed(lambda a: (env.step_async(a), env.step_wait()), actions, seconds)
    return steps * env.num_envs / elapsed


def through_torchrl(scenario, worlds: int, seconds: float, rng: np.random.Generator, device: str = "cpu") -> float:
    from sim.marl import TorchRLEnv, VectorEnv

    env = TorchRLEnv(VectorEnv(scenario, worlds=worlds, device=device, autoreset=False))
    a = env.vector.agents_per_world
    actions = [torch.as_tensor(rng.random((worlds, a, env.action_dim), dtype=np.float32), device=env.device)
               for _ in range(64)]
    state = {"td": env.reset()}

    def step(action):
        td = state["td"]
        td["agents", "action"] = action
        _, state["td"] = env.step_and_maybe_reset(td)

    steps, elapsed = _timed(step, actions, seconds)
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * env.vector.num_envs / elapsed


def supersuit(scenario, worlds: int, seconds: float, rng: np.random.Generator) -> float:
    import supersuit as ss

    from sim.marl import parallel_env

    vec = ss.pettingzoo_env_to_vec_env_v1(parallel_env(scenario))
    env = ss.concat_vec_envs_v1(vec, worlds, num_cpus=0, base_class="stable_baselines3")
    env.reset()
    actions = [rng.random((env.num_envs, 2), dtype=np.float32) for _ in range(64)]
    steps, elapsed = _timed(lambda a: (env.step_async(a), env.step_wait()), actions, seconds)
    return steps * env.num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,16,256", help="comma-separated batch sizes B")
    parser.add_argument("--agents", type=int, default=4, help="rl influencers per world")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    parser.add_argument("--supersuit-max", type=int, default=256, help="largest B run through SuperSuit")
    parser.add_argument("--device", default="cpu", help="where the batched and torchrl paths run (cpu, cuda)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    scenario = _scenario(args.agents)
    rows = []
    print(f"{'B':>6} {'batched':>12} {'sb3 VecEnv':>12} {'torchrl':>12} {'supersuit':>12} {'ratio':>7}   "
          f"(agent-steps/s, {args.agents} agents, {scenario.spec.num_agents} agents in all per world, "
          f"torch {torch.__version__}, {args.device})")
    for worlds in (int(w) for w in args.worlds.split(",")):
        rng = np.random.default_rng(0)
        row = {"worlds": worlds, "agents": args.agents, "device": args.device,
               "batched": batched(scenario, worlds, args.seconds, rng, args.device),
               "sb3": through_sb3(scenario, worlds, args.seconds, rng),
               "torchrl": through_torchrl(scenario, worlds, args.seconds, rng, args.device)}
        row["supersuit"] = supersuit(scenario, worlds, args.seconds, rng) if worlds <= args.supersuit_max else None
        ratio = row["batched"] / row["supersuit"] if row["supersuit"] else None
        rows.append({**row, "ratio": ratio})
        print(f"{worlds:>6} {row['batched']:>12,.0f} {row['sb3']:>12,.0f} {row['torchrl']:>12,.0f} "
              f"{row['supersuit'] or float('nan'):>12,.0f} {ratio or float('nan'):>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
