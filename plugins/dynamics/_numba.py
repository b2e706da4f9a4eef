"""Compiled CPU kernels (numba). The GPU path stays torch.

Arithmetic is kept identical to the torch kernels and to the reference loops:
distances in float64 from the float32 values, updates in float32 as
``x + mu * (other - x)`` (no fused multiply-add: fastmath stays off).
Metrics: 0 = l2 (Euclidean / sqrt(K)), 1 = linf, 2 = per dimension.

Pairwise models draw their own random numbers inline (``_inline_streams``:
the very numbers ``sim.core.rng.Streams`` draws). A world's step runs in
chunks: draw a chunk of (focal, partner) pairs into a small buffer, then
apply it in order, each half prefetching the rows it is about to read. At
N = 10^6 a step is random reads of rows of tens of MB; the two halves are
split because they stall differently: drawing reads the CSR (``rowptr``,
``col``) with no data-dependent branch, applying reads two value rows and
branches on the acceptance test. Measured on the project's 2-core machine,
one loop doing both ran at 3.5-6 M pairs/s, the split at 10-11 M, and the
split with prefetching at 24 M on one thread. With a second core and fewer
worlds than threads, a helper thread draws while the caller applies
(:func:`deffuant`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._inline_streams import _below, _uniform

CHUNK = 4096  # pairs drawn, then applied, at a time by one thread (two int64 buffers stay in L2)
AHEAD = 16  # pairs whose value rows are prefetched ahead of the one being applied
PIPELINE_CHUNK = 65536  # pairs handed between the drawing and the applying thread
PIPELINE_MIN_PAIRS = 200_000  # below this a world's step is too short to pay for the hand-offs
LIVE = 64  # neighbours a masked draw gathers in one pass; a longer row takes two
BLOCK = 512  # slots of a masked draw whose rows are read, then picked from, while they stay in cache


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to bring ``array[index]`` (1-d, C order) into cache; no effect on any result.

    The kernels' loads are random rows of arrays of tens of MB; a load issued
    16 pairs ahead overlaps the misses that an in-order loop would wait for
    one by one (2-2.5x on the draw and the apply at N = 10^6).
    """
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [args[1]], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8")
        # read, high temporal locality, data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


# ---------------------------------------------------------------- drawing pairs


@njit(cache=True, nogil=True, inline="always")
def _active_order(active, order):
    """Write the active agents' indices, ascending, to the front of ``order``; return how many there are."""
    m = 0
    for i in range(active.shape[0]):
        if active[i]:
            order[m] = i
            m += 1
    return m


@njit(cache=True, nogil=True)
def _draw_pairs(rowptr, col, key_focal, key_partner, lo, hi, masked, aligned, active, order, n_active, focal,
                partner):
    """Pairs of draw slots ``lo:hi`` of one world into ``focal[:hi-lo]``, ``partner[:hi-lo]``.

    Under a mask the focal agent is agent ``floor(u * N)`` if it is active and
    -1 (a spent slot) if not (``aligned``; ``n_active`` is N, ``order``
    unused), or the ``floor(u * m)``-th active agent (``order``; rebuilt);
    the partner is the ``floor(u' * d)``-th of its ``d`` active neighbours,
    ``u`` and ``u'`` the slot's draws of the two purposes. Without a mask
    (``masked`` False; ``active`` and ``order`` unused) that is agent
    ``floor(u * N)`` and neighbour ``col[rowptr[i] + floor(u' * degree)]``.
    A focal agent with no (active) neighbour gets partner -1.

    Three passes, each prefetching what the next reads: focal agents (their
    CSR rows), the picked edges (their ``col`` entries), the partners; under a
    mask the last two are :func:`_masked_partners`.
    """
    if not masked:
        for s in range(lo, hi):
            i = _below(key_focal, s, n_active)
            focal[s - lo] = i
            _prefetch(rowptr, i)
    elif aligned:
        for s in range(lo, hi):
            i = _below(key_focal, s, n_active)
            if active[i]:
                focal[s - lo] = i
                _prefetch(rowptr, i)
            else:
                focal[s - lo] = -1
    else:
        for s in range(lo, hi):
            i = order[_below(key_focal, s, n_active)]
            focal[s - lo] = i
            _prefetch(rowptr, i)
    if masked:
        _masked_partners(rowptr, col, key_partner, lo, hi, active, focal, partner)
        return
    for s in range(lo, hi):
        q = s - lo
        i = focal[q]
        start = rowptr[i]
        degree = rowptr[i + 1] - start
        if degree > 0:
            edge = start + _below(key_partner, s, degree)
            partner[q] = edge
            _prefetch(col, edge)
        else:
            partner[q] = -1
    for q in range(hi - lo):
        edge = partner[q]
        if edge >= 0:
            partner[q] = col[edge]


@njit(cache=True, nogil=True)
def _masked_partners(rowptr, col, key_partner, lo, hi, active, focal, partner):
    """Each focal agent's ``floor(u' * d)``-th active neighbour (CSR order), or -1 if it has none (or is -1).

    In blocks of ``BLOCK`` slots, two passes each, as the unmasked draw: the focal agents' rows
    (``rowptr``, read without a data-dependent loop, so that the misses overlap; each ``col`` row
    prefetched), then the picks, while the block's rows are still in cache. A pick is one pass over the
    row that writes every neighbour to ``live`` and advances by its active flag: branching on a flag that
    is true or false at random, once counting and once picking, cost more than the reads. A row longer
    than the buffer is counted, then scanned for the pick.
    """
    degrees = np.empty(BLOCK, np.int64)
    live = np.empty(LIVE, np.int64)
    for block in range(lo, hi, BLOCK):
        first = block - lo
        count = min(BLOCK, hi - block)
        for r in range(count):
            q = first + r
            i = focal[q]
            if i < 0:
                degrees[r] = 0
                continue
            start = rowptr[i]
            degree = rowptr[i + 1] - start
            partner[q] = start
            degrees[r] = degree
            if degree > 0:
                _prefetch(col, start)
                _prefetch(col, start + degree - 1)
        for r in range(count):
            q = first + r
            degree = degrees[r]
            start = partner[q]
            partner[q] = -1
            if degree == 0:
                continue
            s = lo + q
            if degree <= LIVE:
                d = 0
                for e in range(start, start + degree):
                    j = col[e]
                    live[d] = j  # written whatever the flag; the next neighbour overwrites an absent one
                    d += np.int64(active[j])
                if d > 0:
                    partner[q] = live[_below(key_partner, s, d)]
                continue
            d = 0
            for e in range(start, start + degree):
                d += np.int64(active[col[e]])
            if d == 0:
                continue
            pick = _below(key_partner, s, d)
            for e in range(start, start + degree):
                j = col[e]
                if active[j]:
                    if pick == 0:
                        partner[q] = j
                        break
                    pick -= 1


@njit(cache=True)
def draw_pairs(rowptrs, col, graph, keys_focal, keys_partner, count, used, active, masked, aligned=True):
    """``[B, count]`` focal and partner arrays as the kernels draw them (-1 and -1 in unused and spent slots).

    ``rowptrs`` [G, N + 1], ``col`` and ``graph`` [B]: the network as ``Network.rowptrs``, ``.cols`` and
    ``.world_graph(B)`` (world b draws on graph ``graph[b]``, its row pointers indexing the one ``col``);
    ``used`` [B]: slots each world uses; ``active`` [B, N] bool (read when
    ``masked``); ``aligned``: the absence rule (False: rebuilt). The same
    pairs as ``sim.core.pairing.sample_pairs``.
    """
    b_worlds, n = active.shape
    focal = np.full((b_worlds, count), -1, np.int64)
    partner = np.full((b_worlds, count), -1, np.int64)
    order = np.empty(n, np.int64)
    for b in range(b_worlds):
        m = _active_order(active[b], order) if masked and not aligned else n
        if m == 0 or used[b] == 0:
            continue
        _draw_pairs(rowptrs[graph[b]], col, np.uint64(keys_focal[b]), np.uint64(keys_partner[b]), 0, used[b], masked,
                    aligned, active[b], order, m, focal[b], partner[b])
    return focal, partner


# ---------------------------------------------------------------- applying pairs


@njit(cache=True, nogil=True, inline="always")
def _clip(v):
    return min(max(v, np.float32(0.0)), np.float32(1.0))


@njit(cache=True, nogil=True, inline="always")
def _param(values, uniform, i):
    # one shared value (``uniform``) is read from a cache line that stays hot, not from a random row
    return values[0] if uniform else values[i]


@njit(cache=True, nogil=True)
def _interact_per_dimension(x, shown, i, j, si, sj, eps_i, mu_i, eps_j, mu_j, repulse):
    """Each dimension its own opinion; ``si``/``sj``: i or j shows ``shown`` instead of its values."""
    for k in range(x.shape[1]):
        a = x[i, k]
        c = x[j, k]
        sa = shown[i, k] if si else a
        sc = shown[j, k] if sj else c
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


@njit(cache=True, nogil=True, inline="always")
def _distances(x, shown, i, j, si, sj, metric):
    """d(i's values, what j shows) and d(j's values, what i shows): squared sums (l2) or maxima (linf).

    When neither agent shows anything but its values the two are the same
    number ((c - a)^2 = (a - c)^2 exactly), computed once.
    """
    di = 0.0
    dj = 0.0
    if not (si or sj):
        for k in range(x.shape[1]):
            diff = np.float64(x[j, k]) - np.float64(x[i, k])
            di = di + diff * diff if metric == 0 else max(di, abs(diff))
        return di, di
    for k in range(x.shape[1]):
        a = np.float64(x[i, k])
        c = np.float64(x[j, k])
        sa = np.float64(shown[i, k]) if si else a
        sc = np.float64(shown[j, k]) if sj else c
        if metric == 0:
            di += (sc - a) * (sc - a)
            dj += (sa - c) * (sa - c)
        else:
            di = max(di, abs(sc - a))
            dj = max(dj, abs(sa - c))
    return di, dj


@njit(cache=True, nogil=True, inline="always")
def _threshold(eps, metric, k_dims):
    e = np.float64(eps)
    return e * e * k_dims if metric == 0 else e


@njit(cache=True, nogil=True, inline="always")
def _prefetch_pair(flat, eps, eps_uniform, i, j, k_dims):
    """The value rows (first and last entry: a row may straddle two cache lines) and bounds of a pair."""
    if j < 0:
        return
    _prefetch(flat, i * k_dims)
    _prefetch(flat, i * k_dims + k_dims - 1)
    _prefetch(flat, j * k_dims)
    _prefetch(flat, j * k_dims + k_dims - 1)
    if not eps_uniform:
        _prefetch(eps, i)
        _prefetch(eps, j)


@njit(cache=True, nogil=True)
def _apply_pairs(x, shown, fixed, any_fixed, focal, partner, count, eps, eps_uniform, mu, mu_uniform, metric,
                 repulse):
    """Apply ``count`` pairs in order to one world's values ``x`` [N, K], in place.

    Per pair: the two value rows first, the distance once, the confidence
    bounds for the acceptance test (a shared bound is a constant), and the
    rates only for an agent that moves.
    """
    k_dims = x.shape[1]
    r = repulse * repulse * k_dims if metric == 0 else repulse
    flat = x.reshape(-1)
    for q in range(count):
        if q + AHEAD < count:
            _prefetch_pair(flat, eps, eps_uniform, focal[q + AHEAD], partner[q + AHEAD], k_dims)
        j = partner[q]
        if j < 0:
            continue
        i = focal[q]
        si = any_fixed and fixed[i]
        sj = any_fixed and fixed[j]
        eps_i = _param(eps, eps_uniform, i)
        eps_j = _param(eps, eps_uniform, j)
        if metric == 2:
            _interact_per_dimension(x, shown, i, j, si, sj, eps_i, _param(mu, mu_uniform, i), eps_j,
                                    _param(mu, mu_uniform, j), repulse)
            continue
        di, dj = _distances(x, shown, i, j, si, sj, metric)
        move_i = 1 if di < _threshold(eps_i, metric, k_dims) else (-1 if di > r else 0)
        move_j = 1 if dj < _threshold(eps_j, metric, k_dims) else (-1 if dj > r else 0)
        if move_i == 0 and move_j == 0:
            continue
        mu_i = _param(mu, mu_uniform, i)
        mu_j = _param(mu, mu_uniform, j)
        for k in range(k_dims):
            a = x[i, k]
            c = x[j, k]
            sa = shown[i, k] if si else a
            sc = shown[j, k] if sj else c
            if move_i == 1:
                x[i, k] = a + mu_i * (sc - a)
            elif move_i == -1:
                x[i, k] = _clip(a - mu_i * (sc - a))
            if move_j == 1:
                x[j, k] = c + mu_j * (sa - c)
            elif move_j == -1:
                x[j, k] = _clip(c - mu_j * (sa - c))


@njit(cache=True, nogil=True)
def apply_pairs(x, shown, fixed, focal, partner, eps, mu, metric, repulse):
    """Apply given pairs ``[B, M]`` in order, world by world, in place (``eps``, ``mu`` [B or 1, N]).

    ``fixed`` [B or 1, N] bool marks agents that show ``shown`` instead of
    their values. For the tests that feed the kernels the reference loop's draws.
    """
    for b in range(x.shape[0]):
        fb = fixed[0] if fixed.shape[0] == 1 else fixed[b]
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _apply_pairs(x[b], shown[b], fb, fb.any(), focal[b], partner[b], focal.shape[1], eb, False, mb, False,
                     metric, repulse)


# ---------------------------------------------------------------- one Deffuant step


@njit(cache=True, nogil=True)
def _deffuant_world(x, shown, fixed, any_fixed, rowptr, col, key_focal, key_partner, used, masked, aligned, active,
                    eps, eps_uniform, mu, mu_uniform, metric, repulse):
    """One world's step on one thread: draw ``CHUNK`` pairs, apply them, repeat."""
    n = x.shape[0]
    rebuilt = masked and not aligned
    order = np.empty(n if rebuilt else 1, np.int64)
    m = _active_order(active, order) if rebuilt else n
    if m == 0:
        return
    focal = np.empty(CHUNK, np.int64)
    partner = np.empty(CHUNK, np.int64)
    for lo in range(0, used, CHUNK):
        hi = min(lo + CHUNK, used)
        _draw_pairs(rowptr, col, key_focal, key_partner, lo, hi, masked, aligned, active, order, m, focal, partner)
        _apply_pairs(x, shown, fixed, any_fixed, focal, partner, hi - lo, eps, eps_uniform, mu, mu_uniform,
                     metric, repulse)


@njit(cache=True, nogil=True)
def _deffuant_serial(values, x, shown, fixed, rowptrs, col, graph, keys_focal, keys_partner, used, masked, aligned,
                     active, eps, eps_uniform, mu, mu_uniform, metric, repulse):
    """Worlds one after another on the calling thread (no hand-off to a thread pool)."""
    for b in range(x.shape[0]):
        _copy(values[b], x[b])
        fb = fixed[0] if fixed.shape[0] == 1 else fixed[b]
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _deffuant_world(x[b], shown[b], fb, fb.any(), rowptrs[graph[b]], col, np.uint64(keys_focal[b]),
                        np.uint64(keys_partner[b]), used[b], masked, aligned, active[b], eb, eps_uniform[b], mb,
                        mu_uniform[b], metric, repulse)


@njit(cache=True, parallel=True)
def _deffuant_worlds(values, x, shown, fixed, rowptrs, col, graph, keys_focal, keys_partner, used, masked, aligned,
                     active, eps, eps_uniform, mu, mu_uniform, metric, repulse):
    """Worlds in parallel, each on one thread (which also copies its world's values in)."""
    for b in prange(x.shape[0]):
        _copy(values[b], x[b])
        fb = fixed[0] if fixed.shape[0] == 1 else fixed[b]
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _deffuant_world(x[b], shown[b], fb, fb.any(), rowptrs[graph[b]], col, np.uint64(keys_focal[b]),
                        np.uint64(keys_partner[b]), used[b], masked, aligned, active[b], eb, eps_uniform[b], mb,
                        mu_uniform[b], metric, repulse)


@njit(cache=True, nogil=True)
def _pipeline_draw(rowptr, col, key_focal, key_partner, lo, hi, masked, aligned, active, order, m, focal, partner):
    _draw_pairs(rowptr, col, np.uint64(key_focal), np.uint64(key_partner), lo, hi, masked, aligned, active, order, m,
                focal, partner)


@njit(cache=True, nogil=True)
def _pipeline_order(active, order):
    return _active_order(active, order)


@njit(cache=True, nogil=True)
def _copy(source, target):
    """``target[...] = source`` for C-contiguous arrays of one shape, as one flat loop."""
    flat_source = source.reshape(-1)
    flat_target = target.reshape(-1)
    for i in range(flat_source.shape[0]):
        flat_target[i] = flat_source[i]


_DRAWER: tuple[int, ThreadPoolExecutor] | None = None  # (the process that made it, the executor)
_DRAWER_LOCK = threading.Lock()
RING = 4  # chunk buffers between the two threads: the drawer may run this many chunks ahead


def _drawer() -> ThreadPoolExecutor:
    """The helper thread's executor; a forked child makes its own (its parent's thread did not come along)."""
    global _DRAWER
    with _DRAWER_LOCK:
        if _DRAWER is None or _DRAWER[0] != os.getpid():
            _DRAWER = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="valuesim-pairs"))
        return _DRAWER[1]


def _deffuant_pipelined(values, x, shown, fixed, rowptr, col, key_focal, key_partner, used, masked, aligned, active,
                        eps, eps_uniform, mu, mu_uniform, metric, repulse):
    """One world's step on two threads: a helper draws chunks into a ring of buffers, this thread applies them.

    The two threads first copy the values into ``x`` half each (a fresh
    40 MB array at N = 10^6, K = 10 costs 10,000 page faults: a third of
    the step on one thread), the helper after drawing its first chunk. Waits
    block (semaphores, events), so a busy second core slows the step down
    gracefully instead of spinning.
    """
    n = x.shape[0]
    rebuilt = masked and not aligned
    order = np.empty(n if rebuilt else 1, np.int64)
    m = _pipeline_order(active, order) if rebuilt else n
    if m == 0 or used == 0:
        _copy(values, x)
        return
    size = PIPELINE_CHUNK
    buffers = [(np.empty(size, np.int64), np.empty(size, np.int64)) for _ in range(RING)]
    chunks = range(0, used, size)
    free, ready = threading.Semaphore(RING), threading.Semaphore(0)
    copied, stop = threading.Event(), threading.Event()
    half = n // 2

    def draw_all():
        for c, lo in enumerate(chunks):
            while not free.acquire(timeout=0.1):
                if stop.is_set():
                    return
            focal, partner = buffers[c % RING]
            _pipeline_draw(rowptr, col, key_focal, key_partner, lo, min(lo + size, used), masked, aligned, active,
                           order, m, focal, partner)
            ready.release()
            if c == 0:
                _copy(values[half:], x[half:])
                copied.set()

    def wait(event_or_semaphore):
        while not (event_or_semaphore.wait(timeout=0.1) if isinstance(event_or_semaphore, threading.Event)
                   else event_or_semaphore.acquire(timeout=0.1)):
            if drawing.done():
                drawing.result()  # the helper raised: raise it here
                raise RuntimeError("the pair-drawing thread stopped early")

    drawing = _drawer().submit(draw_all)
    try:
        _copy(values[:half], x[:half])
        any_fixed = bool(fixed.any())
        wait(copied)
        for c, lo in enumerate(chunks):
            wait(ready)
            focal, partner = buffers[c % RING]
            _apply_pairs(x, shown, fixed, any_fixed, focal, partner, min(lo + size, used) - lo, eps, eps_uniform,
                         mu, mu_uniform, metric, repulse)
            free.release()
    finally:
        stop.set()
        drawing.result()


def deffuant(values, x, shown, fixed, rowptrs, col, graph, keys_focal, keys_partner, used, active, masked, eps, mu,
             metric, repulse, pipeline: bool | None = None, eps_uniform=None, mu_uniform=None, aligned: bool = True):
    """One Deffuant step of B worlds: ``x`` (any contents) becomes ``values`` [B, N, K] float32 after the step.

    ``rowptrs`` [G, N + 1], ``col``, ``graph`` [B]: the network (as :func:`draw_pairs`).
    ``shown`` [B, N, K]: what agents marked in ``fixed`` [B or 1, N] show
    instead of their values; ``keys_focal``, ``keys_partner`` [B] int64: the
    worlds' ``Streams.key`` of the two purposes; ``used`` [B]: pairs drawn
    per world; ``active`` [B, N] bool, read when ``masked``, under the
    absence rule ``aligned`` (False: rebuilt; ``sim.core.pairing``); ``eps``, ``mu``
    [B or 1, N] float32. With at least as many worlds as threads the worlds
    run in parallel, each on one thread; with fewer, a long step
    (``PIPELINE_MIN_PAIRS``) is pipelined on two threads and a short one
    runs on the calling thread, where a hand-off would cost more than it
    saves (``pipeline`` forces the choice). All give the sequential model's
    result bit for bit. ``eps_uniform``, ``mu_uniform``: :func:`constant_rows`
    of ``eps`` and ``mu``, if the caller knows them.
    """
    eps_uniform = _per_world(constant_rows(eps) if eps_uniform is None else eps_uniform, x.shape[0])
    mu_uniform = _per_world(constant_rows(mu) if mu_uniform is None else mu_uniform, x.shape[0])
    threads = numba.get_num_threads()
    if pipeline is None:
        pipeline = threads > 1 and x.shape[0] < threads and int(used.max(initial=0)) >= PIPELINE_MIN_PAIRS
    if not pipeline:
        drive = _deffuant_worlds if threads > 1 and x.shape[0] >= threads else _deffuant_serial
        drive(values, x, shown, fixed, rowptrs, col, graph, keys_focal, keys_partner, used, masked, aligned, active,
              eps, eps_uniform, mu, mu_uniform, metric, repulse)
        return
    for b in range(x.shape[0]):
        def row(a):
            return a[0] if a.shape[0] == 1 else a[b]

        _deffuant_pipelined(values[b], x[b], shown[b], row(fixed), rowptrs[graph[b]], col, int(keys_focal[b]),
                            int(keys_partner[b]), int(used[b]), masked, aligned, active[b], row(eps),
                            bool(eps_uniform[b]),
                            row(mu), bool(mu_uniform[b]), metric, repulse)


def _per_world(flags: np.ndarray, b: int) -> np.ndarray:
    return np.broadcast_to(flags, (b,)).copy()


@njit(cache=True)
def constant_rows(values):
    """``[rows]`` bool: the row holds one value (stops at a row's first difference)."""
    out = np.ones(values.shape[0], np.bool_)
    for r in range(values.shape[0]):
        first = values[r, 0]
        for i in range(values.shape[1]):
            if values[r, i] != first:
                out[r] = False
                break
    return out


# ---------------------------------------------------------------- algorithmic bias


@njit(cache=True, nogil=True)
def _bias_world(x, shown, fixed, any_fixed, masked, aligned, active, rowptr, col, key_focal, key_partner, used, eps,
                mu, metric, repulse, gamma, floor):
    """One world's draws in order: focal as in Deffuant, partner by ``u' * total`` over distance^-gamma weights."""
    k_dims = x.shape[1]
    n = x.shape[0]
    rebuilt = masked and not aligned
    order = np.empty(n if rebuilt else 1, np.int64)
    m = _active_order(active, order) if rebuilt else n
    if m == 0:
        return
    weights = np.empty(rowptr.shape[0], dtype=np.float64)
    one = np.empty(1, np.int64)
    other = np.empty(1, np.int64)
    for s in range(used):
        rank = _below(key_focal, s, m)
        i = order[rank] if rebuilt else rank
        if masked and not active[i]:
            continue  # aligned: an absent focal agent spends the slot
        start = rowptr[i]
        degree = rowptr[i + 1] - start
        total = 0.0
        last = -1
        for e in range(degree):
            j = col[start + e]
            w = 0.0
            if not masked or active[j]:
                last = e
                d = 0.0
                for k in range(k_dims):
                    diff = np.float64(shown[j, k] if any_fixed and fixed[j] else x[j, k]) - np.float64(x[i, k])
                    if metric == 0:
                        d += diff * diff
                    else:
                        d = max(d, abs(diff))
                if metric == 0:
                    d = np.sqrt(d / k_dims)
                w = max(d, floor) ** (-gamma)
            total += w
            weights[e] = total
        if last < 0 or total <= 0.0:
            continue
        target = _uniform(key_partner, s) * total
        pick = last  # u' * total rounded up to total: the last candidate
        for e in range(degree):
            if target < weights[e]:
                pick = e
                break
        one[0] = i
        other[0] = col[start + pick]
        _apply_pairs(x, shown, fixed, any_fixed, one, other, 1, eps, False, mu, False, metric, repulse)


@njit(cache=True, parallel=True)
def algorithmic_bias(x, shown, fixed, active, masked, rowptrs, col, graph, keys_focal, keys_partner, used, eps, mu,
                     metric, repulse, gamma, floor, aligned):
    """Deffuant with the partner drawn with probability proportional to distance^-gamma, in place on ``x``.

    The partner depends on the current values, so each world runs its draws
    in sequence (worlds in parallel). Arguments as :func:`deffuant` (``aligned`` required here).
    """
    for b in prange(x.shape[0]):
        fb = fixed[0] if fixed.shape[0] == 1 else fixed[b]
        eb = eps[0] if eps.shape[0] == 1 else eps[b]
        mb = mu[0] if mu.shape[0] == 1 else mu[b]
        _bias_world(x[b], shown[b], fb, fb.any(), masked, aligned, active[b], rowptrs[graph[b]], col,
                    np.uint64(keys_focal[b]), np.uint64(keys_partner[b]), used[b], eb, mb, metric, repulse, gamma,
                    floor)


@njit(cache=True, parallel=True)
def hk_means(x, shows, active, rowptrs, col, graph, eps, metric, out):
    """Hegselmann–Krause accepted means into ``out`` [B, N, K]; one agent per parallel iteration.

    ``rowptrs`` [G, N + 1], ``col``, ``graph`` [B]: the network (as :func:`draw_pairs`)."""
    b_worlds, n, k_dims = x.shape
    shared = rowptrs.shape[0] == 1
    rowptr = rowptrs[0]
    for flat in prange(b_worlds * n):
        b = flat // n
        i = flat % n
        e = np.float64(eps[0, i] if eps.shape[0] == 1 else eps[b, i])
        acc = np.zeros(k_dims, dtype=np.float64)
        cnt = np.ones(k_dims, dtype=np.float64)
        for k in range(k_dims):
            acc[k] = x[b, i, k]
        # one graph: the hoisted row, as fast as before per-world graphs (3% was lost indexing [G, N + 1] per agent)
        if shared:
            start, stop = rowptr[i], rowptr[i + 1]
        else:
            start, stop = rowptrs[graph[b], i], rowptrs[graph[b], i + 1]
        for p in range(start, stop):
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
