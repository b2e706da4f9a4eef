"""Slow, obviously correct reference loops: the oracles the fast kernels are tested against.

Plain Python over the same draws the kernels receive; float32 values, float64
distances, the update written as ``x + mu * (other - x)`` exactly as the
kernels write it. Not for production use.
"""

from __future__ import annotations

import math

import numpy as np


def _distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    diff = b.astype(np.float64) - a.astype(np.float64)
    if metric == "l2":
        return math.sqrt(float(np.sum(diff * diff)) / len(a))
    return float(np.max(np.abs(diff)))


def world_csr(rowptrs, cols, graph, b):
    """World b's own graph as one ``(rowptr, col)`` from per-world graphs (``Network.rowptrs``, ``.cols``,
    ``.world_graph(B)``): the loops below take one graph, and each world of a batch is fed its own."""
    rowptr = np.asarray(rowptrs)[int(graph[b])]
    return rowptr - rowptr[0], np.asarray(cols)[rowptr[0]:rowptr[-1]]


def pairs_reference(rowptr, col, active, u_focal, u_partner, used, rule="aligned"):
    """One world's (focal, partner) slots from their float64 uniforms, as ``sim.core.pairing`` defines them.

    Slot s < ``used``: the focal agent is agent ``floor(u_focal[s] * N)``, the
    slot spent (-1, -1) if that agent is absent (``rule`` aligned), or the
    ``floor(u_focal[s] * m)``-th of the m active agents (rebuilt); the partner
    is the ``floor(u_partner[s] * d)``-th of its d active neighbours (-1 if it
    has none). Later slots are (-1, -1).
    """
    n = len(active)
    agents = [i for i in range(n) if active[i]]
    focal, partner = [-1] * len(u_focal), [-1] * len(u_focal)
    for s in range(used if agents else 0):
        if rule == "aligned":
            i = min(int(u_focal[s] * n), n - 1)
            if not active[i]:
                continue
        else:
            i = agents[min(int(u_focal[s] * len(agents)), len(agents) - 1)]
        candidates = [j for j in col[rowptr[i]:rowptr[i + 1]].tolist() if active[j]]
        focal[s] = i
        if candidates:
            partner[s] = candidates[min(int(u_partner[s] * len(candidates)), len(candidates) - 1)]
    return np.array(focal, dtype=np.int64), np.array(partner, dtype=np.int64)


def deffuant_reference(x, focal, partner, eps, mu, metric="l2", repulsion=None, shown=None, fixed=None):
    """Sequential Deffuant on one world: ``x`` [N, K] float32, pairs applied in order; returns a new array.

    An agent marked in ``fixed`` shows the row of ``shown`` instead of its values.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    for i, j in zip(focal.tolist(), partner.tolist()):
        if j < 0:
            continue
        xi, xj = x[i].copy(), x[j].copy()
        si = shown[i] if fixed is not None and fixed[i] else xi
        sj = shown[j] if fixed is not None and fixed[j] else xj
        x[i] = _move(xi, sj, np.float32(eps[i]), np.float32(mu[i]), metric, repulsion)
        x[j] = _move(xj, si, np.float32(eps[j]), np.float32(mu[j]), metric, repulsion)
    return x


def _move(own, other, eps, mu, metric, repulsion):
    out = own.copy()
    if metric == "per_dimension":
        for k in range(len(own)):
            d = abs(float(other[k]) - float(own[k]))
            if d < float(eps):
                out[k] = own[k] + mu * (other[k] - own[k])
            elif repulsion is not None and d > repulsion:
                out[k] = min(max(own[k] - mu * (other[k] - own[k]), 0.0), 1.0)
        return out
    if _within(own, other, eps, metric):
        return own + mu * (other - own)
    if repulsion is not None and not _within(own, other, repulsion, metric, strict=False):
        return np.clip(own - mu * (other - own), 0.0, 1.0).astype(np.float32)
    return out


def _within(a, b, bound, metric: str, strict: bool = True) -> bool:
    """d(a, b) < bound (or <=). l2 compares the sum of squares with bound^2 K, as the kernels do."""
    diff = b.astype(np.float64) - a.astype(np.float64)
    if metric == "l2":
        lhs, rhs = float(np.sum(diff * diff)), float(bound) * float(bound) * len(a)
    else:
        lhs, rhs = float(np.max(np.abs(diff))), float(bound)
    return lhs < rhs if strict else lhs <= rhs


def hegselmann_krause_reference(x, neighbours, eps, metric="l2"):
    """One synchronous HK step on one world: ``neighbours[i]`` lists i's neighbours; returns a new array."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    k = x.shape[1]
    for i in range(len(x)):
        accepted = [i] + [j for j in neighbours[i]]
        if metric == "per_dimension":
            for d in range(k):
                vals = [float(x[j, d]) for j in accepted
                        if j == i or abs(float(x[j, d]) - float(x[i, d])) <= float(np.float32(eps[i]))]
                out[i, d] = sum(vals) / len(vals)
            continue
        chosen = [j for j in accepted if j == i or _within(x[i], x[j], np.float32(eps[i]), metric, strict=False)]
        out[i] = np.mean(x[chosen].astype(np.float64), axis=0)
    return out


def algorithmic_bias_reference(x, rowptr, col, focal, u, eps, mu, gamma, min_distance=1e-5, metric="l2",
                               active=None):
    """Sequential algorithmic-bias Deffuant on one world; partner picked by ``u`` over distance^-gamma weights.

    ``focal`` -1 is an unused slot; only ``active`` neighbours are candidates.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    for i, ui in zip(focal.tolist(), u.tolist()):
        if i < 0:
            continue
        nbrs = [j for j in col[rowptr[i]:rowptr[i + 1]].tolist() if active is None or active[j]]
        if not nbrs:
            continue
        weights = np.array([max(_distance(x[i], x[j], metric), min_distance) ** (-gamma) for j in nbrs])
        cumulative = np.cumsum(weights)
        pick = int(np.searchsorted(cumulative, ui * cumulative[-1], side="right"))
        j = nbrs[min(pick, len(nbrs) - 1)]
        xi, xj = x[i].copy(), x[j].copy()
        x[i] = _move(xi, xj, np.float32(eps[i]), np.float32(mu[i]), metric, None)
        x[j] = _move(xj, xi, np.float32(eps[j]), np.float32(mu[j]), metric, None)
    return x
