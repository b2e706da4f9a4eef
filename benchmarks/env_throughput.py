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

The second half trains: stable-baselines3's PPO, the same hyper-parameters (``PPO_PARAMS``) and the same seed
on both sides, for each B in ``--ppo-worlds``, through

- ``SB3VecEnv(VectorEnv(scenario, worlds=B))``, seeded the SB3 way (``PPO(..., seed=s)``);
- SuperSuit's ``concat_vec_envs_v1`` of B one-world PettingZoo envs, seeded through ``reset(seed=s)``
  (``ConcatVecEnv`` has no ``seed``, so ``PPO(..., seed=s)`` fails on it: SB3's ``set_random_seed(s)`` is
  called before the model is built, which is what ``PPO(seed=s)`` does for the policy), its actions trained
  in ``[-1, 1]`` and mapped onto the action's Box as ``SB3VecEnv`` does (one numpy line per step), so that
  both learn the same problem;

until the mean evaluation return reaches ``--threshold``. Evaluation is the same for both, ``valuesim
train``'s: the deterministic policy for one episode in each of 8 worlds on the evaluation streams
(``sim.marl.train.evaluate``), at the start of every rollout (after every PPO update); its time is not
counted. Figures: wall-clock seconds of ``model.learn`` and agent-steps to the threshold, and the ratio.

Usage::

    python benchmarks/env_throughput.py
    python benchmarks/env_throughput.py --quick                 # one B of each half, about a minute
    python benchmarks/env_throughput.py --worlds 1,16,256 --agents 4 --seconds 2 --json env.json
    python benchmarks/env_throughput.py --worlds 4096 --device cuda --supersuit-max 0 --ppo-worlds ""  # a GPU
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import sim  # before torch: sets the threading environment (see DEVELOPERS.md)

import numpy as np
import torch

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "train_influencer.yaml"


def _scenario(agents: int):
    return sim.load_scenario(SCENARIO, [f"population.influencer.count={agents}"])


def _timed(step, actions, seconds: float, device: str = "cpu") -> tuple[int, float]:
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for a in actions[:3]:  # warm-up (kernels compiled, caches filled)
        step(a)
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(actions[done % len(actions)])
        done += 1
    sync()  # CUDA kernels run behind the Python loop: the clock stops when the last one has
    return done, time.perf_counter() - start


def batched(scenario, worlds: int, seconds: float, rng: np.random.Generator, device: str = "cpu") -> float:
    from sim.marl import VectorEnv

    env = VectorEnv(scenario, worlds=worlds, device=device)
    env.reset()
    actions = [torch.as_tensor(rng.random((env.num_envs, 2), dtype=np.float32), device=device) for _ in range(64)]
    steps, elapsed = _timed(env.step, actions, seconds, device)
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

    steps, elapsed = _timed(step, actions, seconds, device)
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


# The hyper-parameters of tests/test_marl.py's SB3 run; the rest are SB3's defaults (10 epochs, gamma 0.99, ...).
PPO_PARAMS = {"n_steps": 32, "batch_size": 128, "learning_rate": 1e-3}
# Mean episode return per agent (how much closer to the target the people got), train_influencer with 4 agents,
# evaluation seed 0: random actions -0.011, the middle of the space 0.049, a rule that shows the people's mean
# plus 0.1 on each axis 0.42; SB3's PPO reaches 0.35 in 60,000 agent-steps at B = 16. 0.25 is well past
# anything untrained and short of the plateau, so the time to it measures learning, not luck.
THRESHOLD = 0.25


def symmetric_actions(venv):
    """SuperSuit's env seen by PPO with actions in [-1, 1], mapped onto the action's Box as SB3VecEnv maps its own
    (SB3's Gaussian policies start at 0: without this they would start on the Box's lower edge, half clipped)."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from sim.marl.spaces import symmetric

    box = venv.action_space

    class Symmetric(VecEnvWrapper):
        def reset(self):
            return self.venv.reset()

        def step_async(self, actions):
            self.venv.step_async(box.low + (np.clip(actions, -1, 1) + 1) * 0.5 * (box.high - box.low))

        def step_wait(self):
            return self.venv.step_wait()

        def get_attr(self, attr_name, indices=None):
            if attr_name == "render_mode":  # SuperSuit's ConcatVecEnv cannot answer it; the envs do not render
                return [None] * self.num_envs
            return super().get_attr(attr_name, indices)

    with warnings.catch_warnings():  # the same question, asked by SB3 of SuperSuit's wrapper while this one is built
        warnings.simplefilter("ignore", UserWarning)
        return Symmetric(venv, action_space=symmetric(box))


def _valuesim_ppo_env(scenario, worlds: int, seed: int):
    from sim.marl import SB3VecEnv, VectorEnv

    return SB3VecEnv(VectorEnv(scenario, worlds=worlds)), {"seed": seed}


def _supersuit_ppo_env(scenario, worlds: int, seed: int):
    import supersuit as ss
    from stable_baselines3.common.utils import set_random_seed

    from sim.marl import parallel_env

    vec = ss.pettingzoo_env_to_vec_env_v1(parallel_env(scenario))
    env = ss.concat_vec_envs_v1(vec, worlds, num_cpus=0, base_class="stable_baselines3")
    env.venv.reset(seed=seed)  # ConcatVecEnv: sub-env i gets seed + i; learn()'s own reset then goes on from there
    set_random_seed(seed)  # what PPO(seed=s) does before building the policy
    return symmetric_actions(env), {"seed": None}


def ppo_to_threshold(scenario, make_env, worlds: int, seed: int, threshold: float, max_timesteps: int) -> dict:
    """Train SB3's PPO on ``make_env``'s env until the evaluation return reaches ``threshold`` (or
    ``max_timesteps``): seconds in ``learn`` (evaluation excluded), agent-steps, the last evaluation."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    from sim.marl import VectorEnv
    from sim.marl.spaces import from_symmetric
    from sim.marl.train import evaluate

    env, seeding = make_env(scenario, worlds, seed)
    box = VectorEnv(scenario, worlds=1).action_space  # the rl agents' Box, which both envs map [-1, 1] onto
    settings = {"eval_worlds": 8, "seed": seed, "device": "cpu"}
    model = PPO("MlpPolicy", VecMonitor(env), device="cpu", verbose=0, **seeding, **PPO_PARAMS)
    result = {"worlds": worlds, "envs": env.num_envs, "reached": False, "evaluations": []}

    class ToThreshold(BaseCallback):
        """Evaluates before each rollout (the policy after each update), with the clock stopped."""

        paused, stop = 0.0, False

        def _on_rollout_start(self) -> None:
            now = time.perf_counter()
            actor = lambda obs: from_symmetric(torch.as_tensor(  # noqa: E731
                self.model.predict(obs.numpy(), deterministic=True)[0]), box)
            value = evaluate(scenario, actor, settings)
            result["evaluations"].append((int(self.num_timesteps), value))
            result.update(seconds=now - started - self.paused, timesteps=int(self.num_timesteps), ret=value)
            self.stop = value >= threshold
            result["reached"] = self.stop
            self.paused += time.perf_counter() - now

        def _on_step(self) -> bool:
            return not self.stop

    callback = ToThreshold()
    started = time.perf_counter()
    model.learn(total_timesteps=max_timesteps, callback=callback)
    if not callback.stop:  # ran out of timesteps: evaluate where it ended
        callback._on_rollout_start()
    env.close()
    return result


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, numbers right-aligned (as the README's)."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def throughput(scenario, args) -> list[dict]:
    rows = []
    for worlds in (int(w) for w in args.worlds.split(",") if w):
        rng = np.random.default_rng(0)
        row = {"worlds": worlds, "agents": args.agents, "device": args.device,
               "batched": batched(scenario, worlds, args.seconds, rng, args.device),
               "sb3": through_sb3(scenario, worlds, args.seconds, rng),
               "torchrl": through_torchrl(scenario, worlds, args.seconds, rng, args.device)}
        row["supersuit"] = supersuit(scenario, worlds, args.seconds, rng) if worlds <= args.supersuit_max else None
        row["ratio"] = row["batched"] / row["supersuit"] if row["supersuit"] else None
        rows.append(row)
    print(f"\nAgent-steps per second, random actions ({args.agents} rl agents, {scenario.spec.num_agents} agents "
          f"per world, torch {torch.__version__}, {args.device}):\n")
    print(_table(["B", "VectorEnv", "SB3VecEnv", "TorchRLEnv", "PettingZoo + SuperSuit", "VectorEnv / SuperSuit"],
                 [[f"{r['worlds']}", f"{r['batched']:,.0f}", f"{r['sb3']:,.0f}", f"{r['torchrl']:,.0f}",
                   f"{r['supersuit']:,.0f}" if r["supersuit"] else "–",
                   f"{r['ratio']:.0f}×" if r["ratio"] else "–"] for r in rows]))
    return rows


def training(scenario, args) -> list[dict]:
    rows = []
    for worlds in (int(w) for w in args.ppo_worlds.split(",") if w):
        ours = ppo_to_threshold(scenario, _valuesim_ppo_env, worlds, args.seed, args.threshold, args.ppo_max)
        theirs = ppo_to_threshold(scenario, _supersuit_ppo_env, worlds, args.seed, args.threshold, args.ppo_max)
        rows.append({"worlds": worlds, "valuesim": ours, "supersuit": theirs,
                     "ratio": theirs["seconds"] / ours["seconds"] if ours["reached"] and theirs["reached"] else None})
    print(f"\nSB3 PPO ({', '.join(f'{k}={v}' for k, v in PPO_PARAMS.items())}, seed {args.seed}) to a mean "
          f"evaluation return of {args.threshold} (8 evaluation worlds; evaluation time not counted):\n")

    def cell(r):
        return f"{r['seconds']:.1f} s, {r['timesteps']:,}" + ("" if r["reached"] else f" (not reached: {r['ret']:.3f})")

    print(_table(["B", "SB3 envs", "VectorEnv: time, agent-steps", "PettingZoo + SuperSuit: time, agent-steps",
                  "SuperSuit / VectorEnv time"],
                 [[f"{r['worlds']}", f"{r['valuesim']['envs']}", cell(r["valuesim"]), cell(r["supersuit"]),
                   f"{r['ratio']:.1f}×" if r["ratio"] else "–"] for r in rows]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,16,256", help="comma-separated batch sizes B of the throughput half")
    parser.add_argument("--agents", type=int, default=4, help="rl influencers per world")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell")
    parser.add_argument("--supersuit-max", type=int, default=256, help="largest B run through SuperSuit")
    parser.add_argument("--device", default="cpu", help="where the batched and torchrl paths run (cpu, cuda)")
    parser.add_argument("--ppo-worlds", default="16,64", help="comma-separated B of the PPO half ('' skips it)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="evaluation return to reach")
    parser.add_argument("--ppo-max", type=int, default=200_000, help="agent-steps at most per PPO run")
    parser.add_argument("--seed", type=int, default=0, help="PPO's seed, the envs' and the evaluation's")
    parser.add_argument("--quick", action="store_true", help="B = 16 only, 0.5 s per throughput cell")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: --device {args.device}: this torch build sees no CUDA device "
                       "(the README says how to install a CUDA build)\n")
    if args.quick:
        args.worlds, args.ppo_worlds, args.seconds = "16", "16", 0.5
    scenario = _scenario(args.agents)
    figures = {"throughput": throughput(scenario, args), "ppo": training(scenario, args)}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
