"""The statistics every analysis shares: means over replicates with Student-t intervals.

A replicate is one world of a run (its own random stream), or one world of one of several runs of the same
scenario pooled as seeds. Counterfactual twins (worlds that run without some group, ``counterfactual:``) are
not replicates of the scenario and are left out (:func:`replicate_metrics`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LEVEL = 0.95
KEYS = ["metric", "group", "dimension"]


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile for ``df`` degrees of freedom (normal for df = inf)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))


def mean_interval(samples, level: float = LEVEL) -> tuple[float, float, float, int, float]:
    """``(mean, low, high, n, se)`` of the finite ``samples``: mean +- t(n-1) * sd / sqrt(n).

    With one sample the interval is NaN (one world says nothing of the spread); with none everything is NaN.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1, math.nan
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = t_quantile(n - 1, level) * se
    return mean, mean - half, mean + half, n, se


def band(frame: pd.DataFrame, by: list[str], value: str = "value", level: float = LEVEL) -> pd.DataFrame:
    """Per ``by`` group of rows (one row per replicate), ``mean, low, high, n, se`` (see :func:`mean_interval`)."""
    rows = []
    for key, part in frame.groupby(by, dropna=False, sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high, n, se = mean_interval(part[value].to_numpy(), level)
        rows.append({**dict(zip(by, key)), "mean": mean, "low": low, "high": high, "n": n, "se": se})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n", "se"])


def replicate_metrics(run) -> pd.DataFrame:
    """``run.metrics()`` without the counterfactual twin worlds, ``dimension`` as a string (``""`` where a
    reading has none) so that rows group cleanly."""
    metrics = run.metrics()
    twins = run.manifest.get("counterfactual_worlds") or []
    if twins:
        metrics = metrics[~metrics["world"].isin(twins)]
    metrics = metrics.copy()
    metrics["dimension"] = metrics["dimension"].fillna("").astype(str)
    metrics["group"] = metrics["group"].astype(str)
    return metrics
