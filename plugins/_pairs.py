"""Kernels over pairs of agents, for many small point sets at once: single-linkage components (``clusters``)
and the mean pairwise distance (``polarization``).

The point sets are segments of rows of the worlds' values: for world b and
segment s, the points are ``values[b, rows[b, offsets[s]:offsets[s + 1]]]``
with their validity in ``valid`` (padding and absent agents are not valid).
Two valid points are linked when ``sum_k (x_ik - x_jk)^2 <= radius2``, the
squared differences taken in float64 from the float32 values and summed in
dimension order; a component is a set of points joined by a chain of links.
Both kernels make exactly these decisions, so they give the same components
on every device:

- ``numba`` (CPU, the (world, segment) tasks in parallel): union-find over
  the points sorted by the sum of their coordinates. Two linked points differ
  in that sum by at most ``sqrt(K * radius2)`` (Cauchy-Schwarz), so each point
  is compared only with the points after it inside that window, and never
  with a point already in its component. Tight clusters cost a few
  comparisons per point, spread-out values a fraction of all pairs.
- ``torch`` (any device, the GPU path): the dense link matrix of each task in
  chunks, then min-label propagation with pointer jumping until no label
  changes (a round per doubling of a chain's length).

:func:`component_sizes` returns the size of each component, in the layout of
``rows``: within a segment, slot r holds the size of one component (0 for
most slots), so the non-zero slots of a segment are its cluster sizes.
:func:`pair_distance_sums` sums the Euclidean distances of the unordered
pairs of valid points of every (world, segment), in the same layout.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

# Elements of a chunk of link matrices in the torch kernel (about 16 MB of booleans).
CHUNK_ELEMENTS = 1 << 24


@njit(cache=True, nogil=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


@njit(cache=True, nogil=True)
def _task_sizes(x, rows, valid, radius2, window, sizes):
    """Components of the points ``x[rows]`` (where ``valid``): ``sizes[root]`` += 1 for each point."""
    m = rows.shape[0]
    k_dims = x.shape[1]
    points = np.empty((m, k_dims), dtype=np.float64)
    key = np.empty(m, dtype=np.float64)
    for i in range(m):
        total = 0.0
        for k in range(k_dims):
            points[i, k] = np.float64(x[rows[i], k])
            total += points[i, k]
        key[i] = total if valid[i] else np.inf
    order = np.argsort(key)
    parent = np.arange(m)
    for a in range(m):
        i = order[a]
        if not valid[i]:
            break  # the invalid points sort last
        for b in range(a + 1, m):
            j = order[b]
            if key[j] - key[i] > window:
                break  # also stops at the invalid points (key inf)
            root_i = _find(parent, i)
            root_j = _find(parent, j)
            if root_i == root_j:
                continue
            d2 = 0.0
            for k in range(k_dims):
                diff = points[i, k] - points[j, k]
                d2 += diff * diff
                if d2 > radius2:
                    break  # the sum only grows: the decision is already made
            if d2 <= radius2:
                parent[max(root_i, root_j)] = min(root_i, root_j)
    for i in range(m):
        if valid[i]:
            sizes[_find(parent, i)] += 1


@njit(cache=True, nogil=True, parallel=True)
def _sizes_numba(values, rows, valid, offsets, radius2, window):
    worlds = values.shape[0]
    segments = offsets.shape[0] - 1
    sizes = np.zeros(rows.shape, dtype=np.int64)
    for task in prange(worlds * segments):
        b, s = task // segments, task % segments
        lo, hi = offsets[s], offsets[s + 1]
        _task_sizes(values[b], rows[b, lo:hi], valid[b, lo:hi], radius2, window, sizes[b, lo:hi])
    return sizes


def sizes_numba(values: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, offsets: list[int],
                radius2: float) -> torch.Tensor:
    """:func:`component_sizes` compiled, on the CPU."""
    k = values.shape[2]
    # The window only prunes comparisons: a little slack for the rounding of the sums costs nothing.
    window = float(np.sqrt(k * radius2)) * (1 + 1e-9) + 1e-12
    as_numpy = lambda t, dtype: np.ascontiguousarray(t.detach().cpu().to(dtype).numpy())  # noqa: E731
    sizes = _sizes_numba(as_numpy(values, torch.float32), as_numpy(rows, torch.int64), as_numpy(valid, torch.bool),
                         np.asarray(offsets, dtype=np.int64), float(radius2), window)
    return torch.from_numpy(sizes).to(values.device)


def _links(points: torch.Tensor, valid: torch.Tensor, radius2: float) -> torch.Tensor:
    """Dense links [T, m, m] (each valid point linked to itself)."""
    x = points.double()
    d2 = torch.zeros(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for k in range(x.shape[2]):  # dimension order, as the numba kernel sums
        diff = x[:, :, None, k] - x[:, None, :, k]
        d2 += diff * diff
    return (d2 <= radius2) & valid[:, :, None] & valid[:, None, :]


def labels_torch(points: torch.Tensor, valid: torch.Tensor, radius2: float) -> torch.Tensor:
    """Component labels [T, m] (the smallest row of the component, -1 where not valid), any device."""
    tasks, m, _ = points.shape
    out = torch.empty(tasks, m, dtype=torch.int64, device=points.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, m * m))
    dtype = torch.int16 if m < 2**15 else torch.int32
    eye = torch.eye(m, dtype=torch.bool, device=points.device)
    for start in range(0, tasks, chunk):  # chunks of tasks bound the memory, not a loop over worlds
        stop = min(tasks, start + chunk)
        link = _links(points[start:stop], valid[start:stop], radius2) | eye
        labels = torch.arange(m, device=points.device, dtype=dtype).expand(stop - start, m).contiguous()
        big = torch.tensor(torch.iinfo(dtype).max, dtype=dtype, device=points.device)
        while True:
            new = torch.where(link, labels[:, None, :], big).amin(2)
            while True:  # pointer jumping: follow each chain of smaller labels to its end
                jumped = new.gather(1, new.long())
                if torch.equal(jumped, new):
                    break
                new = jumped
            if torch.equal(new, labels):
                break
            labels = new
        out[start:stop] = torch.where(valid[start:stop], labels.long(), -1)
    return out


def sizes_torch(values: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, offsets: list[int],
                radius2: float) -> torch.Tensor:
    """:func:`component_sizes` on any device: the segments padded to one width, as tasks of the dense kernel."""
    b = values.shape[0]
    widths = [hi - lo for lo, hi in zip(offsets[:-1], offsets[1:])]
    width = max(1, max(widths, default=1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    task_rows = torch.cat([pad(rows[:, lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])])  # segment-major
    task_valid = torch.cat([pad(valid[:, lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])])
    world = torch.arange(b, device=values.device).repeat(len(widths))
    points = values[world[:, None], task_rows]  # [segments x B, width, K]
    labels = labels_torch(points, task_valid, radius2)
    sizes = torch.zeros(labels.shape, dtype=torch.int64, device=labels.device)
    sizes = sizes.scatter_add_(1, labels.clamp(min=0), task_valid.long()).view(len(widths), b, width)
    return torch.cat([sizes[s, :, :w] for s, w in enumerate(widths)], 1)


def component_sizes(values: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, offsets: list[int],
                    radius2: float, kernel: str | None = None) -> torch.Tensor:
    """Component sizes [B, R] int64 of every (world, segment), in the layout of ``rows`` [B, R] (see above).

    ``values`` [B, N, K]; ``rows`` [B, R] int64 and ``valid`` [B, R] bool, the segments' rows side by side,
    segment s at columns ``offsets[s]:offsets[s + 1]``. ``kernel`` is ``"numba"`` or ``"torch"``; by default
    numba on the CPU and torch elsewhere.
    """
    kernel = kernel or ("numba" if values.device.type == "cpu" else "torch")
    run = sizes_numba if kernel == "numba" else sizes_torch
    return run(values, rows, valid, offsets, radius2)


# --------------------------------------------------------------------------- pairwise distance


@njit(cache=True, nogil=True, parallel=True)
def _distance_sums_numba(values, rows, valid, offsets):
    worlds, k_dims = values.shape[0], values.shape[2]
    segments = offsets.shape[0] - 1
    sums = np.zeros((worlds, segments), dtype=np.float64)
    for task in prange(worlds * segments):
        b, s = task // segments, task % segments
        lo, hi = offsets[s], offsets[s + 1]
        points = np.empty((hi - lo, k_dims), dtype=np.float64)
        m = 0
        for r in range(lo, hi):
            if valid[b, r]:
                for k in range(k_dims):
                    points[m, k] = np.float64(values[b, rows[b, r], k])
                m += 1
        total = 0.0
        for i in range(m):
            for j in range(i + 1, m):
                d2 = 0.0
                for k in range(k_dims):
                    diff = points[i, k] - points[j, k]
                    d2 += diff * diff
                total += np.sqrt(d2)
        sums[b, s] = total
    return sums


def pair_distance_sums(values: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, offsets: list[int],
                       kernel: str | None = None) -> torch.Tensor:
    """Sum of ``||x_i - x_j||_2`` over unordered pairs of valid points of every (world, segment): [B, S] float64.

    The layout of :func:`component_sizes`; numba on the CPU, ``torch.cdist`` (exact form, in blocks) elsewhere.
    """
    kernel = kernel or ("numba" if values.device.type == "cpu" else "torch")
    if kernel == "numba":
        as_numpy = lambda t, dtype: np.ascontiguousarray(t.detach().cpu().to(dtype).numpy())  # noqa: E731
        sums = _distance_sums_numba(as_numpy(values, torch.float32), as_numpy(rows, torch.int64),
                                    as_numpy(valid, torch.bool), np.asarray(offsets, dtype=np.int64))
        return torch.from_numpy(sums).to(values.device)
    b, _, k = values.shape
    out = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):  # segments, each vectorised over the worlds
        x = values[torch.arange(b, device=values.device)[:, None], rows[:, lo:hi]].double()
        weight = valid[:, lo:hi].double()
        total = torch.zeros(b, dtype=torch.float64, device=values.device)
        n = hi - lo
        worlds = max(1, PAIR_BLOCK // max(1, n * n))
        block = n if worlds > 1 else max(1, PAIR_BLOCK // max(1, n))
        for w in range(0, b, worlds):
            part, part_weight = x[w : w + worlds], weight[w : w + worlds]
            for start in range(0, n, block):
                # Not the matrix-product form: it is inexact and leaves non-zero diagonals.
                d = torch.cdist(part[:, start : start + block], part, compute_mode="donot_use_mm_for_euclid_dist")
                total[w : w + worlds] += ((d * part_weight[:, None, :]).sum(2)
                                          * part_weight[:, start : start + block]).sum(1)
        out.append(total / 2)
    return torch.stack(out, 1) if out else torch.zeros(b, 0, dtype=torch.float64, device=values.device)


# Distances per block of the torch path (float64: 32 MB).
PAIR_BLOCK = 1 << 22

__all__ = ["component_sizes", "labels_torch", "pair_distance_sums", "sizes_numba", "sizes_torch"]
