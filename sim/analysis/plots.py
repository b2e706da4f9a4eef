"""The figures of a run: one function per figure, each taking a run (a :class:`~sim.runs.reading.RunView`)
and returning a matplotlib :class:`~matplotlib.figure.Figure`.

The HTML report embeds these same figures; in Jupyter, ``sim.open_run(path).plot.trajectories()`` shows one.
Figures are made without pyplot (no global figure registry, nothing to close), and each carries a one-line
``valuesim_caption`` saying what it shows. Bands are 95% Student-t intervals of the mean over worlds
(counterfactual twins left out). A run that lacks what a figure needs raises :class:`sim.RunDirError`
naming the metric to add.

=====================  ==========================================================================
function               figure
=====================  ==========================================================================
``trajectories``       a metric (default ``mean_values``) per group and dimension over time, bands over worlds
``drift_heatmap``      groups x dimensions: mean signed change from the initial values (``drift_dimension``)
``polarization``       variance, pairwise distance, bimodality, clusters over time (what the run has)
``value_distribution`` per dimension, the distribution of values (all logged agents) at every snapshot
``network_snapshot``   one world's network at the last snapshot, agents coloured by their values (a sample if large)
``shapley_bars``       Shapley values with 95% intervals (``shapley.parquet``)
``sweep_phase``        a sweep's outcome against one grid key (with intervals) or over two (a heatmap)
=====================  ==========================================================================
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import RunDirError
from .stats import band, replicate_metrics

FIGURES = ("trajectories", "drift_heatmap", "polarization", "value_distribution", "network_snapshot", "shapley_bars",
           "sweep_phase")
# populations up to this many logged agents are drawn whole by network_snapshot; larger ones as a seeded sample
NETWORK_LIMIT = 400
POLARIZATION = ("variance", "pairwise_distance", "bimodality", "clusters", "largest_cluster", "spread")


def _figure(rows: int = 1, cols: int = 1, width: float = 4.2, height: float = 3.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RunDirError("plots need matplotlib, which is not installed: pip install 'valuesim[analysis]'") from None
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _done(fig, caption: str):
    fig.valuesim_caption = caption
    return fig


def _readings(run, names, what: str) -> pd.DataFrame:
    metrics = replicate_metrics(run)
    found = metrics[metrics["metric"].isin(list(names))]
    if found.empty:
        raise RunDirError(f"{run.path}: no {what} readings to plot (add {what} to the scenario's metrics)")
    return found


def _hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def trajectories(run, metric: str = "mean_values", groups: list[str] | None = None,
                 dimensions: list[str] | None = None):
    """``metric`` over time, one panel per dimension, a line per group with its 95% band over worlds."""
    rows = _readings(run, [metric], metric)
    if groups is not None:
        rows = rows[rows["group"].isin(groups)]
    dims = [d for d in (dimensions or run.dimensions) if d in set(rows["dimension"])] or [""]
    cols = min(len(dims), 4)
    fig, axes = _figure(math.ceil(len(dims) / cols), cols)
    stats = band(rows, ["dimension", "group", "step"])
    for ax, dim in zip(axes.flat, dims):
        for group, part in stats[stats["dimension"] == dim].groupby("group", sort=False):
            line, = ax.plot(part["step"], part["mean"], label=group)
            ax.fill_between(part["step"], part["low"], part["high"], color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(dim or metric)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
    axes.flat[0].legend(fontsize="small")
    _hide_unused(axes, len(dims))
    n = int(rows["world"].nunique())
    return _done(fig, f"{metric} per group and value dimension over time: mean over {n} world(s), "
                      f"shaded 95% interval over worlds.")


def drift_heatmap(run, step: int | None = None):
    """Groups x dimensions: the mean over worlds of the signed change since the start (``drift_dimension``)."""
    rows = _readings(run, ["drift_dimension"], "drift")
    step = int(rows["step"].max()) if step is None else step
    at = rows[rows["step"] == step]
    table = at.groupby(["group", "dimension"], observed=True)["value"].mean().unstack("dimension")
    table = table[[d for d in run.dimensions if d in table.columns]]
    fig, axes = _figure(width=max(4.0, 0.9 * table.shape[1] + 2), height=max(2.5, 0.5 * table.shape[0] + 1.5))
    ax = axes[0, 0]
    limit = float(np.nanmax(np.abs(table.to_numpy()))) or 1.0
    image = ax.imshow(table.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize="small")
    fig.colorbar(image, ax=ax, label="mean change")
    return _done(fig, f"Drift at step {step}: mean signed change of each value dimension since the start, "
                      f"per group (mean over worlds; red up, blue down).")


def polarization(run, group: str = "all"):
    """Polarisation and clusters over time for ``group``: every one of ``variance``, ``pairwise_distance``,
    ``bimodality``, ``clusters``, ``largest_cluster``, ``spread`` that the run logged, bands over worlds."""
    rows = _readings(run, POLARIZATION, "polarization or clusters")
    rows = rows[rows["group"] == group]
    if rows.empty:
        raise RunDirError(f"{run.path}: no polarization or cluster readings for group {group!r}")
    names = [m for m in POLARIZATION if m in set(rows["metric"])]
    fig, axes = _figure(1, len(names), width=3.4)
    stats = band(rows, ["metric", "dimension", "step"])
    for ax, name in zip(axes.flat, names):
        for dim, part in stats[stats["metric"] == name].groupby("dimension", sort=False):
            line, = ax.plot(part["step"], part["mean"], label=dim or None)
            ax.fill_between(part["step"], part["low"], part["high"], color=line.get_color(), alpha=0.2, lw=0)
        if any(stats[stats["metric"] == name]["dimension"] != ""):
            ax.legend(fontsize="x-small")
        ax.set_title(name)
        ax.set_xlabel("step")
    return _done(fig, f"Polarisation and clusters of group {group!r} over time: mean over worlds, shaded 95% "
                      f"interval over worlds ({', '.join(names)}).")


def value_distribution(run, bins: int = 40, group: str | None = None):
    """Per dimension, a heatmap of the share of logged agents (all worlds pooled) in each value bin at each
    snapshot step: clusters show as bright ridges, polarisation as two."""
    values = run.values()
    twins = run.manifest.get("counterfactual_worlds") or []
    if twins:
        values = values[~values["world"].isin(twins)]
    if group is not None:
        values = values[values["group"].astype(str) == group]
    if values.empty:
        raise RunDirError(f"{run.path}: no value snapshots to plot" + (f" for group {group!r}" if group else ""))
    dims = run.dimensions
    cols = min(len(dims), 4)
    fig, axes = _figure(math.ceil(len(dims) / cols), cols)
    steps = np.sort(values["step"].unique())
    edges = np.linspace(0, 1, bins + 1)
    for ax, dim in zip(axes.flat, dims):
        grid = np.stack([np.histogram(values.loc[values["step"] == s, dim], bins=edges)[0] for s in steps], axis=1)
        grid = grid / np.maximum(grid.sum(axis=0, keepdims=True), 1)
        ax.imshow(grid, origin="lower", aspect="auto", cmap="magma",
                  extent=(steps[0] - 0.5, steps[-1] + 0.5, 0, 1), interpolation="nearest")
        ax.set_title(dim)
        ax.set_xlabel("step")
        ax.set_ylabel("value")
    _hide_unused(axes, len(dims))
    who = f"group {group!r}" if group else "all logged agents"
    return _done(fig, f"The distribution of values over time ({who}, worlds pooled): each column is a snapshot, "
                      f"brightness the share of agents in a bin of width {1 / bins:.3g}.")


def network_snapshot(run, world: int | None = None, limit: int = NETWORK_LIMIT, seed: int = 0):
    """The network of one world (default the first) at its last value snapshot, each agent coloured by its
    values' first principal component; beyond ``limit`` logged agents, a seeded sample of ``limit`` of them
    and the edges among them."""
    import networkx as nx
    from matplotlib.collections import LineCollection

    values = run.values()
    world = int(values["world"].min()) if world is None else world
    step = int(values["step"].max())
    last = values[(values["world"] == world) & (values["step"] == step)].set_index("agent")
    if last.empty:
        raise RunDirError(f"{run.path}: no value snapshot of world {world} to draw")
    nodes = np.sort(last.index.to_numpy())
    sampled = len(nodes) > limit
    if sampled:
        nodes = np.sort(np.random.default_rng(seed).choice(nodes, limit, replace=False))
    edges = run.network(world=world)  # that world's own graph when worlds have their own
    keep = edges["source"].isin(nodes) & edges["target"].isin(nodes)
    graph = nx.Graph()
    graph.add_nodes_from(nodes.tolist())
    graph.add_edges_from(edges.loc[keep, ["source", "target"]].to_numpy().tolist())
    points = last.loc[nodes, run.dimensions].to_numpy(dtype=np.float64)
    centred = points - points.mean(axis=0)
    # the direction along which the drawn agents' values differ most; its sign is fixed for a stable legend
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(nodes) > 1 else np.ones(points.shape[1])
    axis = axis if axis.sum() >= 0 else -axis
    colour = centred @ axis
    layout = nx.spring_layout(graph, seed=seed)
    xy = np.array([layout[n] for n in nodes.tolist()])
    fig, axes = _figure(width=6.0, height=5.0)
    ax = axes[0, 0]
    lines = np.array([[layout[a], layout[b]] for a, b in graph.edges()]).reshape(-1, 2, 2)
    # a dense graph would be a grey disc: the more edges, the fainter each
    faint = min(0.3, 150 / max(len(lines), 1))
    ax.add_collection(LineCollection(lines, colors="grey", linewidths=0.4, alpha=faint))
    drawn = ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="coolwarm", s=max(4.0, 3000 / len(nodes)),
                       edgecolors="none")
    fig.colorbar(drawn, ax=ax, label="first principal component of the values")
    ax.set_axis_off()
    heaviest = ", ".join(f"{d} {w:+.2f}" for d, w in sorted(zip(run.dimensions, axis), key=lambda t: -abs(t[1]))[:3])
    who = (f"a seeded sample of {len(nodes)} of its {len(last):,} logged agents and the edges among them"
           if sampled else f"all {len(nodes):,} logged agents")
    return _done(fig, f"The network of world {world} at step {step}: {who}, coloured by the first principal "
                      f"component of their values (weights: {heaviest}); layout by springs, edges in grey.")


def shapley_bars(run):
    """Each player's Shapley value with its 95% interval, one panel per metric (and window)."""
    file = run.path / "shapley.parquet"
    if not file.is_file():
        raise RunDirError(f"{run.path}: no shapley.parquet (run valuesim shapley to make one)")
    table = pd.read_parquet(file)
    table["window"] = table["window"].fillna(-1) if "window" in table else -1
    panels = list(table.groupby(["metric", "window"], sort=False))
    fig, axes = _figure(1, len(panels), width=4.5, height=max(2.5, 0.35 * table["player"].nunique() + 1.2))
    for ax, ((metric, window), part) in zip(axes.flat, panels):
        part = part.sort_values("value")
        err = np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]])
        colors = ["tab:red" if v < 0 else "tab:blue" for v in part["value"]]
        ax.barh(part["player"].astype(str), part["value"], xerr=err, color=colors, capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(metric if window == -1 else f"{metric}, window {window}", fontsize="small")
        ax.set_xlabel("Shapley value")
    method = table["method"].iloc[0] if "method" in table else "?"
    null = table["null"].iloc[0] if "null" in table else "?"
    return _done(fig, f"Shapley values of the players ({method}, null {null}): bars are values, whiskers 95% "
                      f"intervals (sampling of coalitions and noise over replicates).")


def sweep_phase(run, metric: str | None = None, group: str = "all", dimension: str | None = None,
                step: int | None = None):
    """A sweep's outcome at ``step`` (default the last) against its grid: a line with 95% intervals over seeds
    for one key, a heatmap of the mean for two (the first two keys, others averaged)."""
    from .sweep import read_sweep

    table, keys = read_sweep(run)
    metric = metric or ("clusters" if "clusters" in set(table["metric"]) else str(table["metric"].iloc[0]))
    rows = table[(table["metric"] == metric) & (table["group"] == group)]
    if dimension is not None:
        rows = rows[rows["dimension"] == dimension]
    elif rows["dimension"].nunique() > 1:
        dimension = str(rows["dimension"].iloc[0])
        rows = rows[rows["dimension"] == dimension]
    if rows.empty:
        raise RunDirError(f"{run.path}: the sweep has no {metric!r} readings for group {group!r}")
    step = int(rows["step"].max()) if step is None else step
    rows = rows[rows["step"] == step]
    label = metric + (f" ({dimension})" if dimension else "")
    if len(keys) == 1:
        fig, axes = _figure(width=5.0, height=3.4)
        stats = band(rows, keys).sort_values(keys[0])
        ax = axes[0, 0]
        ax.errorbar(stats[keys[0]], stats["mean"], yerr=[stats["mean"] - stats["low"], stats["high"] - stats["mean"]],
                    marker="o", ms=3, capsize=2)
        ax.set_xlabel(keys[0])
        ax.set_ylabel(label)
        return _done(fig, f"Phase diagram: {label} of group {group!r} at step {step} against {keys[0]}; "
                          f"points are means over seeds, bars 95% intervals.")
    pivot = rows.groupby(keys[:2])["value"].mean().unstack(keys[1])
    fig, axes = _figure(width=5.5, height=4.0)
    ax = axes[0, 0]
    image = ax.imshow(pivot.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(pivot.index)), [f"{v:.3g}" if isinstance(v, float) else v for v in pivot.index])
    ax.set_xticks(range(len(pivot.columns)), [f"{v:.3g}" if isinstance(v, float) else v for v in pivot.columns],
                  rotation=45, ha="right")
    ax.set_ylabel(keys[0])
    ax.set_xlabel(keys[1])
    fig.colorbar(image, ax=ax, label=label)
    rest = f" (averaged over {', '.join(keys[2:])})" if len(keys) > 2 else ""
    return _done(fig, f"Phase diagram: mean {label} of group {group!r} at step {step} over {keys[0]} and "
                      f"{keys[1]}{rest}, averaged over seeds.")


class Plots:
    """``run.plot``: the figures of :mod:`sim.analysis.plots` bound to one run (``run.plot.trajectories()``)."""

    def __init__(self, run):
        self._run = run

    def trajectories(self, **kwargs):
        return trajectories(self._run, **kwargs)

    def drift_heatmap(self, **kwargs):
        return drift_heatmap(self._run, **kwargs)

    def polarization(self, **kwargs):
        return polarization(self._run, **kwargs)

    def value_distribution(self, **kwargs):
        return value_distribution(self._run, **kwargs)

    def network_snapshot(self, **kwargs):
        return network_snapshot(self._run, **kwargs)

    def shapley_bars(self):
        return shapley_bars(self._run)

    def sweep_phase(self, **kwargs):
        return sweep_phase(self._run, **kwargs)

    def __dir__(self):
        return list(FIGURES)
