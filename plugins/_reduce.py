"""Per-scope reductions shared by the metric plugins.

A *scope* is one group of the world (its contiguous rows) or the whole
population; scopes are always ordered as the groups, then ``"all"``. Only
active agents count: an inactive agent is weighted 0. Reductions run on the
device of the values and accumulate in float64; the metrics move their
results to the CPU at the end.

The ``"all"`` scope is pooled from the groups' moments (Chan/Pébay pairwise
update of central moments) when the groups tile the agent axis, so the data
are read once per group rather than twice; otherwise it is reduced directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import torch

from sim.contracts import World

ALL = "all"


def scope_names(world: World) -> tuple[str, ...]:
    """Group names in scenario order, then ``"all"``."""
    return tuple(g.name for g in world.groups) + (ALL,)


def scope_rows(world: World) -> list[slice]:
    """The agent rows of each scope, aligned with :func:`scope_names`."""
    return [g.rows for g in world.groups] + [slice(0, world.n)]


def tiles(world: World) -> bool:
    """True when the groups cover rows ``0..N`` in order, without gaps or overlaps."""
    stop = 0
    for group in world.groups:
        if group.start != stop:
            return False
        stop = group.stop
    return stop == world.n


def active_mask(active: torch.Tensor) -> torch.Tensor | None:
    """``active`` as given, or ``None`` when every agent is active (the cheap path)."""
    return None if bool(active.all()) else active


def per_scope(world: World, reduce) -> list:
    """``reduce(rows)`` for every scope; scopes with the same rows are computed once."""
    done: dict[tuple[int, int], object] = {}
    results = []
    for rows in scope_rows(world):
        key = (rows.start, rows.stop)
        if key not in done:
            done[key] = reduce(rows)
        results.append(done[key])
    return results


@dataclass(frozen=True)
class Moments:
    """Per-scope moments, float64 on the values' device.

    ``count`` [B, S, 1] active agents; ``mean`` [B, S, D] (NaN for an empty
    scope); ``central[p - 2]`` [B, S, D] the sum over active agents of
    ``(x - mean) ** p`` for p = 2 .. order.
    """

    count: torch.Tensor
    mean: torch.Tensor
    central: tuple[torch.Tensor, ...]

    def moment(self, p: int) -> torch.Tensor:
        """The p-th central moment with divisor n (population form), p >= 2."""
        return self.central[p - 2] / self.count


# Elements per block of rows: small enough that a float64 block stays in cache
# while its powers are taken, which is several times faster than whole tensors.
BLOCK_ELEMENTS = 1 << 18


def _blocks(x: torch.Tensor, mask: torch.Tensor | None):
    """(float64 rows [B, r, D], mask [B, r, 1] or None) in blocks along the agent axis."""
    rows = max(1, BLOCK_ELEMENTS // max(1, x.shape[0] * x.shape[2]))
    for start in range(0, x.shape[1], rows):
        part_mask = None if mask is None else mask[:, start : start + rows, None]
        yield x[:, start : start + rows].double(), part_mask


def _group_moments(x: torch.Tensor, mask: torch.Tensor | None, order: int):
    """(count [B, 1], mean [B, D] (0 when empty), central sums) of ``x`` [B, n, D]."""
    b, n, d = x.shape
    options = {"dtype": torch.float64, "device": x.device}
    if mask is None:
        count = torch.full((b, 1), float(n), **options)
    else:
        count = mask.sum(1, keepdim=True).double()
    total = torch.zeros(b, d, **options)
    for part, part_mask in _blocks(x, mask):
        total += (part if part_mask is None else part.where(part_mask, 0.0)).sum(1)
    mean = total / count.clamp(min=1)
    sums = [torch.zeros(b, d, **options) for _ in range(order - 1)]
    if order < 2:
        return count, mean, sums
    for part, part_mask in _blocks(x, mask):
        centred = part - mean[:, None]
        if part_mask is not None:
            centred = centred.where(part_mask, 0.0)
        power = centred
        for p in range(order - 1):
            power = power * centred
            sums[p] += power.sum(1)
    return count, mean, sums


def _pool(parts: list, order: int):
    """Combine groups' (count, mean, central sums) into the population's."""
    counts = torch.stack([p[0] for p in parts], 1)  # [B, G, 1]
    means = torch.stack([p[1] for p in parts], 1)  # [B, G, D]
    count = counts.sum(1)
    mean = (counts * means).sum(1) / count.clamp(min=1)
    delta = means - mean[:, None]
    sums = []
    for p in range(2, order + 1):
        # sum_g sum_q C(p, q) M_q,g delta_g^(p-q), with M_0 = n_g and M_1 = 0.
        total = counts * delta**p
        for q in range(2, p + 1):
            group_sums = torch.stack([part[2][q - 2] for part in parts], 1)
            total = total + comb(p, q) * group_sums * delta ** (p - q)
        sums.append(total.sum(1))
    return count, mean, sums


def scope_moments(x: torch.Tensor, active: torch.Tensor, world: World, order: int = 2) -> Moments:
    """Moments up to ``order`` of ``x`` [B, N, D] over the active agents of each scope."""
    mask = active_mask(active)

    def reduce(rows: slice):
        return _group_moments(x[:, rows], None if mask is None else mask[:, rows], order)

    if tiles(world) and world.groups:
        groups = [reduce(g.rows) for g in world.groups]
        parts = groups + [_pool(groups, order) if len(groups) > 1 else groups[0]]
    else:
        parts = per_scope(world, reduce)
    count = torch.stack([p[0] for p in parts], 1)
    mean = torch.stack([p[1] for p in parts], 1)
    mean = torch.where(count > 0, mean, torch.nan)
    central = tuple(torch.stack([p[2][i] for p in parts], 1) for i in range(order - 1))
    return Moments(count, mean, central)


def scope_means(x: torch.Tensor, active: torch.Tensor, world: World) -> torch.Tensor:
    """Mean of ``x`` [B, N, D] over the active agents of each scope: [B, S, D], float64."""
    return scope_moments(x, active, world, order=1).mean


def to_reading_tensor(value: torch.Tensor) -> torch.Tensor:
    """Results leave the metrics as CPU float64."""
    return value.to(device="cpu", dtype=torch.float64)
