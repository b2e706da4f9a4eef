"""Compiled CPU kernels for the pairwise models (numba). The GPU path stays torch.

Arithmetic is kept identical to the torch kernels and to the reference loops:
distances in float64 from the float32 values, updates in float32 as
``x + mu * (other - x)`` (no fused multiply-add: fastmath stays off).
Metrics: 0 = l2 (Euclidean / sqrt(K)), 1 = linf, 2 = per dimension.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, inline="always")
def _clip(v):
    return min(max(v, np.float32(0.0)), np.float32(1.0))


@njit(cache=True, nogil=True)
def _interact(x, shown, fixed, i, j, eps_i, mu_i, eps_j, mu_j, metric, repulse):
    """One Deffuant interaction between rows i and j of ``x`` [N, K], in place."""
    k_dims = x.shape[1]
    fi = fixed[i]
    fj = fixed[j]
    if metric == 2:
        for k in range(k_dims):
            a = x[i, k]
            c = x[j, k]
            sa = shown[i, k] if fi else a
            sc = shown[j, k] if fj else c
            di = abs(np.float64(sc) - np.float64(a))
            dj = abs(np.float64(sa) - np.float64(c))
            if di < np.float64(eps_i):
                x[i, k] = a + mu_i * (sc - a)
            elif di > repulse:
                x[i, k] = _clip(a - mu_i * (sc - a))
            if dj < np.float64(eps_j):
                x[j, k] = c + mu_j * (sa - c)
            elif dj > repulse:
                x[j, k] = _clip(c - mu_j * (sa - c))
        return
    di = 0.0
    dj = 0.0
    for k in range(k_dims):
        a = np.float64(x[i, k])
        c = np.float64(x[j, k])
        sa = np.float64(shown[i, k]) if fi else a
        sc = np.float64(shown[j, k]) if fj else c
        if metric == 0:
            di += (sc - a) * (sc - a)
            dj += (sa - c) * (sa - c)
        else:
            di = max(di, abs(sc - a))
            dj = max(dj, abs(sa - c))
    if metric == 0:
        ti = np.float64(eps_i) * np.float64(eps_i) * k_dims
        tj = np.float64(eps_j) * np.float64(eps_j) * k_dims
        r = repulse * repulse * k_dims
    else:
        ti = np.float64(eps_i)
        tj = np.float64(eps_j)
        r = repulse
    move_i = 1 if di < ti else (-1 if di > r else 0)
    move_j = 1 if dj < tj else (-1 if dj > r else 0)
    if move_i == 0 and move_j == 0:
        return
    for k in range(k_dims):
        a = x[i, k]
        c = x[j, k]
        sa = shown[i, k] if fi else a
        sc = shown[j, k] if fj else c
        if move_i == 1:
            x[i, k] = a + mu_i * (sc - a)
        elif move_i == -1:
            x[i, k] = _clip(a - mu_i * (sc - a))
        if move_j == 1:
            x[j, k] = c + mu_j * (sa - c)
        elif move_j == -1:
            x[j, k] = _clip(c - mu_j * (sa - c))


@njit(cache=True, nogil=True)
def _deffuant_world(x, shown, fixed, focal, partner, eps, mu, metric, repulse):
    for m in range(focal.shape[0]):
        j = partner[m]
        if j < 0:
            continue
        i = focal[m]
        _interact(x, shown, fixed, i, j, eps[i], mu[i], eps[j], mu[j], metric, repulse)


def deffuant(x, shown, fixed, focal, partner, eps, mu, metric, repulse):
    """Apply pairs ``[B, M]`` in order, world by world, in place on ``x``.

    ``x`` and ``shown`` are [B, N, K] float32, ``fixed`` [N] bool marks agents
    that show ``shown`` instead of their current values, ``eps`` and ``mu``
    are [B or 1, N] float32. With at least as many worlds as threads the
    worlds run in parallel; otherwise (and for short pair lists) each world's pairs are split into rounds
    of disjoint pairs (``schedule``) whose pairs run in parallel. Both give
    the sequential result bit for bit.
    """
    # Below a few thousand pairs a world, the rounds' thread hand-offs cost more than they save.
    if x.shape[0] >= numba.get_num_threads() or focal.shape[1] < 20_000:
        _deffuant_worlds(x, shown, fixed, focal, partner, eps, mu, metric, repulse)
        return
    for b in range(x.shape[0]):
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        order, starts = schedule(focal[b], partner[b], x.shape[1])
        _deffuant_rounds(x[b], shown[b], fixed, focal[b], partner[b], eb, mb, metric, repulse, order, starts)


@njit(cache=True, parallel=True)
def _deffuant_worlds(x, shown, fixed, focal, partner, eps, mu, metric, repulse):
    for b in prange(x.shape[0]):
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _deffuant_world(x[b], shown[b], fixed, focal[b], partner[b], eb, mb, metric, repulse)


@njit(cache=True)
def schedule(focal, partner, n):
    """Pair positions grouped by round: pair k goes one round after the last earlier pair sharing an agent.

    Returns ``order`` (positions, round by round, in sequence order within a
    round) and ``starts`` (round r holds ``order[starts[r]:starts[r + 1]]``).
    The same rounds as ``sim.core.pairing.rounds``, found in one sequential pass.
    """
    m = focal.shape[0]
    last = np.zeros(n, np.int32)
    level = np.empty(m, np.int32)
    top = 0
    for k in range(m):
        j = partner[k]
        if j < 0:
            level[k] = -1
            continue
        i = focal[k]
        d = max(last[i], last[j]) + 1
        last[i] = d
        last[j] = d
        level[k] = d
        top = max(top, d)
    counts = np.zeros(top + 1, np.int64)
    for k in range(m):
        if level[k] > 0:
            counts[level[k] - 1] += 1
    starts = np.zeros(top + 1, np.int64)
    for r in range(top):
        starts[r + 1] = starts[r] + counts[r]
    order = np.empty(starts[top], np.int64)
    fill = starts[:top].copy()
    for k in range(m):
        r = level[k]
        if r > 0:
            order[fill[r - 1]] = k
            fill[r - 1] += 1
    return order, starts


@njit(cache=True, parallel=True)
def _deffuant_rounds(x, shown, fixed, focal, partner, eps, mu, metric, repulse, order, starts):
    for r in range(starts.shape[0] - 1):
        for q in prange(starts[r], starts[r + 1]):
            k = order[q]
            i = focal[k]
            j = partner[k]
            _interact(x, shown, fixed, i, j, eps[i], mu[i], eps[j], mu[j], metric, repulse)


@njit(cache=True, nogil=True)
def _bias_world(x, shown, fixed, active, rowptr, col, focal, u, eps, mu, metric, repulse, gamma, floor):
    k_dims = x.shape[1]
    weights = np.empty(rowptr.shape[0], dtype=np.float64)
    for m in range(focal.shape[0]):
        i = focal[m]
        if not active[i]:
            continue
        start = rowptr[i]
        deg = rowptr[i + 1] - start
        total = 0.0
        for e in range(deg):
            j = col[start + e]
            w = 0.0
            if active[j]:
                d = 0.0
                for k in range(k_dims):
                    diff = np.float64(shown[j, k] if fixed[j] else x[j, k]) - np.float64(x[i, k])
                    if metric == 0:
                        d += diff * diff
                    else:
                        d = max(d, abs(diff))
                if metric == 0:
                    d = np.sqrt(d / k_dims)
                w = max(d, floor) ** (-gamma)
            total += w
            weights[e] = total
        if total <= 0.0:
            continue
        target = u[m] * total
        pick = deg - 1
        for e in range(deg):
            if target < weights[e]:
                pick = e
                break
        j = col[start + pick]
        _interact(x, shown, fixed, i, j, eps[i], mu[i], eps[j], mu[j], metric, repulse)


@njit(cache=True, parallel=True)
def algorithmic_bias(x, shown, fixed, active, rowptr, col, focal, u, eps, mu, metric, repulse, gamma, floor):
    """Deffuant with the partner drawn with probability proportional to distance^-gamma.

    The partner depends on the current values, so each world runs its draws
    in sequence (worlds in parallel). ``u`` [B, M] float64 picks the partner.
    """
    for b in prange(x.shape[0]):
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _bias_world(x[b], shown[b], fixed, active[b], rowptr, col, focal[b], u[b], eb, mb, metric, repulse,
                    gamma, floor)


@njit(cache=True, parallel=True)
def hk_means(x, shows, active, rowptr, col, eps, metric, out):
    """Hegselmann–Krause accepted means into ``out`` [B, N, K]; one agent per parallel iteration."""
    b_worlds, n, k_dims = x.shape
    for flat in prange(b_worlds * n):
        b = flat // n
        i = flat % n
        e = np.float64(eps[0, i] if eps.shape[0] == 1 else eps[b, i])
        acc = np.zeros(k_dims, dtype=np.float64)
        cnt = np.ones(k_dims, dtype=np.float64)
        for k in range(k_dims):
            acc[k] = x[b, i, k]
        for p in range(rowptr[i], rowptr[i + 1]):
            j = col[p]
            if not active[b, j]:
                continue
            if metric == 2:
                for k in range(k_dims):
                    if abs(np.float64(shows[b, j, k]) - np.float64(x[b, i, k])) <= e:
                        acc[k] += shows[b, j, k]
                        cnt[k] += 1.0
                continue
            d = 0.0
            for k in range(k_dims):
                diff = np.float64(shows[b, j, k]) - np.float64(x[b, i, k])
                if metric == 0:
                    d += diff * diff
                else:
                    d = max(d, abs(diff))
            if (metric == 0 and d <= e * e * k_dims) or (metric == 1 and d <= e):
                for k in range(k_dims):
                    acc[k] += shows[b, j, k]
                    cnt[k] += 1.0
        for k in range(k_dims):
            out[b, i, k] = np.float32(acc[k] / cnt[k])
