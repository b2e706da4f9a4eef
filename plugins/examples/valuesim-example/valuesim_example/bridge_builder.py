"""The ``bridge_builder`` policy: agents who show a compromise with the people around them.

A policy (``sim.contracts.Policy``) says what its group's agents express at a
step, for every world at once: ``express(state, world, group, rng)``
returns ``[B, group.size, K]`` in [0, 1]. The dynamics then move everyone's
internal values given what was expressed; a bridge builder's own values keep
moving under the influence it receives, like anyone else's.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch

from sim.contracts import Group, Interval, PluginParams, State, Streams, World


class BridgeBuilder:
    """Express a point between one's own values and the mean values of one's network neighbours.

    Each agent i of the group shows ``x_i + weight * (m_i - x_i)``, where
    ``x_i`` are its current values and ``m_i`` the mean current values of its
    neighbours that are active in that world; ``weight = 0.5`` is the
    midpoint. An agent without an active neighbour shows its own values.
    Computed once per step, from the state at the start of the step.
    """

    class Params(PluginParams):
        """Validated from the scenario: ``policy: {bridge_builder: {weight: 0.7}}``."""

        weight: Annotated[float, Interval(ge=0, le=1)] = 0.5
        """Share of the way from one's own values toward the neighbours' mean that is expressed (0.5: midpoint)."""

    # What partners see is what express() returns, not the agent's own values.
    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params: Params):
        self.params = params

    def express(self, state: State, world: World, group: Group, rng: Streams) -> torch.Tensor:
        """``[B, group.size, K]``: each agent's values moved ``weight`` of the way to its neighbours' mean."""
        values = state.values
        mean, has_neighbours = neighbour_means(values, state.active, world, group)
        own = values[:, group.rows]
        shown = (own + self.params.weight * (mean - own)).clamp(0.0, 1.0)  # rounding must not leave [0, 1]
        return torch.where(has_neighbours[..., None], shown, own)


def neighbour_means(values: torch.Tensor, active: torch.Tensor, world: World, group: Group):
    """Mean values of each group member's active neighbours, ``[B, group.size, K]``, and ``[B, group.size]``
    saying whether it has any (where it has none, the mean is 0).

    Usually every world shares one graph. With ``network.independent: true`` each world has its own (its
    stream's): ``network.by_graph()`` gives each graph with the worlds that use it, and the one-graph
    computation runs once per graph on those worlds' rows. (Reading ``network.rowptr`` directly works for a
    shared graph only; with per-world graphs it raises rather than answer for the wrong world.)
    """
    net = world.network
    if net.shared:
        return _one_graph_means(values, active, net, group)
    mean = torch.empty((world.b, group.size, world.k), dtype=values.dtype, device=values.device)
    has_neighbours = torch.empty((world.b, group.size), dtype=torch.bool, device=values.device)
    for worlds, graph in net.by_graph():
        mean[worlds], has_neighbours[worlds] = _one_graph_means(values[worlds], active[worlds], graph, group)
    return mean, has_neighbours


def _one_graph_means(values: torch.Tensor, active: torch.Tensor, net, group: Group):
    """:func:`neighbour_means` on one graph (``net.rowptr``, ``net.col``) for every world of ``values``.

    The group's rows are contiguous, so in the CSR network its edges are the
    slice ``col[rowptr[start]:rowptr[stop]]``, row by row: one gather and one
    scatter-add over those edges, for all worlds at once. Sums accumulate in
    float64 (so that the result does not depend on the order of additions in
    practice, on a GPU too) and come back in the values' dtype.
    """
    b, k = values.shape[0], values.shape[2]
    first, last = int(net.rowptr[group.start]), int(net.rowptr[group.stop])
    neighbours = net.col[first:last]  # [E_g]: the group's edges, in row order
    degree = net.rowptr[group.start + 1:group.stop + 1] - net.rowptr[group.start:group.stop]
    owner = torch.repeat_interleave(torch.arange(group.size, device=neighbours.device), degree,
                                    output_size=last - first)  # the group member each edge belongs to
    present = active[:, neighbours].double()  # [B, E_g]: inactive neighbours count for nothing
    sums = torch.zeros((b, group.size, k), dtype=torch.float64, device=values.device)
    sums.index_add_(1, owner, values[:, neighbours].double() * present[..., None])
    counts = torch.zeros((b, group.size), dtype=torch.float64, device=values.device)
    counts.index_add_(1, owner, present)
    mean = sums / counts.clamp(min=1)[..., None]
    return mean.to(values.dtype), counts > 0
