"""A 64-point sweep over the confidence bound with 4 seeds: one batched ``valuesim sweep`` against 256
separate ``valuesim run`` processes (the goal: at least 20x).

This is a benchmark, not a test: it measures and prints, and never fails on a figure. The workload is
``scenarios/deffuant_clusters.yaml`` (Deffuant on a complete graph, one opinion; ``--agents`` and ``--steps``
shrink it), the confidence bound swept over ``--low:--high`` in ``--points`` points, ``--seeds`` worlds each:

- ``batched``: ``sim.analysis.sweep.sweep``, all points x seeds as worlds of one batch (the confidence bound
  set per world), run directory and ``sweep.parquet`` included, in this process;
- ``separate``: one ``valuesim run --worlds 1 --seed S --set population.people.confidence=C`` process per
  point and seed, ``--jobs`` at a time, each writing its own run directory -- what a shell loop over the
  grid does. With ``--sample K`` only K of the 256 processes are timed and the total is extrapolated from
  their mean (said so in the output); ``--sample 0`` runs them all.

The batched table is checked against separate runs: ``--check`` points are run again as
``valuesim run --worlds SEEDS`` (streams 0..SEEDS-1, the sweep's seeds) and must match exactly.

Usage::

    python benchmarks/sweep.py                       # 64 x 4, 1,000 agents, 300 steps, 16 processes timed
    python benchmarks/sweep.py --agents 300 --steps 100 --sample 0 --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sim  # first: it sets the thread wait policy before torch loads
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "deffuant_clusters.yaml"
KEY = "population.people.confidence"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--low", type=float, default=0.05)
    p.add_argument("--high", type=float, default=0.5)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sample", type=int, default=16, help="separate processes timed (0: all of them)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="separate processes at a time")
    p.add_argument("--check", type=int, default=2, help="points checked against valuesim run --worlds SEEDS")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    base = [f"population.people.count={args.agents}", f"steps={args.steps}"]
    grid = f"{KEY}={args.low}:{args.high}:{args.points}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batched, table = _batched(grid, args.seeds, base, tmp)
        print(f"batched: {args.points} points x {args.seeds} seeds as one batch: {batched:.1f} s")
        values = sorted(table[KEY].unique())
        tasks = [(c, s) for c in values for s in range(args.seeds)]
        timed = tasks if args.sample <= 0 else [tasks[i] for i in
                                                np.linspace(0, len(tasks) - 1, min(args.sample, len(tasks))).astype(int)]
        per_process, wall = _separate(timed, base, args.jobs, tmp)
        total = wall if len(timed) == len(tasks) else wall / len(timed) * len(tasks)
        how = "measured" if len(timed) == len(tasks) else f"extrapolated from {len(timed)} timed"
        print(f"separate: {len(tasks)} valuesim run processes, {args.jobs} at a time: {total:.1f} s ({how}; "
              f"{np.mean(per_process):.2f} s per process)")
        print(f"speed-up: {total / batched:.1f}x")
        checked = _check(table, values, args.seeds, base, args.check, tmp)
        print(f"batched table equals valuesim run --worlds {args.seeds} on {checked} point(s)")
    figures = {"points": args.points, "seeds": args.seeds, "agents": args.agents, "steps": args.steps,
               "batched_s": batched, "separate_s": total, "separate_measured": len(timed) == len(tasks),
               "processes_timed": len(timed), "per_process_s": float(np.mean(per_process)), "jobs": args.jobs,
               "speedup": total / batched, "checked_points": checked, "cpus": os.cpu_count()}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _batched(grid: str, seeds: int, base: list[str], tmp: Path):
    from sim.analysis.sweep import sweep

    start = time.perf_counter()
    path = sweep(str(SCENARIO), [grid], seeds=seeds, overrides=base, out=tmp / "sweep", workers=1)
    seconds = time.perf_counter() - start
    return seconds, pd.read_parquet(path / "sweep.parquet")


def _command(confidence: float, base: list[str], out: Path, worlds: int = 1, seed: int | None = None):
    cmd = [sys.executable, "-m", "sim.cli", "run", str(SCENARIO), "--worlds", str(worlds), "--quiet",
           "--out", str(out), "--set", f"{KEY}={confidence:g}"]
    for flag in base:
        cmd += ["--set", flag]
    return cmd + (["--seed", str(seed)] if seed is not None else [])


def _separate(tasks, base, jobs, tmp):
    def one(i_task):
        i, (confidence, seed) = i_task
        start = time.perf_counter()
        subprocess.run(_command(confidence, base, tmp / f"run{i}", seed=2000 + seed), check=True, cwd=REPO,
                       capture_output=True)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        times = list(pool.map(one, enumerate(tasks)))
    return times, time.perf_counter() - start


def _check(table, values, seeds, base, count, tmp) -> int:
    """``count`` points of the sweep against their own ``valuesim run --worlds SEEDS``: equal rows."""
    chosen = [values[i] for i in np.linspace(0, len(values) - 1, count).astype(int)] if count else []
    for i, confidence in enumerate(chosen):
        out = tmp / f"check{i}"
        subprocess.run(_command(confidence, base, out, worlds=seeds), check=True, cwd=REPO, capture_output=True)
        single = sim.open_run(out).metrics().rename(columns={"world": "seed"})
        mine = table[table[KEY] == confidence]
        keys = ["step", "seed", "metric", "group", "dimension"]
        a = mine.assign(dimension=mine.dimension.fillna("")).sort_values(keys)
        b = single.assign(dimension=single.dimension.fillna(""), group=single.group.astype(str)).sort_values(keys)
        if len(a) != len(b) or not np.array_equal(a.value.to_numpy(), b.value.to_numpy(), equal_nan=True):
            raise SystemExit(f"the batched table differs from valuesim run at {KEY}={confidence:g}")
    return len(chosen)


if __name__ == "__main__":
    main()
