"""``valuesim compare RUN_A RUN_B``: what differs between two runs, at the end and along the way.

Every reading both runs log (``metric, group, dimension``; the ``.low``/``.high`` companions left out) is
compared at each run's last step and at every step both logged:

- **paired** when the runs have the same seed and the same random streams (world b of one is world b of
  the other on the same draws: a change of parameters on common random numbers): the difference is the mean
  of the per-world differences, with a Student-t interval over worlds;
- **unpaired** otherwise: the difference of the means, with a Welch interval.

``overlap`` says whether the two runs' own 95% intervals overlap (a conservative reading: intervals can
overlap while the difference is still significant, which ``separated``, the difference's interval
excluding 0, tells). Over the trajectories each reading gets the largest difference and its step, the mean
difference over the common steps and the share of those steps at which the difference is separated from 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .stats import KEYS, mean_interval, replicate_metrics, t_quantile
from .summary import _plain


def paired(a, b) -> bool:
    """Whether the runs share seed and streams, world for world (and neither has counterfactual twins
    placed differently)."""
    ma, mb = a.manifest, b.manifest
    return (ma.get("seed") == mb.get("seed") and ma.get("streams") is not None
            and ma.get("streams") == mb.get("streams")
            and (ma.get("counterfactual_worlds") or []) == (mb.get("counterfactual_worlds") or []))


def difference(xa: np.ndarray, xb: np.ndarray, is_paired: bool, level: float = 0.95) -> dict[str, float]:
    """``diff, diff_low, diff_high`` of mean(xa) - mean(xb) (xa, xb: one value per world)."""
    if is_paired and len(xa) == len(xb):
        mean, low, high, n, se = mean_interval(np.asarray(xa) - np.asarray(xb), level)
        return {"diff": mean, "diff_low": low, "diff_high": high, "diff_se": se}
    ma, _, _, na, sa = mean_interval(xa, level)
    mb, _, _, nb, sb = mean_interval(xb, level)
    diff = ma - mb
    if na < 2 or nb < 2:
        return {"diff": diff, "diff_low": math.nan, "diff_high": math.nan, "diff_se": math.nan}
    se = math.sqrt(sa ** 2 + sb ** 2)
    if se == 0:
        return {"diff": diff, "diff_low": diff, "diff_high": diff, "diff_se": 0.0}
    df = se ** 4 / (sa ** 4 / (na - 1) + sb ** 4 / (nb - 1))  # Welch-Satterthwaite
    half = t_quantile(df, level) * se
    return {"diff": diff, "diff_low": diff - half, "diff_high": diff + half, "diff_se": se}


def _readings(run) -> pd.DataFrame:
    m = replicate_metrics(run)
    return m[~m["metric"].str.endswith((".low", ".high"))]


def _per_world(frame: pd.DataFrame) -> dict[tuple, pd.Series]:
    """(metric, group, dimension) -> values per world at each one's last logged step."""
    last = frame.sort_values("step").groupby([*KEYS, "world"], sort=False, observed=True)["value"].agg(
        lambda s: s.iloc[-1])
    return {key: part.droplevel(KEYS) for key, part in last.groupby(level=KEYS, sort=False)}


def compare(run_a, run_b, level: float = 0.95, series: bool = True) -> dict[str, Any]:
    """Compare two runs (paths or RunViews). Returns ``{"a", "b", "paired", "final" (DataFrame),
    "trajectories" (DataFrame), "series" (per reading: steps and difference with interval, when asked)}``."""
    from ..runs.reading import RunView, open_run

    a = run_a if isinstance(run_a, RunView) else open_run(run_a)
    b = run_b if isinstance(run_b, RunView) else open_run(run_b)
    is_paired = paired(a, b)
    fa, fb = _readings(a), _readings(b)
    final_a, final_b = _per_world(fa), _per_world(fb)
    rows = []
    for key in [k for k in final_a if k in final_b]:
        xa, xb = final_a[key], final_b[key]
        if is_paired:
            common = xa.index.intersection(xb.index)
            xa, xb = xa.loc[common], xb.loc[common]
        sa, sb = mean_interval(xa.to_numpy(), level), mean_interval(xb.to_numpy(), level)
        d = difference(xa.to_numpy(), xb.to_numpy(), is_paired, level)
        rows.append({**dict(zip(KEYS, key)), "a_mean": sa[0], "a_low": sa[1], "a_high": sa[2], "a_n": sa[3],
                     "b_mean": sb[0], "b_low": sb[1], "b_high": sb[2], "b_n": sb[3], **d,
                     "overlap": _overlap(sa[1], sa[2], sb[1], sb[2]), "separated": _separated(d)})
    final = pd.DataFrame(rows)
    trajectories, curves = _trajectories(fa, fb, is_paired, level, series)
    return {"a": str(a.path), "b": str(b.path), "paired": is_paired, "final": final,
            "trajectories": trajectories, "series": curves if series else None}


def _overlap(al, ah, bl, bh):
    if any(not math.isfinite(x) for x in (al, ah, bl, bh)):
        return None
    return bool(al <= bh and bl <= ah)


def _separated(d) -> bool | None:
    if not (math.isfinite(d["diff_low"]) and math.isfinite(d["diff_high"])):
        return None
    return bool(d["diff_low"] > 0 or d["diff_high"] < 0)


def _trajectories(fa, fb, is_paired, level, series):
    steps = sorted(set(fa["step"]) & set(fb["step"]))
    fa, fb = fa[fa["step"].isin(steps)], fb[fb["step"].isin(steps)]
    ga = {k: p for k, p in fa.groupby(KEYS, sort=False, observed=True)}
    gb = {k: p for k, p in fb.groupby(KEYS, sort=False, observed=True)}
    rows, curves = [], []
    for key in [k for k in ga if k in gb]:
        pa_ = ga[key].pivot_table(index="step", columns="world", values="value", dropna=False)
        pb_ = gb[key].pivot_table(index="step", columns="world", values="value", dropna=False)
        common = pa_.index.intersection(pb_.index)
        diffs = [difference(pa_.loc[s].to_numpy(), pb_.loc[s].to_numpy(), is_paired, level) for s in common]
        d = np.array([x["diff"] for x in diffs], dtype=float)
        if not np.isfinite(d).any():
            continue
        at = int(np.nanargmax(np.abs(d)))
        separated = [_separated(x) for x in diffs]
        known = [s for s in separated if s is not None]
        rows.append({**dict(zip(KEYS, key)), "steps": len(common), "max_abs_diff": float(abs(d[at])),
                     "max_diff": float(d[at]), "at_step": int(common[at]), "mean_diff": float(np.nanmean(d)),
                     "share_separated": float(np.mean(known)) if known else math.nan})
        if series:
            curves.append({**dict(zip(KEYS, key)), "step": [int(s) for s in common],
                           "diff": [_plain(x["diff"]) for x in diffs], "low": [_plain(x["diff_low"]) for x in diffs],
                           "high": [_plain(x["diff_high"]) for x in diffs]})
    return pd.DataFrame(rows), curves


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    def records(frame):
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]

    return {**result, "final": records(result["final"]), "trajectories": records(result["trajectories"])}


def render(result: dict[str, Any], console, top: int = 40) -> None:
    """The comparison as two rich tables (the readings whose final difference is largest against its
    uncertainty first; ``top`` of them)."""
    from rich.table import Table

    from .summary import fmt

    console.print(f"A: {result['a']}\nB: {result['b']}\n"
                  + ("paired: same seed and streams, differences per world" if result["paired"]
                     else "unpaired: different seeds or streams, Welch intervals")
                  + "; 95% intervals")
    final = result["final"]
    if final.empty:
        console.print("the runs share no readings")
        return
    score = (final["diff"].abs() / final["diff_se"].replace(0, np.nan)).fillna(final["diff"].abs())
    final = final.assign(_score=score).sort_values("_score", ascending=False).head(top)
    table = Table(title="at the end (A - B)", title_justify="left")
    for column in ("metric", "group", "dimension", "A", "B", "A - B", "95% interval", "overlap", "separated"):
        table.add_column(column)
    for r in final.itertuples():
        table.add_row(r.metric, r.group, r.dimension, fmt(r.a_mean), fmt(r.b_mean), fmt(r.diff),
                      f"[{fmt(r.diff_low)}, {fmt(r.diff_high)}]", _yes(r.overlap), _yes(r.separated))
    console.print(table)
    traj = result["trajectories"]
    if not traj.empty:
        traj = traj.sort_values("max_abs_diff", ascending=False).head(top)
        table = Table(title="over the trajectories (A - B at the steps both logged)", title_justify="left")
        for column in ("metric", "group", "dimension", "largest", "at step", "mean", "steps separated"):
            table.add_column(column)
        for r in traj.itertuples():
            table.add_row(r.metric, r.group, r.dimension, fmt(r.max_diff), str(r.at_step), fmt(r.mean_diff),
                          "-" if not math.isfinite(r.share_separated) else f"{r.share_separated:.0%} of {r.steps}")
        console.print(table)


def _yes(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "no")
