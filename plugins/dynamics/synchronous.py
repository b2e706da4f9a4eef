"""Hegselmann–Krause: every agent moves at once to the mean of what it can accept.

x_i(t+1) = x_i + r * (m_i - x_i), where m_i is the mean of the values shown by
the agents j in N(i) ∪ {i} with d(x_i, x_j) <= epsilon_i (the agent itself
always counts, with its own values). r = 1 is the classic model; ``rate:
agent`` uses each agent's convergence rate instead. With ``per_dimension``
each dimension is averaged over the neighbours within epsilon on that
dimension. Distances as in ``plugins.dynamics.pairwise``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

import torch

from sim.contracts import Interval, Network, PluginParams, State, Streams, World
from sim.core.ops import per_graph

from .pairwise import METRICS, _all


class HegselmannKrause:
    """Synchronous bounded confidence (Hegselmann & Krause 2002) on the network."""

    class Params(PluginParams):
        distance: Literal["l2", "linf", "per_dimension"] = "l2"
        """How far apart two value vectors are."""
        rate: Union[Annotated[float, Interval(gt=0, le=1)], Literal["agent"]] = 1.0
        """Share of the way to the accepted mean taken per step; ``agent``: each agent's own rate."""
        kernel: Literal["auto", "numba", "torch"] = "auto"
        """Which implementation computes the means; all give the same result."""

    uses: ClassVar[tuple[str, ...]] = ("confidence", "rate")
    keeps_unit_range: ClassVar[bool] = True  # convex moves / clipping, proven by tests/test_dynamics.py

    def __init__(self, params):
        self.params = params
        # the agents' own rates matter only with ``rate: agent``
        self.uses = ("confidence", "rate") if params.rate == "agent" else ("confidence",)

    def apply(self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
              rng: Streams) -> torch.Tensor:
        # honest agents show their values: no [B, N, K] pass when every agent is honest
        shows = values if _all(world.honest) else torch.where(world.honest[..., None], values, expressed)
        eps = world.params.confidence.to(torch.float32)
        metric = METRICS[self.params.distance]
        if self.params.kernel == "numba" or (self.params.kernel == "auto" and values.device.type == "cpu"):
            from . import _numba

            mean = torch.empty_like(values)
            net = world.network
            _numba.hk_means(values.contiguous().numpy(), shows.contiguous().numpy(), state.active.numpy(),
                            net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(world.b).numpy(),
                            eps.contiguous().numpy(), metric, mean.numpy())
        else:
            mean = hk_means_torch(values, shows, state.active, world.network, eps, metric)
        if self.params.rate == 1.0:
            new = mean
        else:
            rate = world.params.rate if self.params.rate == "agent" else torch.tensor(self.params.rate)
            rate = rate.to(values.dtype).to(values.device)
            new = values + rate.expand(world.b, world.n)[..., None] * (mean - values)
        return new if _all(state.active) else torch.where(state.active[..., None], new, values)


def hk_means_torch(values, shows, active, net: Network, eps, metric: int, chunk_edges: int = 1 << 22):
    """Accepted means by scatter-add over the edge list, in chunks of edges to bound memory.

    With per-world graphs, the worlds of each graph in turn: the same code as a run of those worlds alone.
    """
    if not net.shared:
        return per_graph(net, lambda graph, v, s, a, e: hk_means_torch(v, s, a, graph, e, metric, chunk_edges),
                         values, shows, active, eps)[0]
    b, n, k = values.shape
    rows, cols = net.rows(), net.col
    acc = values.double().clone()
    cnt = torch.ones_like(acc)
    eps64 = eps.double().expand(b, n)
    per_chunk = max(1, chunk_edges // max(1, b * k))
    for start in range(0, cols.numel(), per_chunk):
        r, c = rows[start:start + per_chunk], cols[start:start + per_chunk]
        other = shows[:, c].double()
        diff = other - values[:, r].double()
        limit = eps64[:, r]
        if metric == 2:
            ok = diff.abs() <= limit[..., None]
        elif metric == 0:
            ok = (diff.square().sum(-1) <= limit * limit * k)[..., None].expand_as(diff)
        else:
            ok = (diff.abs().amax(-1) <= limit)[..., None].expand_as(diff)
        ok = ok & active[:, c, None]
        acc.index_add_(1, r, torch.where(ok, other, 0.0))
        cnt.index_add_(1, r, ok.double())
    return (acc / cnt).to(values.dtype)
