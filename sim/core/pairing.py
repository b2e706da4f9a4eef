"""Pairwise interactions drawn as the sequential model draws them, then batched exactly.

The sequential Deffuant model (as in Deffuant et al. 2000 and NDlib) repeats:
pick a focal agent uniformly at random, pick one of its neighbours uniformly
at random, let the two interact. :func:`sample_pairs` draws M such pairs per
world, i.i.d., in one vectorised call; the compiled CPU kernels
(``plugins/dynamics/_numba.py``) draw the very same pairs inline.

**Absent agents.** An agent with ``active[b, i]`` false is not in world b: it
is never a focal agent and never a partner (its neighbours choose among their
active neighbours), and the others interact at the rate they would have
without it. Two rules (``rule``) pick slot s's focal agent; the partner is
the ``floor(u'_s * d)``-th of the focal agent's ``d`` active neighbours (in
CSR order) under both.

- ``aligned`` (the default): the focal agent is ``floor(u_s * N)`` whatever
  the mask, and a slot whose focal agent is absent is spent (-1, -1), so
  every world uses all ``round(pairs_per_agent * N)`` slots. Twins on one
  stream that differ in one agent's presence draw the same pairs everywhere
  that agent cannot reach (common random numbers).
- ``rebuilt``: a world with ``m_b`` active agents uses the first
  ``round(pairs_per_agent * m_b)`` of its slots (:func:`pair_counts`), slot
  s's focal agent being the ``floor(u_s * m_b)``-th active agent. A world
  whose absent agents are the last rows of a complete graph therefore draws
  exactly the pairs of the scenario built without them.

Applying them in a batch must not change their meaning. :func:`rounds`
splits a pair sequence into rounds in which no agent appears twice, keeping
the order of pairs that share an agent: a pair goes into the first round
after every earlier pair that touches one of its agents. Applying round after
round is then the sequential loop, bit for bit.
"""

from __future__ import annotations

import torch

from .ops import per_graph
from .rng import Streams
from .state import Network

RULES = ("aligned", "rebuilt")


def pair_counts(pairs_per_agent: float, n: int, active: torch.Tensor | None = None,
                rule: str = "aligned") -> tuple[int, torch.Tensor | None]:
    """Draw slots per world (``max(1, round(pairs_per_agent * N))``) and, under a mask, the slots used ``[B]``.

    Under ``rebuilt`` a world with ``m`` active agents uses
    ``max(1, round(pairs_per_agent * m))`` slots (none when ``m = 0``): the
    count the scenario without its absent agents would draw. Under
    ``aligned`` every world uses every slot. ``None`` means every world uses
    every slot (no mask).
    """
    count = max(1, round(pairs_per_agent * n))
    if active is None:
        return count, None
    if rule == "aligned":
        return count, torch.full((active.shape[0],), count, dtype=torch.int64, device=active.device)
    if rule != "rebuilt":
        raise ValueError(f"pair_counts: rule must be one of {RULES}, got {rule!r}")
    m = active.sum(1)
    # torch.round, like Python's round, rounds half to even; the product is the same float64
    used = (pairs_per_agent * m.double()).round().clamp_min(1).long()
    return count, torch.where(m > 0, used, torch.zeros_like(used))


def focal_agents(n: int, count: int, rng: Streams, purpose: str, active: torch.Tensor | None = None,
                 used: torch.Tensor | None = None, rule: str = "aligned") -> torch.Tensor:
    """``[B, count]`` focal agents of the draw slots; -1 in unused and spent slots.

    ``u_s`` is draw s of ``purpose`` (through ``rng.integers``). Without a
    mask slot s's focal agent is ``floor(u_s * N)``. Under a mask, ``aligned``
    keeps that agent if it is active and spends the slot (-1) if not;
    ``rebuilt`` takes the ``floor(u_s * m_b)``-th active agent. Slots from
    ``used[b]`` on are -1.
    """
    if active is None:
        return rng.integers(purpose, n, (rng.b, count))
    if rule == "aligned":
        focal = rng.integers(purpose, n, (rng.b, count))
        present = active.gather(1, focal)
    elif rule == "rebuilt":
        m = active.sum(1, keepdim=True)
        rank = rng.integers(purpose, m.clamp_min(1), (rng.b, count))
        order = torch.argsort((~active).to(torch.uint8), dim=1, stable=True)  # active agents first, ascending
        focal = order.gather(1, rank)
        present = None
    else:
        raise ValueError(f"focal_agents: rule must be one of {RULES}, got {rule!r}")
    slot = torch.arange(count, device=focal.device)
    keep = slot[None, :] < used[:, None]
    keep = keep if present is None else keep & present
    return torch.where(keep, focal, torch.full_like(focal, -1))


def sample_pairs(network: Network, count: int, rng: Streams, purpose: str, active: torch.Tensor | None = None,
                 used: torch.Tensor | None = None, rule: str = "aligned") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``count`` (focal, partner) slots per world: ``[B, count]`` int64 each.

    Focal agents come from draws of ``{purpose}/focal`` (:func:`focal_agents`)
    and partners from float64 uniforms of ``{purpose}/partner``
    (:func:`partners`). ``active`` [B, N] and ``used`` [B] (from
    :func:`pair_counts`, for the same ``rule``) apply a mask; without one
    every agent takes part and every slot is used. A focal agent without an
    (active) neighbour has partner -1: the draw is spent, as in the
    sequential model, and nothing moves; an unused slot, or under
    ``aligned`` a slot whose focal agent is absent, is (-1, -1).
    """
    if active is not None and used is None:
        raise ValueError("sample_pairs: a mask needs the slots each world uses (pair_counts)")
    focal = focal_agents(network.n, count, rng, f"{purpose}/focal", active, used, rule)
    # float64 so that floor(u * degree) is exact for any realistic degree
    u = rng.uniform(f"{purpose}/partner", (rng.b, count), torch.float64)
    return focal, partners(network, focal, u, active)


def partners(network: Network, focal: torch.Tensor, u: torch.Tensor,
             active: torch.Tensor | None = None) -> torch.Tensor:
    """The neighbour of each focal agent picked by ``u`` in [0, 1): the ``floor(u * d)``-th of its d (active) ones.

    Without a mask that is ``col[rowptr[i] + floor(u * degree)]``. Under a
    mask the active neighbours are counted with a running sum over the edge
    list (``[B, E]``), and the pick is found by a sorted search in it.
    Focal -1 (an unused slot) and a focal agent without candidates give -1.
    With per-world graphs each world's partners are drawn on its own graph,
    by the same code as a run of that world alone.
    """
    if not network.shared:
        return per_graph(network, partners, *((focal, u) if active is None else (focal, u, active)))[0]
    if network.col.numel() == 0:
        return torch.full_like(focal, -1)
    edges = network.col.numel()
    agent = focal.clamp_min(0)
    start = network.rowptr[agent]
    end = network.rowptr[agent + 1]
    if active is None:
        degree = end - start
        offset = torch.minimum((u * degree).long(), (degree - 1).clamp_min(0))
        partner = network.col[(start + offset).clamp_max(edges - 1)]
    else:
        # live[b, e]: how many of col[:e] are active in world b
        live = torch.nn.functional.pad(active[:, network.col].long().cumsum(1), (1, 0))
        before = live.gather(1, start)
        degree = live.gather(1, end) - before
        rank = torch.minimum((u * degree).long(), (degree - 1).clamp_min(0))
        # the edge at which the running count first reaches before + rank + 1 is the rank-th active neighbour
        edge = torch.searchsorted(live[:, 1:].contiguous(), before + rank + 1)
        partner = network.col[edge.clamp_max(edges - 1)]
    possible = (focal >= 0) & (degree > 0)
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
