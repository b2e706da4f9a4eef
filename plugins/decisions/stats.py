"""95% intervals for the trials' tables: proportions (Wilson), differences of proportions, means, slopes,
and their cluster-robust versions for units that share a random stream.

Plain functions of counts and arrays (numpy), used by the trial metrics and the tables; each returns
``(estimate, low, high)`` (the cluster-robust ones also the number of clusters).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def proportion(successes: float, n: float) -> tuple[float, float, float]:
    """The share ``successes / n`` with its Wilson 95% interval (NaN for n = 0)."""
    if n <= 0:
        return (math.nan,) * 3
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def difference(k1: float, n1: float, k2: float, n2: float) -> tuple[float, float, float]:
    """``k1/n1 - k2/n2`` with a 95% interval (Newcombe's hybrid score interval from the two Wilson intervals)."""
    if n1 <= 0 or n2 <= 0:
        return (math.nan,) * 3
    p1, l1, u1 = proportion(k1, n1)
    p2, l2, u2 = proportion(k2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def mean(x: np.ndarray) -> tuple[float, float, float]:
    """The mean with a normal 95% interval (NaN for no data; a zero-width interval for one value)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan,) * 3
    half = Z95 * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else 0.0
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def mean_t(x: np.ndarray) -> tuple[float, float, float]:
    """The mean with a Student-t 95% interval, for a few replicates (worlds) where a normal quantile would
    cover too little; the interval is NaN for fewer than two values (``valuesim analyze``'s
    :func:`sim.analysis.stats.mean_interval`)."""
    from sim.analysis.stats import mean_interval

    estimate, low, high, _, _ = mean_interval(x)
    return estimate, low, high


def slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """The least-squares slope of y on x with a 95% interval (Student t); NaN when x does not vary."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    sxx = float(((x - x.mean()) ** 2).sum()) if x.size else 0.0
    if x.size < 3 or sxx == 0:
        return (math.nan,) * 3
    b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + b * (x - x.mean()))
    se = math.sqrt(float((resid**2).sum()) / (x.size - 2) / sxx)
    from scipy.stats import t

    half = float(t.ppf(0.975, x.size - 2)) * se
    return b, b - half, b + half


# ---------------------------------------------------------------- clustered units
#
# A world's purchases share its catalogues and a pair's purchases share the pair, so purchases (and pairs) are
# not independent draws; worlds on distinct random streams are. The estimators below take each unit's cluster
# (its random stream: worlds that share a stream share their draws, sim.core.rng) and give the CR1 sandwich
# standard error (Liang-Zeger with Stata's small-sample factor) with a Student-t quantile on G - 1 degrees of
# freedom, G the number of clusters (Cameron & Miller 2015, "A practitioner's guide to cluster-robust
# inference"). With one cluster the spread between clusters is unknown: the interval is NaN, not invented.


def _cluster_sums(clusters, *columns: np.ndarray) -> list[np.ndarray]:
    """Per-cluster sums of each column (clusters: one label per row, numbers or strings, or one row of
    numbers per row such as (seed, stream))."""
    labels = np.asarray(clusters)
    _, index = np.unique(labels, return_inverse=True, axis=0 if labels.ndim > 1 else None)
    index = np.asarray(index).reshape(-1)
    size = int(index.max()) + 1 if index.size else 0
    return [np.bincount(index, weights=np.asarray(c, dtype=float), minlength=size) for c in columns]


def _t(df: int) -> float:
    from sim.analysis.stats import t_quantile

    return t_quantile(df)


def cluster_ratio(num, den, clusters) -> tuple[float, float, float, int]:
    """``sum(num) / sum(den)`` with a cluster-robust 95% interval, and the number of clusters G.

    The ratio is the regression of each unit outcome (a purchase's override, a client's shift) on a constant,
    so CR1's variance is ``G / (G - 1) * sum_g (num_g - r den_g)^2 / (sum den)^2`` (num_g, den_g: the cluster's
    totals) and the interval ``r +- t(G - 1) se``. With clusters of equal size this is :func:`mean_t` of the
    clusters' own ratios. NaN interval for G < 2; all NaN without data."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if den.size == 0 or den.sum() <= 0:
        return math.nan, math.nan, math.nan, 0
    n_g, d_g = _cluster_sums(clusters, num, den)
    r, g = float(num.sum() / den.sum()), int(n_g.size)
    if g < 2:
        return r, math.nan, math.nan, g
    se = math.sqrt(g / (g - 1) * float(((n_g - r * d_g) ** 2).sum())) / float(den.sum())
    half = _t(g - 1) * se
    return r, r - half, r + half, g


def cluster_difference(num1, den1, clusters1, num2, den2, clusters2) -> tuple[float, float, float, int]:
    """``sum(num1)/sum(den1) - sum(num2)/sum(den2)`` with a cluster-robust 95% interval, and G.

    Two ratios over the same clusters (two arms of a trial run in the same worlds): each cluster's
    contribution to the difference is ``(num1_g - r1 den1_g) / sum den1 - (num2_g - r2 den2_g) / sum den2``
    (the delta method on the two ratios), so a cluster that moves both arms alike cancels; CR1 with
    t(G - 1) as :func:`cluster_ratio`. NaN interval for G < 2."""
    num1, den1, num2, den2 = (np.asarray(v, dtype=float) for v in (num1, den1, num2, den2))
    if den1.sum() <= 0 or den2.sum() <= 0:
        return math.nan, math.nan, math.nan, 0
    labels = np.concatenate([np.asarray(clusters1), np.asarray(clusters2)])
    zeros1, zeros2 = np.zeros_like(num2), np.zeros_like(num1)
    n1, d1, n2, d2 = _cluster_sums(labels, np.concatenate([num1, zeros1]), np.concatenate([den1, zeros1]),
                                   np.concatenate([zeros2, num2]), np.concatenate([zeros2, den2]))
    r1, r2 = float(num1.sum() / den1.sum()), float(num2.sum() / den2.sum())
    d, g = r1 - r2, int(n1.size)
    if g < 2:
        return d, math.nan, math.nan, g
    e = (n1 - r1 * d1) / den1.sum() - (n2 - r2 * d2) / den2.sum()
    half = _t(g - 1) * math.sqrt(g / (g - 1) * float((e**2).sum()))
    return d, d - half, d + half, g


def cluster_slope(x, y, clusters) -> tuple[float, float, float, int]:
    """The least-squares slope of y on x with a cluster-robust 95% interval, and G.

    The slope's row of ``(X'X)^-1 X'`` is ``(x_i - mean x) / Sxx``, so CR1's variance is
    ``c * sum_g (sum_{i in g} (x_i - mean x) e_i)^2 / Sxx^2`` with e the residuals and
    ``c = G / (G - 1) * (N - 1) / (N - 2)``; the interval uses t(G - 1). Units of one cluster that share a
    shock (a world's catalogues) move together and count once; clusters that share their draws across the
    levels of x (a sweep on common streams) have that shock cancel in the slope, as it does. NaN interval for
    G < 2; all NaN when x does not vary."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels = np.asarray(clusters)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, labels = x[keep], y[keep], labels[keep]
    sxx = float(((x - x.mean()) ** 2).sum()) if x.size else 0.0
    if x.size < 3 or sxx == 0:
        return math.nan, math.nan, math.nan, 0
    b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + b * (x - x.mean()))
    (score,) = _cluster_sums(labels, (x - x.mean()) * resid)
    g, n = int(score.size), x.size
    if g < 2:
        return b, math.nan, math.nan, g
    se = math.sqrt(g / (g - 1) * (n - 1) / (n - 2) * float((score**2).sum())) / sxx
    half = _t(g - 1) * se
    return b, b - half, b + half, g
