"""The calibration's picture: the loss curve, and the fit per target with its intervals (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ValuesimError


def plot_fit(path: Path, curve: list[dict[str, Any]], fit: list[dict[str, Any]]) -> None:
    """Write ``fit.png``: the best loss by evaluations; trajectories' one-step MSE per dimension for the model
    and the baselines; each metric target against the model's value, both with 95% intervals."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValuesimError("the calibration plot needs matplotlib: pip install 'valuesim[calibrate]'") from None
    from ..runs.runlog import atomic_write

    trajectory = [r for r in fit if r["target"].startswith("trajectories")]
    metric = [r for r in fit if not r["target"].startswith("trajectories")]
    panels = 1 + bool(trajectory) + bool(metric)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    axes = axes[0]
    _loss_curve(axes[0], curve)
    if trajectory:
        _trajectory_panel(axes[1], trajectory)
    if metric:
        _metric_panel(axes[-1], metric)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _loss_curve(ax, curve) -> None:
    evaluations = [row["evaluations"] for row in curve]
    ax.plot(evaluations, [row["best"] for row in curve], marker="o", label="best so far")
    ax.plot(evaluations, [row["iteration_mean"] for row in curve], alpha=0.6, label="iteration mean")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("loss")
    if all(row["best"] > 0 for row in curve) and all(math.isfinite(row["iteration_mean"]) for row in curve):
        ax.set_yscale("log")
    ax.set_title("loss")
    ax.legend()


def _trajectory_panel(ax, rows) -> None:
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    dims = list(dict.fromkeys(r["dimension"] for r in rows))
    width = 0.8 / len(predictors)
    for i, name in enumerate(predictors):
        mine = {r["dimension"]: r for r in rows if r["predictor"] == name}
        xs = [j + i * width for j in range(len(dims))]
        ys = [mine[d]["value"] for d in dims]
        err = [[mine[d]["value"] - mine[d]["ci_low"] for d in dims], [mine[d]["ci_high"] - mine[d]["value"]
                                                                      for d in dims]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(dims))], dims, rotation=30, ha="right")
    ax.set_ylabel("mean squared error (95% interval)")
    ax.set_title(rows[0]["target"])
    ax.legend(fontsize="small")


def _metric_panel(ax, rows) -> None:
    ys = list(range(len(rows)))
    ax.errorbar([r["target_value"] for r in rows], [y + 0.15 for y in ys],
                xerr=[[r["target_value"] - r["target_low"] for r in rows],
                      [r["target_high"] - r["target_value"] for r in rows]], fmt="s", capsize=3, label="target")
    ax.errorbar([r["value"] for r in rows], [y - 0.15 for y in ys],
                xerr=[[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]],
                fmt="o", capsize=3, label="fitted model")
    ax.set_yticks(ys, [r["target"] for r in rows], fontsize="small")
    ax.set_title("metric targets (95% intervals)")
    ax.legend(fontsize="small")
