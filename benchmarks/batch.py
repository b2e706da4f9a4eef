"""Many small worlds in one batch: what an RL environment, a sweep or a Shapley estimate asks of the engine.

This is a benchmark, not a test: it measures and prints, and never fails on a
figure. Each cell builds one Simulation of B worlds of N = 100 agents (K = 10,
an Erdos-Renyi graph of mean degree 6, Deffuant + noise, one broadcasting
group of 4 "ai" agents) and times, after a warm-up:

- ``step``: ``simulation.step()`` with an action written in for the AI group
  (what it expresses), as an RL environment does;
- ``step+observe``: the same plus ``simulation.observe()`` of mean_values,
  polarization and clusters (readings stay on the device);
- ``reset``: ``reset_worlds`` of a random eighth of the worlds (episodes
  ending at different times).

Figures are world-steps per second (B x steps / time). The peer is the same
engine driven world by world: B separate one-world Simulations stepped in a
Python loop, the way a vectorised environment without batching (SuperSuit's
``concat_vec_envs`` over a PettingZoo env) steps its copies; it runs for
B <= 64 only (at 4,096 it would take minutes) and the ratio is printed.

Usage::

    python benchmarks/batch.py
    python benchmarks/batch.py --worlds 1,64,4096 --seconds 2 --json batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import sim  # first: it sets the thread wait policy before torch loads
import torch


def scenario(n: int = 100):
    return sim.scenario_from_dict({
        "name": "batch_bench", "seed": 1, "values": "schwartz10",
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
        "population": [
            {"name": "people", "count": n - 4, "confidence": {"dist": "uniform", "low": 0.15, "high": 0.35},
             "rate": 0.3},
            {"name": "ai", "kind": "ai", "count": 4, "confidence": 0.3, "rate": 0.3},
        ],
        "dynamics": ["deffuant", {"noise": {"sigma": 0.002}}],
        "protocols": [{"broadcast": {"speakers": "ai", "audience": "people", "share": 0.2, "log_events": False}}],
        "metrics": ["mean_values", "polarization", "clusters"],
    })


def _rate(run, worlds: int, seconds: float) -> float:
    run()  # warm-up (JIT, caches)
    steps, start = 0, time.perf_counter()
    while True:
        run()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return worlds * steps / elapsed


def measure(worlds: int, seconds: float) -> dict:
    built = time.perf_counter()
    simulation = sim.build(scenario(), worlds=worlds)
    built = time.perf_counter() - built
    shown = torch.full((worlds, 4, 10), 0.8)
    actions = {"ai": {"express": shown}}
    step = _rate(lambda: simulation.step(actions=actions), worlds, seconds)
    observe = _rate(lambda: (simulation.step(actions=actions), simulation.observe()), worlds, seconds)
    gen = torch.Generator().manual_seed(0)

    def reset():
        simulation.reset_worlds(torch.rand(worlds, generator=gen) < 0.125)
        simulation.step(actions=actions)

    out = {"worlds": worlds, "build_s": built, "step": step, "step+observe": observe, "reset+step": _rate(
        reset, worlds, seconds)}
    if worlds <= 64:
        singles = [sim.build(scenario(), streams=[b]) for b in range(worlds)]
        one = {"ai": {"express": shown[:1]}}
        out["one_by_one"] = _rate(lambda: [s.step(actions=one) for s in singles], worlds, seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,64,4096", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed length of each figure")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(f"valuesim {sim.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; N = 100, K = 10; world-steps per second")
    rows = []
    print(f"{'B':>6} {'step':>12} {'step+observe':>14} {'reset+step':>12} {'one by one':>12} {'batch/one':>10}")
    for worlds in (int(w) for w in args.worlds.split(",")):
        row = measure(worlds, args.seconds)
        rows.append(row)
        one = row.get("one_by_one")
        single = "" if one is None else f"{one:,.0f}"
        ratio = "" if one is None else f"{row['step'] / one:.1f}x"
        print(f"{worlds:>6} {row['step']:>12,.0f} {row['step+observe']:>14,.0f} {row['reset+step']:>12,.0f} "
              f"{single:>12} {ratio:>10}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
