"""``sim.shapley``: who caused an outcome of a scenario, with a run directory of its own.

The run directory is a run directory like any other (``manifest.json`` with a status, the resolved
``scenario.yaml``, ``events.jsonl``, a lock while it is written), with ``shapley.parquet`` in place of
the metric tables:

=================  =====================================================================
``player``         the player's name
``metric``         ``METRIC:SCOPE[:DIMENSION]``
``window``         ``final``, ``mean``, ``step S``, or ``A-B`` for the window from step A to B
``value``          the Shapley value (Banzhaf for ``banzhaf``, leave-one-out for ``loo``)
``se``             its standard error (coalition sampling and the noise of v over replicates)
``ci_low/high``    the 95% interval
``share``          value / sum of the values of the window
``rank``           1 = largest value in the window
``n_evaluations``  worlds run (coalitions x replicates)
``method``         the estimator
``null``           what players outside a coalition did: absent, noop, baseline[:POLICY]
=================  =====================================================================

The manifest holds the players (with their selectors and sizes), the worth, the null, the estimator's
diagnostics (v(N), v(empty), the efficiency residual, rank stability, why it stopped) and, when the
analysis was given a run directory, that ``source_run``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from ..config.scenario import Scenario, load_scenario
from ..core.interval import Interval
from ..errors import RunDirError, ScenarioError
from ..runs.runner import stored_scenario
from ..runs.runlog import (RunLock, RunLog, atomic_write_table, git_commit, new_run_dir, read_manifest,
                           versions)
from .estimators import METHODS, ShapleyResult, check_options, estimate
from .executors import get_executor
from .players import parse_players
from .simulation import Null, SimulationGame, Worth

COLUMNS = ("player", "metric", "window", "value", "se", "ci_low", "ci_high", "share", "rank", "n_evaluations",
           "method", "null")
# progress(worlds run so far, budget in worlds or None, largest standard error so far or None)
Progress = Callable[[int, int | None, float | None], None]


def shapley(source: str | Path | Scenario, *, metric: str, players: str = "groups", at: str | int = "final",
            windows: int | None = None, null: str = "absent", method: str = "auto", se: float | None = None,
            budget: int | None = None, replicates: int = 8, batch: int | None = None,
            executor: Any = "local", device: str = "cpu", seed: int | None = None,
            out: str | Path | None = None, runs_dir: str | Path = "runs", overrides: list[str] | tuple = (),
            plugin_dirs: list | tuple = (), write: bool = True, common_random_numbers: bool = True,
            progress: Progress | None = None, command: list[str] | None = None) -> pd.DataFrame:
    """Shapley values of ``players`` for a metric of a scenario (a file, a run directory or a Scenario).

    Returns the table of ``shapley.parquet`` (one row per window and player); ``table.attrs`` holds the
    diagnostics (``run_dir`` when written, ``efficiency_residual``, ``grand``, ``empty``, ...). Nothing
    is written until the players, the metric and the null have been checked on a built world.
    """
    scenario, source_run = _source(source, overrides, plugin_dirs)
    scenario = _with_seed(scenario, seed)
    worth = Worth.parse(metric, at, windows)
    null_ = Null.parse(null)
    _check_options(method, se, budget, replicates, batch)
    spec = scenario.spec
    player_list = parse_players(players, [g.name for g in spec.population], spec.num_agents,
                                tuple(scenario.space.dimensions))
    n = len(player_list)
    try:
        resolved = check_options(method, n, replicates, budget, endpoint_replicates=max(4 * replicates, 32))
    except ValueError as exc:
        raise ScenarioError(str(exc), location="--budget" if "budget" in str(exc) else "--method") from None
    known = {"exact": 2 ** n * replicates, "loo": (n + 2) * replicates}.get(resolved)  # worlds, when known
    state: dict[str, Any] = {"max_se": None, "budget": budget if known is None else known}

    def worlds_done(worlds: int) -> None:
        if progress:
            progress(worlds, state["budget"], state["max_se"])

    game = SimulationGame(scenario, player_list, worth, null_, replicates=replicates, batch=batch, device=device,
                          executor=get_executor(executor), common_random_numbers=common_random_numbers,
                          progress=worlds_done)

    def round_done(used: int, limit: int | None, max_se: float) -> None:
        state["max_se"] = max_se
        worlds_done(used)

    run = _RunDir(scenario, source_run, out, runs_dir, command) if write else None
    round_size = max(2, game.batch // max((n - 1) * replicates, 1)) if n > 1 else 1
    try:
        result = estimate(game, method, se=se, budget=budget, replicates=replicates, round_size=round_size,
                          seed=np.random.SeedSequence([spec.seed, 0x5A4B]), progress=round_done)
    except BaseException as exc:
        if run is not None:
            run.fail(exc)
        raise
    table = result_table(result, worth, null_)
    meta = _manifest_part(result, game, player_list, worth, null_, replicates, executor, device, source_run)
    if run is not None:
        run.finish(table, meta)
        table.attrs["run_dir"] = str(run.path)
    table.attrs.update(meta["shapley"])
    return table


def _source(source, overrides, plugin_dirs) -> tuple[Scenario, str | None]:
    if isinstance(source, Scenario):
        return source, None
    path = Path(source)
    if path.is_dir():
        manifest = read_manifest(path)
        scenario = stored_scenario(path, manifest.get("base_dir") or str(path))
        if overrides:
            from ..config.scenario import scenario_from_dict

            scenario = scenario_from_dict(scenario.to_dict(), overrides, base_dir=scenario.base_dir)
        return scenario, str(path)
    if not path.exists():
        raise ScenarioError(f"no such scenario file or run directory: {source}")
    return load_scenario(path, list(overrides), list(plugin_dirs)), None


def _with_seed(scenario: Scenario, seed: int | None) -> Scenario:
    if seed is None:
        return scenario
    if seed not in Interval(ge=0):
        raise ScenarioError(Interval(ge=0).message(seed), location="--seed")
    return Scenario(spec=scenario.spec.model_copy(update={"seed": seed}), source=scenario.source,
                    base_dir=scenario.base_dir)


def _check_options(method: str, se, budget, replicates, batch) -> None:
    if method != "auto" and method not in METHODS:
        raise ScenarioError(f"must be one of auto, {', '.join(METHODS)}, got {method!r}", location="--method")
    for flag, value, interval in (("--se", se, Interval(gt=0)), ("--budget", budget, Interval(ge=1)),
                                  ("--replicates", replicates, Interval(ge=1)), ("--batch", batch, Interval(ge=1))):
        if value is not None and value not in interval:
            raise ScenarioError(interval.message(value), location=flag)


def result_table(result: ShapleyResult, worth: Worth, null: Null) -> pd.DataFrame:
    table = result.table().rename(columns={"output": "window"})
    table["metric"] = worth.label
    table["n_evaluations"] = result.n_evaluations
    table["method"] = result.method
    table["null"] = null.label
    return table[list(COLUMNS)]


def _manifest_part(result: ShapleyResult, game: SimulationGame, players, worth: Worth, null: Null, replicates: int,
                   executor, device, source_run) -> dict[str, Any]:
    summary = result.summary()
    return {"shapley": {
        **summary, "metric": worth.label, "at": worth.at, "windows": worth.windows, "null": null.label,
        "replicates": replicates if not game.deterministic else 1, "batch": game.batch,
        "common_random_numbers": game.common_random_numbers, "worlds_run": game.worlds_run,
        "executor": executor if isinstance(executor, str) else type(executor).__name__,
        "ray": getattr(game.executor, "cluster", None),
        "players_defined": [{"name": p.name, "selector": p.text} for p in players], "source_run": source_run,
        "device": str(device)}}


class _RunDir:
    """The analysis's run directory: created (and locked) before the estimate, completed after it."""

    def __init__(self, scenario: Scenario, source_run: str | None, out, runs_dir, command):
        path = Path(out) if out is not None else new_run_dir(Path(runs_dir), scenario.name, scenario.spec.seed,
                                                             "shapley")
        if path.is_dir() and any(path.iterdir()):
            raise RunDirError(f"--out {path}: the directory exists and is not empty")
        self.made = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(path)
            manifest = {"kind": "shapley", "scenario": scenario.name, "source": scenario.source.name,
                        "base_dir": str(scenario.base_dir), "source_run": source_run, "seed": scenario.spec.seed,
                        "steps": scenario.spec.steps, "agents": scenario.spec.num_agents,
                        "command": command if command is not None else sys.argv, "versions": versions(),
                        "git_commit": git_commit(), "error": None,
                        "value_space": {"name": scenario.space.name,
                                        "dimensions": list(scenario.space.dimensions)},
                        "tables": {"shapley": {"file": "shapley.parquet", "columns": list(COLUMNS)}}}
            self.log = RunLog.create(path, scenario.to_yaml(), manifest, scenario.space.dimensions)
            self.log.event("started", 0, analysis="shapley")
        except OSError as exc:
            if self.made:
                shutil.rmtree(path, ignore_errors=True)
            raise RunDirError(f"{path}: cannot write the run directory there ({exc.strerror or exc})") from None
        self.path = path
        self.steps = scenario.spec.steps

    def finish(self, table: pd.DataFrame, meta: dict[str, Any]) -> None:
        with self.lock:
            arrow = pa.Table.from_pandas(table, preserve_index=False)
            atomic_write_table(self.path / "shapley.parquet", arrow)
            self.log.manifest.update(meta)
            self.log.event("complete", self.steps)
            self.log.finish("complete", self.steps)

    def fail(self, exc: BaseException) -> None:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with self.lock:
            self.log.event(status, 0, error=f"{type(exc).__name__}: {exc}")
            self.log.finish(status, 0, error=f"{type(exc).__name__}: {exc}")


def read_shapley(run_dir: str | Path) -> pd.DataFrame:
    """The ``shapley.parquet`` of a Shapley run directory, with the manifest's diagnostics in ``attrs``."""
    path = Path(run_dir)
    manifest = read_manifest(path)
    file = path / "shapley.parquet"
    if not file.is_file():
        raise RunDirError(f"{path}: no shapley.parquet (not a Shapley run, or it did not finish: "
                          f"status {manifest['status']})")
    from ..runs.runlog import read_parquet

    table = read_parquet(file).to_pandas()
    table.attrs.update(manifest.get("shapley", {}))
    table.attrs["run_dir"] = str(path)
    return table


def format_table(table: pd.DataFrame) -> str:
    """The result as text: per window, player, value, se, 95% interval, share and rank; then diagnostics."""
    lines = []
    attrs = table.attrs
    for window, rows in table.groupby("window", sort=False):
        lines.append(f"{rows['metric'].iloc[0]} ({window}), null {rows['null'].iloc[0]}, method {rows['method'].iloc[0]}")
        width = max(6, *(len(p) for p in rows["player"]))
        lines.append(f"  {'player':<{width}}  {'value':>10}  {'se':>9}  {'95% interval':>23}  {'share':>7}  rank")
        for row in rows.sort_values("rank").itertuples():
            share = "" if row.share != row.share else f"{100 * row.share:6.1f}%"
            lines.append(f"  {row.player:<{width}}  {row.value:>10.4g}  {row.se:>9.2g}  "
                         f"[{row.ci_low:>10.4g}, {row.ci_high:>10.4g}]  {share:>7}  {row.rank:>4}")
    if attrs:
        residual = ", ".join(f"{r:.2g}" for r in attrs.get("efficiency_residual", []))
        lines.append(f"v(N) {_numbers(attrs.get('grand'))}, v(empty) {_numbers(attrs.get('empty'))}, "
                     f"efficiency residual {residual}")
        lines.append(f"{attrs.get('n_evaluations')} evaluations ({attrs.get('replicates')} replicates), stopped: "
                     f"{attrs.get('stopped')}, rank stability {attrs.get('rank_stability', 1.0):.2f}"
                     + ("" if attrs.get("noise_in_se", True) else "; one replicate: the se leaves out the noise of v"))
    return "\n".join(lines)


def _numbers(values) -> str:
    return ", ".join(f"{v:.4g}" for v in (values or []))
