"""One PSO iteration as one batched run versus one process per particle (the goal: at least 10x at 32).

This is a benchmark, not a test: it measures and prints, and never fails on a
figure. The workload is ``scenarios/ego_networks.yaml`` (5,873 agents on 275
ego networks, five values) fitted to its observed trajectories (one-step
loss over 5 snapshots), each particle a (confidence, rate) point scored on R
random streams:

- ``batched``: what ``valuesim calibrate`` does, the whole swarm as one
  Simulation of particles x R worlds (``sim.calibrate.evaluate.Evaluator``),
  timed cold (building the batch included, as in the first iteration) and warm
  (later iterations reuse the built batch);
- ``per process``: each particle a fresh ``python`` process that loads the
  scenario with the particle's ``--set`` flags, builds its R worlds and
  scores them with the same code, as a script launched once per particle by
  a generic optimiser would; ``--jobs`` processes at a time (default: the
  number of cores).

Both compute the same losses (checked). Usage::

    python benchmarks/calibrate.py
    python benchmarks/calibrate.py --particles 32 --seeds 4 --jobs 2 --json calibrate.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sim  # first: it sets the thread wait policy before torch loads
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "ego_networks.yaml"
TARGETS = REPO / "scenarios" / "ego_networks" / "targets.yaml"
SEARCH = ["population.people.confidence=0.05:0.6", "population.people.rate=0.05:0.5"]

ONE_PARTICLE = """
import sys, numpy as np, sim
from sim.calibrate import load_targets, parse_params
from sim.calibrate.evaluate import Evaluator
scenario = sim.load_scenario(sys.argv[1])
params = parse_params(sys.argv[4:], scenario)
evaluator = Evaluator(scenario, params, load_targets(sys.argv[2], scenario), seeds=int(sys.argv[3]))
values = np.array([[float(v) for v in sys.stdin.read().split()]])
print(repr(float(evaluator.evaluate(values).loss[0])))
"""


def swarm(particles: int, seed: int) -> np.ndarray:
    from sim.calibrate.optimize import PSO

    scenario = sim.load_scenario(SCENARIO)
    params = sim.calibrate.parse_params(SEARCH, scenario)
    units = PSO(len(params), particles, seed).ask()
    return np.array([[p.value(u) for p, u in zip(params, row)] for row in units])


def batched(values: np.ndarray, seeds: int) -> tuple[np.ndarray, float, float]:
    from sim.calibrate.evaluate import Evaluator

    scenario = sim.load_scenario(SCENARIO)
    params = sim.calibrate.parse_params(SEARCH, scenario)
    evaluator = Evaluator(scenario, params, sim.calibrate.load_targets(TARGETS, scenario), seeds=seeds)
    start = time.perf_counter()
    losses = evaluator.evaluate(values).loss
    cold = time.perf_counter() - start
    start = time.perf_counter()
    again = evaluator.evaluate(values).loss
    warm = time.perf_counter() - start
    assert np.array_equal(losses, again)
    return losses, cold, warm


def per_process(values: np.ndarray, seeds: int, jobs: int) -> tuple[np.ndarray, float]:
    def one(row) -> float:
        out = subprocess.run([sys.executable, "-c", ONE_PARTICLE, str(SCENARIO), str(TARGETS), str(seeds), *SEARCH],
                             input=" ".join(map(str, row)), capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"a particle's process failed: {out.stderr.strip().splitlines()[-1:]}")
        return float(out.stdout.strip().splitlines()[-1])

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        losses = list(pool.map(one, values))
    return np.array(losses), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=4, help="random streams per particle (R)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    values = swarm(args.particles, args.seed)
    losses, cold, warm = batched(values, args.seeds)
    alone, separate = per_process(values, args.seeds, args.jobs)
    assert np.allclose(losses, alone, rtol=1e-12, atol=0), "a particle scored differently in its own process"
    figures = {"particles": args.particles, "seeds": args.seeds, "jobs": args.jobs, "agents": 5873,
               "batched_cold_s": cold, "batched_warm_s": warm, "per_process_s": separate,
               "speedup_cold": separate / cold, "speedup_warm": separate / warm}
    print(f"one PSO iteration, {args.particles} particles x {args.seeds} seeds on {SCENARIO.name}:")
    print(f"  one batched run     {cold:8.2f} s (building the batch included), {warm:.2f} s warm")
    print(f"  one process each    {separate:8.2f} s ({args.jobs} at a time)")
    print(f"  speed-up            {separate / cold:8.1f}x cold, {separate / warm:.1f}x warm")
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
