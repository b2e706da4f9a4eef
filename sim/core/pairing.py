"""Pairwise interactions drawn as the sequential model draws them, then batched exactly.

The sequential Deffuant model (as in Deffuant et al. 2000 and NDlib) repeats:
pick a focal agent uniformly at random, pick one of its neighbours uniformly
at random, let the two interact. :func:`sample_pairs` draws M such pairs per
world, i.i.d., in one vectorised call.

Applying them in a batch must not change their meaning. :func:`rounds`
splits a pair sequence into rounds in which no agent appears twice, keeping
the order of pairs that share an agent: a pair goes into the first round
after every earlier pair that touches one of its agents. Applying round after
round is then the sequential loop, bit for bit.
"""

from __future__ import annotations

import torch

from .rng import Streams
from .state import Network


def sample_pairs(network: Network, count: int, rng: Streams, purpose: str,
                 active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``count`` (focal, partner) pairs per world: ``[B, M]`` int64 each.

    The focal agent is uniform over all agents and the partner uniform over
    the focal agent's neighbours. A pair that cannot happen (isolated focal
    agent, or an inactive agent on either side) has partner ``-1``: the draw
    is spent, as in the sequential model, but nothing moves.
    """
    focal = rng.integers(f"{purpose}/focal", network.n, (rng.b, count))
    # float64 so that floor(u * degree) is exact for any realistic degree
    u = rng.uniform(f"{purpose}/partner", (rng.b, count), torch.float64)
    return focal, partners(network, focal, u, active)


def partners(network: Network, focal: torch.Tensor, u: torch.Tensor,
             active: torch.Tensor | None = None) -> torch.Tensor:
    """The neighbour of each focal agent picked by ``u`` in [0, 1): ``col[rowptr[i] + floor(u * degree)]``."""
    if network.col.numel() == 0:
        return torch.full_like(focal, -1)
    start = network.rowptr[focal]
    degree = network.rowptr[focal + 1] - start
    offset = torch.minimum((u * degree).long(), (degree - 1).clamp_min(0))
    partner = network.col[(start + offset).clamp_max(network.col.numel() - 1)]
    possible = degree > 0
    if active is not None:
        possible &= torch.gather(active, 1, focal) & torch.gather(active, 1, partner)
    return torch.where(possible, partner, torch.full_like(partner, -1))


def rounds(focal: torch.Tensor, partner: torch.Tensor, n: int):
    """Yield ``(world, position)`` index tensors, one round at a time, for pairs ``[B, M]``.

    Within a round no agent of a world appears twice; a pair comes after every
    earlier pair of its world that shares an agent with it. Pairs with
    partner ``-1`` are dropped. Each round is found with a scatter-min of the
    remaining pair positions per agent: a pair is ready when it is the first
    remaining pair of both its agents.
    """
    b, m = focal.shape
    world = torch.arange(b, device=focal.device).unsqueeze(1).expand(b, m)
    position = torch.arange(m, device=focal.device).unsqueeze(0).expand(b, m)
    keep = partner >= 0
    world, position = world[keep], position[keep]
    a = world * n + focal[keep]
    c = world * n + partner[keep]
    while position.numel():
        first = torch.full((b * n,), m, dtype=torch.int64, device=focal.device)
        first.scatter_reduce_(0, a, position, reduce="amin")
        first.scatter_reduce_(0, c, position, reduce="amin")
        ready = (first[a] == position) & (first[c] == position)
        yield world[ready], position[ready]
        later = ~ready
        world, position, a, c = world[later], position[later], a[later], c[later]
