"""Tensor operations shared by plugins, written once: distances between value vectors, neighbour sums.

Distances follow the dynamics' conventions: ``l2`` is the Euclidean distance
divided by sqrt(K), so that it lies in [0, 1] like a confidence bound whatever
the number of dimensions, and ``linf`` is the largest difference on one
dimension. They are computed in float64 from the (float32) values, as the
kernels compute them.
"""

from __future__ import annotations

import torch

from .state import Network

DISTANCES = ("l2", "linf")


def distance(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Distance between value vectors along the last axis (broadcasting), float64."""
    diff = b.double() - a.double()
    if metric == "l2":
        return diff.square().sum(-1).sqrt() / diff.shape[-1] ** 0.5
    if metric == "linf":
        return diff.abs().amax(-1)
    raise ValueError(f"metric must be one of {', '.join(DISTANCES)}, got {metric!r}")


def neighbour_sums(network: Network, start: int, stop: int, x: torch.Tensor,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For agents ``start:stop``: the (weighted) sum of their neighbours' rows of ``x`` and the weight total.

    ``x`` is ``[B, N, F]``, ``weight`` ``[B, N]`` (for example the active mask
    as floats: absent neighbours count for nothing) or None (every neighbour
    counts 1). Returns ``sums [B, stop - start, F]`` and ``count [B, stop - start]``. With per-world graphs
    each world sums over its own graph's neighbours.
    """
    if not network.shared:
        tensors = (x,) if weight is None else (x, weight)
        return per_graph(network, lambda graph, *rows: neighbour_sums(graph, start, stop, *rows), *tensors)
    lo, hi = int(network.rowptr[start]), int(network.rowptr[stop])
    cols = network.col[lo:hi]
    degree = network.degree()[start:stop]
    owner = torch.repeat_interleave(torch.arange(stop - start, device=cols.device), degree)
    b = x.shape[0]
    gathered = x[:, cols]
    if weight is None:
        w = torch.ones((b, cols.numel()), dtype=x.dtype, device=x.device)
    else:
        w = weight.expand(b, -1)[:, cols].to(x.dtype)
    sums = torch.zeros((b, stop - start, x.shape[2]), dtype=x.dtype, device=x.device)
    sums.index_add_(1, owner, gathered * w[..., None])
    count = torch.zeros((b, stop - start), dtype=x.dtype, device=x.device)
    count.index_add_(1, owner, w)
    return sums, count


def neighbour_min(network: Network, start: int, stop: int, x: torch.Tensor, include: torch.Tensor,
                  empty: float) -> torch.Tensor:
    """For agents ``start:stop``: the smallest ``x[b, j]`` (``x`` [B, N]) over neighbours j with ``include[b, j]``.

    ``empty`` where an agent has no such neighbour. With per-world graphs, over each world's own graph.
    """
    if not network.shared:
        return per_graph(network, lambda graph, xs, inc: neighbour_min(graph, start, stop, xs, inc, empty),
                         x, include)[0]
    lo, hi = int(network.rowptr[start]), int(network.rowptr[stop])
    cols = network.col[lo:hi]
    degree = network.degree()[start:stop]
    owner = torch.repeat_interleave(torch.arange(stop - start, device=cols.device), degree)
    b = x.shape[0]
    vals = torch.where(include.expand(b, -1)[:, cols], x.expand(b, -1)[:, cols], torch.full((), empty, dtype=x.dtype))
    out = torch.full((b, stop - start), empty, dtype=x.dtype, device=x.device)
    return out.scatter_reduce(1, owner.expand(b, -1), vals, reduce="amin")


def per_graph(network: Network, compute, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run one-graph code on per-world graphs: ``compute(graph, *rows)`` once per graph, on the rows of the
    worlds that use it (a tensor with a leading 1 is passed whole: it broadcasts), the results (``[B_g or 1,
    ...]`` tensors, or a tuple of them) put back in world order as ``[B, ...]``. World b's result is the one
    ``compute`` gives for it alone."""
    b = network.graph.numel()
    outs: list[torch.Tensor] | None = None
    for worlds, graph in network.by_graph():
        part = compute(graph, *(t if t.shape[0] == 1 else t[worlds] for t in tensors))
        part = part if isinstance(part, tuple) else (part,)
        if outs is None:
            outs = [torch.empty((b, *p.shape[1:]), dtype=p.dtype, device=p.device) for p in part]
        for out, p in zip(outs, part):
            out[worlds] = p.expand(worlds.numel(), *p.shape[1:])
    return tuple(outs)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only entries where ``mask`` (same leading shape) is True; NaN if none."""
    if mask is None:
        return x.mean(dim)
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    total = (x * m).sum(dim)
    count = m.sum(dim)
    return total / count.where(count > 0, torch.full((), float("nan"), dtype=x.dtype))


def unit_range_problem(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a set of values in [0, 1] (NaN, infinities, or values outside), or None if it is.

    One reduction pass: the engine calls it on every plugin's output at every step, and ``sim.checks`` words
    its failures with it.
    """
    if tensor.numel() == 0:
        return None
    low, high = torch.aminmax(tensor)
    low, high = float(low), float(high)
    if low != low or high != high or abs(low) == float("inf") or abs(high) == float("inf"):
        return "NaN or infinite values"
    if low < 0 or high > 1:
        return f"values outside [0, 1] (from {low:g} to {high:g}); keep them in range, e.g. with .clamp(0, 1)"
    return None
