"""Predictors a fitted model has to beat on observed trajectories, and errors with intervals by network.

- ``persistence``: x(t+1) = x(t);
- ``degroot``: unbounded averaging, x_i(t+1) = the mean of x_j(t) over i and its neighbours;
- ``degroot_fitted``: x(t+1) = x(t) + a (degroot(x(t)) - x(t)), the step a in [0, 1] fitted to the data
  (so the baseline is as good as averaging without a bound can be).

They predict exactly as the model is scored (``one_step``: from each observed
snapshot; ``free_run``: from the first one on). Intervals treat each connected
component of the network (an ego network) as one independent unit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .targets import Observed


def averaging_matrix(network) -> sp.csr_matrix:
    """Row-normalised (adjacency + identity): DeGroot's weights."""
    rowptr, col = network.rowptr.cpu().numpy(), network.col.cpu().numpy()
    n = network.n
    adjacency = sp.csr_matrix((np.ones(col.size), col, rowptr), shape=(n, n)) + sp.identity(n, format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return sp.diags(1.0 / degree) @ adjacency


def units(network) -> np.ndarray:
    """``[N]`` the unit of each agent for intervals: its connected component, or itself if there are few."""
    rowptr, col = network.rowptr.cpu().numpy(), network.col.cpu().numpy()
    graph = sp.csr_matrix((np.ones(col.size), col, rowptr), shape=(network.n, network.n))
    count, labels = connected_components(graph, directed=False)
    return labels if count >= 30 else np.arange(network.n)


def predict(obs: Observed, step_fn) -> tuple[np.ndarray, np.ndarray]:
    """Squared errors per agent and dimension summed over steps [N, K], and observations per agent [N]."""
    values, seen = obs.values.astype(np.float64), obs.seen
    fill = np.where(seen[0][:, None], values[0], values[0][seen[0]].mean(axis=0))
    state = fill
    sq = np.zeros(values.shape[1:])
    count = np.zeros(values.shape[1])
    for t in range(1, len(obs.steps)):
        if obs.loss == "one_step" and t > 1:
            state = np.where(seen[t - 1][:, None], values[t - 1], state)
        for _ in range(int(obs.steps[t] - obs.steps[t - 1])):
            state = step_fn(state)
        sq += (state - values[t]) ** 2 * seen[t][:, None]
        count += seen[t]
    return sq, count


def baselines(obs: Observed, network) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each baseline's (squared errors [N, K], counts [N]); ``degroot_fitted`` also carries its step."""
    w = averaging_matrix(network)
    out = {"persistence": predict(obs, lambda x: x), "degroot": predict(obs, lambda x: w @ x)}
    best = None
    for a in np.linspace(0.0, 1.0, 51):  # a 1-D least-squares fit: a grid is exact enough and cannot fail
        sq, count = predict(obs, lambda x, a=a: x + a * (w @ x - x))
        if best is None or sq.sum() < best[1].sum():
            best = (a, sq, count)
    out["degroot_fitted"] = (best[1], best[2])
    out["degroot_fitted_step"] = best[0]
    return out


def mse_interval(sq: np.ndarray, count: np.ndarray, unit: np.ndarray, dim: int | None = None,
                 minus: np.ndarray | None = None) -> tuple[float, float, float]:
    """MSE (of one dimension, or all) with a 95% interval by units (a ratio estimator over clusters).

    ``minus``: squared errors of another predictor on the same data; then the
    paired difference of the two MSEs and its interval.
    """
    err = sq if dim is None else sq[:, dim:dim + 1]
    if minus is not None:
        err = err - (minus if dim is None else minus[:, dim:dim + 1])
    per_agent = err.sum(axis=1)
    weight = count * err.shape[1]
    s = np.bincount(unit, per_agent)
    c = np.bincount(unit, weight)
    keep = c > 0
    s, c = s[keep], c[keep]
    ratio = s.sum() / c.sum()
    g = s.size
    se = np.sqrt(g / max(g - 1, 1) * ((s - ratio * c) ** 2).sum()) / c.sum()
    return float(ratio), float(ratio - 1.96 * se), float(ratio + 1.96 * se)
