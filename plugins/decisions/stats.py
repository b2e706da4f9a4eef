"""95% intervals for the trials' tables: proportions (Wilson), differences of proportions, means, slopes.

Plain functions of counts and arrays (numpy), used by the trial metrics and the tables; each returns
``(estimate, low, high)``.
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
    cover too little; the interval is NaN for fewer than two values."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan,) * 3
    if x.size < 2:
        return float(x.mean()), math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.975, x.size - 1)) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


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
