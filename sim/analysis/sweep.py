"""Parameter sweeps: ``valuesim sweep SCENARIO --grid key=v1,v2 --grid key=start:stop:count --seeds R``.

Every point of the grid (the product of the keys' values) runs R worlds on streams ``0..R-1`` -- the same
streams as every other point (common random numbers), and the same worlds ``valuesim run --worlds R`` of
that point would run: point p, seed r of the sweep is world r of that run, bit for bit.

How points reach the engine is calibration's business (:mod:`sim.calibrate.params`, reused here): keys
that vary per world (a group's per-agent parameters and their distributions, a group's policy parameters,
a protocol's ``per_world`` parameters) put many points into one batch through ``set_params`` /
``vary_policy`` / ``vary_protocol``; points that differ in any other
key (network, dynamics, counts, a string) are batches of their own. Batches run one after the other in
this process when there is one, in a process pool when there are several (``executor="local"``), or as Ray
tasks (``executor="ray"``; ``RAY_ADDRESS`` for a cluster).

The result is a run directory like any other (``manifest.json`` with ``kind: sweep``, ``scenario.yaml``,
``events.jsonl``) holding ``sweep.parquet``: tidy rows ``point, <one column per key>, seed, step, metric,
group, dimension, value``, logged at the scenario's ``log_every`` exactly as ``valuesim run`` logs them.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RunDirError, ScenarioError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class GridKey:
    """One ``--grid`` key: its values, and the calibration :class:`~sim.calibrate.params.Parameter` that
    sets it per world (``None``: the key is applied as a ``--set`` flag, one batch per value)."""

    key: str
    values: tuple
    param: Any = None

    @property
    def per_world(self) -> bool:
        return self.param is not None and self.param.kind in ("agents", "policy", "protocol")

    def flag(self, value) -> str:
        return self.param.flag(value) if self.param is not None else f"{self.key}={_text(value)}"


def parse_grid(specs: list[str], scenario) -> list[GridKey]:
    """``--grid`` flags -> GridKeys, checked against ``scenario``: ``key=v1,v2,...`` (numbers or words) or
    ``key=start:stop:count`` (``count`` evenly spaced numbers, both ends included)."""
    from ..calibrate.params import parse_params, with_overrides

    if not specs:
        raise ScenarioError("give at least one --grid dotted.key=v1,v2,... or dotted.key=start:stop:count",
                            location="--grid")
    keys, seen = [], set()
    for spec in specs:
        key, values = _split(spec)
        if key in seen:
            raise ScenarioError(f"{key} is given twice", location=f"--grid {spec}")
        seen.add(key)
        numeric = all(isinstance(v, float) for v in values)
        param = None
        if numeric and len(set(values)) > 1:
            param = parse_params([f"{key}={min(values)!r}:{max(values)!r}"], scenario)[0]
            if param.integer:
                values = tuple(float(round(v)) for v in values)
        else:
            for value in set(values):  # a word or a single value: a --set flag the scenario must accept
                try:
                    with_overrides(scenario, [f"{key}={_text(value)}"])
                except ScenarioError as exc:
                    raise ScenarioError(f"{key}={_text(value)}: {exc.message}", location=f"--grid {spec}") from None
            values = tuple(_text(v) if not numeric else v for v in values)
        keys.append(GridKey(key=key, values=values, param=param))
    return keys


def _split(spec: str) -> tuple[str, tuple]:
    key, sep, rest = spec.partition("=")
    where = f"--grid {spec}"
    if not sep or not key.strip() or not rest.strip():
        raise ScenarioError("expected dotted.key=v1,v2,... or dotted.key=start:stop:count, e.g. "
                            "population.people.confidence=0.1:0.5:9", location=where)
    if rest.count(":") == 2 and "," not in rest:
        start, stop, count = rest.split(":")
        try:
            a, b, n = float(start), float(stop), int(count)
        except ValueError:
            raise ScenarioError(f"start:stop:count must be two numbers and a whole count, got {rest!r}",
                                location=where) from None
        if not (math.isfinite(a) and math.isfinite(b)) or n < 1:
            raise ScenarioError(f"start:stop:count needs finite ends and a count >= 1, got {rest!r}", location=where)
        values = tuple(float(format(x, ".6g")) for x in np.linspace(a, b, n))
    else:
        values = tuple(_number_or_word(item.strip()) for item in rest.split(",") if item.strip())
    if not values:
        raise ScenarioError("no values given", location=where)
    return key.strip(), values


def _number_or_word(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        raise ScenarioError(f"a grid value must be finite, got {text!r}", location="--grid")
    return float(format(value, ".6g"))  # what --set and calibration's flags carry


def _text(value) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else format(value, ".6g")
    return str(value)


def points(keys: list[GridKey]) -> list[tuple]:
    """Every point of the grid, the product of the keys' values in the order given (the last key fastest)."""
    return list(itertools.product(*[k.values for k in keys]))


def plan(keys: list[GridKey], grid: list[tuple]) -> list[tuple[tuple, list[int]]]:
    """Batches: (the values of the per-batch keys, the points in that batch), in order of first point."""
    batch = [i for i, k in enumerate(keys) if not k.per_world]
    groups: dict[tuple, list[int]] = {}
    for index, point in enumerate(grid):
        groups.setdefault(tuple(point[i] for i in batch), []).append(index)
    return list(groups.items())


# ---------------------------------------------------------------------------------------------- running

def run_batch(scenario, keys: list[GridKey], grid: list[tuple], members: list[int], seeds: int, device: str,
              progress: Callable[[int], None] | None = None):
    """Points ``members`` of ``grid`` (equal in every per-batch key) as ``len(members) * seeds`` worlds of one
    batch. Returns their rows of ``sweep.parquet`` as an Arrow table."""
    import torch

    from ..calibrate.evaluate import Evaluator
    from ..calibrate.params import with_overrides
    from ..calibrate.targets import Targets

    first = grid[members[0]]
    flags = [k.flag(first[i]) for i, k in enumerate(keys) if not k.per_world]
    scenario = with_overrides(scenario, flags) if flags else scenario
    varied = [i for i, k in enumerate(keys) if k.per_world]
    values = np.array([[grid[m][i] for i in varied] for m in members], dtype=np.float64).reshape(len(members), -1)
    evaluator = Evaluator(scenario, [keys[i].param for i in varied], Targets("sweep", [], None, {}), seeds, device)
    simulation = evaluator.simulation(values)
    c, r = len(members), seeds
    if simulation.world.b != c * r:
        raise ScenarioError("a sweep of a scenario with counterfactual twins is not supported yet "
                            "(drop counterfactual: or run the points with valuesim run)", location="--grid")
    spec = scenario.spec
    rows = _Rows(keys, grid, members, r)
    done = torch.zeros(c, dtype=torch.bool)
    tolerance = simulation.stop_tolerance
    rows.add(0, simulation.observe(), done)
    while simulation.state.step < spec.steps and not bool(done.all()):
        simulation.step()
        step = simulation.state.step
        converged = (simulation.state.converged_at.cpu().view(c, r) >= 0).all(1) if tolerance is not None \
            else torch.zeros(c, dtype=torch.bool)
        regular = step % spec.log_every == 0 or step == spec.steps
        log = ~done if regular else converged & ~done  # each point logs as its own run would
        if bool(log.any()):
            rows.add(step, simulation.observe(), ~log)
        done |= converged  # a point whose worlds have all converged stops there, as its own run would
        if progress:
            progress(1)
    return rows.table()


class _Rows:
    """Readings of a batch -> tidy rows, world b being point ``members[b // R]``, seed ``b % R``."""

    def __init__(self, keys, grid, members, seeds):
        self.keys, self.grid, self.members, self.seeds = keys, grid, np.asarray(members), seeds
        self.batches = []

    def add(self, step: int, readings, skip) -> None:
        import pyarrow as pa
        import torch

        keep_world = (~skip).repeat_interleave(self.seeds).numpy()
        for reading in readings:
            value = reading.value.detach().to("cpu", torch.float64).numpy()
            b, s, d = value.shape
            world = np.repeat(np.arange(b), s * d)
            keep = np.repeat(keep_world, s * d)
            point = self.members[world // self.seeds][keep]
            cols = {"point": pa.array(point.astype("int32"))}
            for j, key in enumerate(self.keys):
                column = [self.grid[p][j] for p in point]
                cols[key.key] = pa.array(column, pa.float64() if all(isinstance(v, float) for v in key.values)
                                         else pa.string())
            cols["seed"] = pa.array((world % self.seeds)[keep].astype("int32"))
            cols["step"] = pa.array(np.full(keep.sum(), step, dtype=np.int64))
            n = int(keep.sum())
            cols["metric"] = pa.array([reading.metric] * n, pa.string())
            cols["group"] = pa.array(np.tile(np.repeat(np.array(reading.scopes, dtype=object), d), b)[keep],
                                     pa.string())
            cols["dimension"] = pa.array(np.tile(np.array(reading.dimensions, dtype=object), b * s)[keep],
                                         pa.string())
            cols["value"] = pa.array(value.reshape(-1)[keep])
            self.batches.append(pa.table(cols))

    def table(self):
        import pyarrow as pa

        return pa.concat_tables(self.batches)


def _pool_map(fn, tasks, workers: int):
    """``fn(*task)`` for every task in a pool of ``workers`` processes (spawned: torch and fork do not mix)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        for future in futures:
            yield future.result()


def sweep(scenario, grid: list[str], *, seeds: int = 4, executor: str = "local", workers: int | None = None,
          device: str = "cpu", out: str | Path | None = None, runs_dir: str | Path = "runs",
          overrides: list[str] | tuple = (), command: list[str] | None = None,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Run the grid (``["dotted.key=v1,v2", "dotted.key=start:stop:count", ...]``) with ``seeds`` worlds a
    point and return the sweep's run directory (``sweep.parquet`` in it; :func:`read_sweep` reads it)."""
    from ..config.scenario import Scenario, load_scenario
    from ..runs.runlog import RunLock, RunLog, git_commit, versions
    from ..runs.runner import _make_run_dir

    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, list(overrides))
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ScenarioError(f"must be an integer >= 1, got {seeds!r}", location="--seeds")
    if executor not in EXECUTORS:
        raise ScenarioError(f"must be one of {', '.join(EXECUTORS)}, got {executor!r}", location="--executor")
    keys = parse_grid(list(grid), scenario)
    cells = points(keys)
    batches = plan(keys, cells)
    manifest = {
        "kind": "sweep", "scenario": scenario.name, "tag": "sweep", "source": scenario.source.name,
        "seed": scenario.spec.seed, "streams": list(range(seeds)), "seeds": seeds, "worlds": len(cells) * seeds,
        "steps": scenario.spec.steps, "overrides": list(overrides), "device": device, "executor": executor,
        "grid": {"keys": [k.key for k in keys], "values": {k.key: list(k.values) for k in keys},
                 "per_world": [k.key for k in keys if k.per_world], "points": len(cells), "batches": len(batches)},
        "value_space": {"name": scenario.space.name, "dimensions": list(scenario.space.dimensions)},
        "command": command if command is not None else sys.argv, "versions": versions(), "git_commit": git_commit(),
        "error": None, "tables": {"sweep": {"columns": _columns(keys)}},
    }
    _, path = _make_run_dir(out, runs_dir, scenario, "sweep")  # an --out that is not empty is refused
    with RunLock(path):
        log = RunLog.create(path, scenario.to_yaml(), manifest, scenario.space.dimensions)
        log.event("started", 0, points=len(cells), seeds=seeds, batches=len(batches))
        started = time.perf_counter()
        try:
            table = _run_all(scenario, keys, cells, batches, seeds, device, executor, workers, progress)
            from ..runs.runlog import atomic_write_table
            from ..runs.tables import with_metadata

            atomic_write_table(path / "sweep.parquet", with_metadata(table, {
                "table": "sweep", "columns": _columns(keys), "grid": manifest["grid"],
                "value_space": manifest["value_space"], "scenario": scenario.name, "seed": scenario.spec.seed}))
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            log.event(status, 0, error=f"{type(exc).__name__}: {exc}")
            log.finish(status, 0, error=f"{type(exc).__name__}: {exc}")
            raise
        log.manifest["seconds"] = round(time.perf_counter() - started, 3)
        log.event("complete", scenario.spec.steps, rows=table.num_rows)
        log.finish("complete", scenario.spec.steps)
    return path


def _run_all(scenario, keys, cells, batches, seeds, device, executor, workers, progress):
    import pyarrow as pa

    total = len(batches) * scenario.spec.steps
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    tasks = [(scenario, keys, cells, members, seeds, device) for _, members in batches]
    if executor == "ray":
        from ..shapley.executors import RayExecutor

        results = RayExecutor().map(run_batch, tasks)
    elif len(tasks) > 1 and (workers or 0) != 1:
        results = _pool_map(run_batch, tasks, workers or min(len(tasks), os.cpu_count() or 1))
    else:
        results = (run_batch(*task, progress=tick) for task in tasks)
    tables = []
    for table in results:
        tables.append(table)
        if executor == "ray" or len(tasks) > 1 and (workers or 0) != 1:
            tick(scenario.spec.steps)
    table = pa.concat_tables(tables)
    order = np.lexsort((table["seed"].to_numpy(), table["point"].to_numpy(), table["step"].to_numpy()))
    return table.take(order)


def _columns(keys: list[GridKey]) -> dict[str, str]:
    cols = {"point": "the grid point (0-based, the product of the keys' values, the last key fastest)"}
    for k in keys:
        cols[k.key] = "the value of " + k.key + " at this point" + (" (per world)" if k.per_world else "")
    cols.update(seed="the point's replicate: its random stream, 0..R-1, the same for every point",
                step="the step", metric="the reading (as in metrics.parquet)", group="the scope (a group or all)",
                dimension="the value dimension, or null", value="the reading's value")
    return cols


def read_sweep(run):
    """A sweep's table (pandas, ``dimension`` ``""`` where a reading has none) and its grid keys in order."""
    import pandas as pd

    file = Path(run.path) / "sweep.parquet"
    if not file.is_file():
        raise RunDirError(f"{run.path}: no sweep.parquet (not a sweep; make one with valuesim sweep)")
    table = pd.read_parquet(file)
    table["dimension"] = table["dimension"].fillna("").astype(str)
    keys = list((run.manifest.get("grid") or {}).get("keys") or [])
    return table, keys
