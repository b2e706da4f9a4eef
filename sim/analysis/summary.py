"""``valuesim analyze``: what a run came to, with 95% intervals over worlds (and over runs pooled as seeds).

A summary is a list of rows ``section, metric, group, dimension, stat, mean, low, high, n, se``:

- ``stat = "final"``: each replicate's reading at its last logged step, averaged over replicates;
- ``stat = "peak"`` (drift readings): each replicate's reading of largest magnitude over the run (signed);
- ``stat = "reached"`` (``consensus_time``): the share of replicates that reached consensus; the
  ``final`` row of ``consensus_time`` is then the mean over those that did.

A replicate is a world of a run (counterfactual twins left out), or a world of one of several runs of one
scenario (``pool=True``: the runs are seeds). Intervals are Student-t over replicates; a single replicate of
a decision metric takes the interval its metric logged (``.low`` / ``.high``: Wilson or normal over clients
for advice, two-way cluster-robust by pair and step for delegation), and otherwise has none. A delegation
run that logged intervals over purchases (made before ``delegation_trial`` clustered them: it has no
``delegation.steps`` reading) keeps none, and the summary's notes say why and how to get one.
``shapley.parquet``, when the run has one, is passed on as it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import RunDirError
from .stats import KEYS, mean_interval, replicate_metrics

SECTIONS: dict[str, tuple[str, ...]] = {
    "drift": ("drift", "drift_dimension", "mean_shift"),
    "polarisation": ("variance", "pairwise_distance", "bimodality"),
    "clusters": ("clusters", "largest_cluster"),
    "consensus": ("consensus_time", "spread"),
    "diversity": ("diversity_variance", "diversity_distance", "diversity_entropy"),
    "alignment": ("ai_gap", "ai_share", "ai_pull", "lock_in", "lock_in_drift"),
    "decisions": ("advice.harmful_choice", "advice.shifted", "advice.shift", "advice.uplift",
                  "delegation.override", "delegation.loss", "delegation.audits", "delegation.caught",
                  "delegation.penalty", "delegation.hidden"),
}
PEAK = ("drift", "drift_dimension", "mean_shift")
# delegation_trial's readings with a logged interval, and the reading it writes beside the two-way
# cluster-robust ones: older runs logged intervals over purchases, too narrow (a world's purchases share each
# step's catalogue and a pair's its weights; they covered the mean over worlds in 41-44% of worlds of the
# shipped scenario), which one world must not present as its own.
DELEGATION_INTERVALS = ("delegation.override", "delegation.loss", "delegation.audits", "delegation.caught",
                        "delegation.penalty")
DELEGATION_CLUSTERED = "delegation.steps"
COLUMNS = ["section", "metric", "group", "dimension", "stat", "mean", "low", "high", "n", "se"]
SHAPLEY_COLUMNS = ["player", "metric", "window", "value", "se", "ci_low", "ci_high", "share", "rank", "method", "null"]


def pooled_metrics(runs, notes: list[str] | None = None) -> pd.DataFrame:
    """The replicate metrics of ``runs`` (RunViews) with a ``replicate`` column (``run:world``). Runs without
    a metrics table (a Shapley or sweep directory) contribute nothing.

    A world is a function of the scenario (with its overrides), the seed and its stream: a world of a later
    run with the same three is a copy of one already pooled, not another seed, and is left out (a note in
    ``notes`` says which), or the intervals would shrink on repeated numbers."""
    parts, seen = [], {}
    for i, run in enumerate(runs):
        try:
            metrics = replicate_metrics(run)
        except RunDirError:
            continue
        streams = run.manifest.get("streams") or []
        copies = []
        for world in sorted(metrics["world"].unique()):
            if world >= len(streams):  # a run log without its streams: nothing to tell copies by
                continue
            key = (run.manifest.get("scenario"), tuple(run.manifest.get("overrides") or ()),
                   run.manifest.get("seed"), streams[world])
            if key in seen:
                copies.append((world, seen[key]))
            else:
                seen[key] = f"{run.path} world {world}"
        if copies and notes is not None:
            notes.append(f"{run.path}: {len(copies)} world(s) repeat the seed and stream of a world already "
                         f"pooled (world {copies[0][0]} is {copies[0][1]}), left out: a copy is not another seed")
        metrics = metrics[~metrics["world"].isin([w for w, _ in copies])].copy()
        metrics["replicate"] = f"{i}:" + metrics["world"].astype(str)
        parts.append(metrics)
    if not parts:
        return pd.DataFrame(columns=["world", "step", "metric", "group", "dimension", "value", "replicate"])
    return pd.concat(parts, ignore_index=True)


def summarize_metrics(metrics: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The summary rows (see the module) of a tidy metrics frame with a ``replicate`` column (``world`` is
    used when there is none)."""
    if "replicate" not in metrics:
        metrics = metrics.assign(replicate=metrics["world"])
    metrics = metrics.assign(dimension=metrics["dimension"].fillna("").astype(str))
    wanted = {m: s for s, names in SECTIONS.items() for m in names}
    rows: list[dict[str, Any]] = []
    chosen = metrics[metrics["metric"].isin(list(wanted))]
    clustered = _delegation_clustered(metrics)
    for (metric, group, dim), part in chosen.groupby(KEYS, sort=False, observed=True):
        section = wanted[metric]
        per_replicate = part.sort_values("step").groupby("replicate", sort=True)["value"]
        final = per_replicate.agg(_last_any if metric == "consensus_time" else _last)
        own = _own_interval(metrics, metric, group, dim, final)
        if own is not None and metric in DELEGATION_INTERVALS and not clustered:
            own = (math.nan, math.nan)  # logged over purchases: too narrow to show (see DELEGATION_INTERVALS)
        rows.append(_row(section, metric, group, dim, "final", final.to_numpy(), level, own))
        if metric in PEAK:
            rows.append(_row(section, metric, group, dim, "peak", per_replicate.agg(_peak).to_numpy(), level))
        if metric == "consensus_time":
            rows.append(_row(section, metric, group, dim, "reached", np.isfinite(final.to_numpy()).astype(float),
                             level))
    order = {s: i for i, s in enumerate(SECTIONS)}
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values("section", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _last(values: pd.Series) -> float:
    return float(values.iloc[-1])


def _last_any(values: pd.Series) -> float:
    """The last finite reading (consensus_time is NaN until reached, then fixed), NaN if never reached."""
    finite = values[np.isfinite(values.to_numpy(dtype=float))]
    return float(finite.iloc[-1]) if len(finite) else math.nan


def _peak(values: pd.Series) -> float:
    x = values.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x[np.argmax(np.abs(x))]) if len(x) else math.nan


def _own_interval(metrics, metric, group, dim, final):
    """For one replicate, the interval the metric itself logged (``metric.low`` / ``metric.high``)."""
    if len(final) != 1:
        return None
    bounds = []
    for suffix in (".low", ".high"):
        rows = metrics[(metrics["metric"] == metric + suffix) & (metrics["group"] == group)
                       & (metrics["dimension"] == dim)]
        if rows.empty:
            return None
        bounds.append(float(rows.sort_values("step")["value"].iloc[-1]))
    return tuple(bounds)


def _delegation_clustered(metrics) -> bool:
    """Whether the delegation intervals these metrics logged are the two-way cluster-robust ones."""
    return bool((metrics["metric"] == DELEGATION_CLUSTERED).any())


def interval_notes(rows: pd.DataFrame, metrics: pd.DataFrame, where: str = "") -> list[str]:
    """Notes for the delegation rows of one replicate left without an interval: why, and how to get one."""
    if rows.empty:
        return []
    bare = rows[rows["metric"].isin(DELEGATION_INTERVALS) & (rows["n"] == 1) & rows["low"].isna()
                & rows["mean"].notna()]
    if bare.empty:
        return []
    if not _delegation_clustered(metrics):
        why = ("its delegation_trial logged intervals over purchases, which ignore that a world's purchases "
               "share each step's catalogue and a pair's its weights (too narrow), so none is shown; run it "
               "again for a two-way cluster-robust one (by pair and step)")
    else:
        why = ("its two-way cluster-robust interval (by pair and step) needs purchases in two steps or more; "
               "run more steps")
    return [f"{where}delegation.* of a single world: {why}, or more worlds (--worlds 8) for intervals over worlds"]


def _row(section, metric, group, dim, stat, samples, level, own=None) -> dict[str, Any]:
    mean, low, high, n, se = mean_interval(samples, level)
    if n == 1 and own is not None:
        low, high = own
    return {"section": section, "metric": metric, "group": group, "dimension": dim, "stat": stat,
            "mean": mean, "low": low, "high": high, "n": n, "se": se}


def shapley_table(run) -> pd.DataFrame | None:
    """The run's ``shapley.parquet`` (the columns of :data:`SHAPLEY_COLUMNS` that it has), or None."""
    file = run.path / "shapley.parquet"
    if not file.is_file():
        return None
    table = pd.read_parquet(file)
    return table[[c for c in SHAPLEY_COLUMNS if c in table.columns]]


def summarize(runs, pool: bool = True, level: float = 0.95) -> dict[str, Any]:
    """The summary of one run (a path or RunView) or of several pooled as seeds of one scenario.

    Returns ``{"runs", "scenario", "replicates", "rows" (a DataFrame, :data:`COLUMNS`), "shapley" (a
    DataFrame or None), "notes"}``.
    """
    from ..runs.reading import RunView, open_run

    runs = [r if isinstance(r, RunView) else open_run(r) for r in (runs if isinstance(runs, (list, tuple))
                                                                   else [runs])]
    names = {r.manifest.get("scenario") for r in runs}
    if pool and len(names) > 1:
        raise RunDirError(f"runs of different scenarios ({', '.join(sorted(map(str, names)))}) cannot be pooled "
                          "as seeds: analyze them one at a time")
    notes: list[str] = []
    metrics = pooled_metrics(runs, notes)
    for run in runs:
        if run.status != "complete":
            notes.append(f"{run.path}: status {run.status} (the summary is of the steps logged so far)")
        if run.manifest.get("counterfactual_worlds"):
            notes.append(f"{run.path}: {len(run.manifest['counterfactual_worlds'])} counterfactual twin worlds "
                         f"left out of the replicates")
    shapley = [t.assign(run=str(r.path)) for r in runs if (t := shapley_table(r)) is not None]
    rows = summarize_metrics(metrics, level) if len(metrics) else pd.DataFrame(columns=COLUMNS)
    notes += interval_notes(rows, metrics)
    sweeps = []
    for run in runs:
        if (run.path / "sweep.parquet").is_file():
            from .sweep import read_sweep

            table, keys = read_sweep(run)  # read once: for the points and for their notes
            points = sweep_summary(table, keys, level)
            sweeps.append(points.assign(run=str(run.path)))
            notes += interval_notes(points, table, f"{run.path}, points of one seed: ")
    return {"runs": [str(r.path) for r in runs], "scenario": names.pop() if len(names) == 1 else None,
            "replicates": int(metrics["replicate"].nunique()) if len(metrics) else 0,
            "rows": rows,
            "shapley": pd.concat(shapley, ignore_index=True) if shapley else None,
            "sweep": pd.concat(sweeps, ignore_index=True) if sweeps else None, "notes": notes}


def sweep_summary(table: pd.DataFrame, keys: list[str], level: float = 0.95) -> pd.DataFrame:
    """For a sweep's table and grid keys (:func:`sim.analysis.sweep.read_sweep`), the summary rows of every
    grid point (its seeds the replicates), each row led by ``point`` and the point's key values."""
    parts = []
    for point, rows in table.groupby("point", sort=True):
        part = summarize_metrics(rows.rename(columns={"seed": "world"}), level)
        for key in reversed(keys):
            part.insert(0, key, rows[key].iloc[0])
        part.insert(0, "point", point)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def to_json(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary with its tables as lists of records, NaN as null."""
    def records(frame):
        if frame is None:
            return None
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]

    return {**summary, "rows": records(summary["rows"]), "shapley": records(summary["shapley"]),
            "sweep": records(summary.get("sweep"))}


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def fmt(x) -> str:
    """A number for a terminal table: 4 significant digits, ``-`` for NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.4g}"


def _text(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return str(value)


def render(summary: dict[str, Any], console) -> None:
    """The summary as rich tables, a section each, on ``console``."""
    from rich.table import Table

    title = summary["scenario"] or "runs"
    console.print(f"[bold]{title}[/bold]: {len(summary['runs'])} run(s), {summary['replicates']} replicate(s); "
                  f"mean and 95% interval over replicates")
    rows = summary["rows"]
    for section, part in rows.groupby("section", sort=False):
        table = Table(title=section, title_justify="left")
        for column in ("metric", "group", "dimension", "stat", "mean", "95% interval", "n"):
            table.add_column(column, justify="right" if column in ("mean", "n") else "left")
        for row in part.itertuples():
            table.add_row(row.metric, row.group, row.dimension, row.stat, fmt(row.mean),
                          f"[{fmt(row.low)}, {fmt(row.high)}]", str(row.n))
        console.print(table)
    if summary["shapley"] is not None:
        table = Table(title="shapley", title_justify="left")
        for column in ("player", "metric", "window", "value", "se", "95% interval", "rank"):
            table.add_column(column)
        for row in summary["shapley"].to_dict("records"):
            table.add_row(str(row["player"]), str(row["metric"]), _text(row.get("window")), fmt(row["value"]),
                          fmt(row["se"]), f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]", str(row.get("rank")))
        console.print(table)
    if summary.get("sweep") is not None:
        _render_sweep(summary["sweep"], console)
    for note in summary["notes"]:
        console.print(f"note: {note}")
    if rows.empty and summary["shapley"] is None and summary.get("sweep") is None:
        console.print("nothing to summarise: the runs log none of the summarised metrics "
                      f"({', '.join(m for names in SECTIONS.values() for m in names[:1])}, ...)")


def _render_sweep(table: pd.DataFrame, console, limit: int = 400) -> None:
    """A sweep's final readings of everyone (group ``all``) per point, one table."""
    from rich.table import Table

    keys = [c for c in table.columns if c not in (*COLUMNS, "point", "run")]
    shown = table[(table["stat"] == "final") & (table["group"] == "all")]
    out = Table(title=f"sweep: final readings of group 'all' per point ({shown['point'].nunique()} points; "
                      "95% interval over seeds)", title_justify="left")
    for column in ("point", *keys, "metric", "dimension", "mean", "95% interval", "n"):
        out.add_column(column)
    for row in shown.head(limit).to_dict("records"):
        out.add_row(str(row["point"]), *[_text(row[k]) if not isinstance(row[k], float) else fmt(row[k])
                                         for k in keys],
                    row["metric"], row["dimension"], fmt(row["mean"]), f"[{fmt(row['low'])}, {fmt(row['high'])}]",
                    str(row["n"]))
    console.print(out)
    if len(shown) > limit:
        console.print(f"... {len(shown) - limit} more rows (--json has them all)")
