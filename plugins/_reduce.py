"""Per-scope reductions shared by the metric plugins.

A *scope* is one group of the world (its contiguous rows) or the whole
population; scopes are always ordered as the groups, then ``"all"``. Only
active agents count: an inactive agent is weighted 0, and a scope without an
active agent in a world reads NaN there. Reductions run on the device of the
values, vectorised over the worlds, accumulate in float64 and stay on that
device (the run log moves readings to the CPU).

The ``"all"`` scope is pooled from the moments of the groups and of the rows
between them (Chan/Pébay pairwise update of central moments), so the data are
read once per row rather than once per scope.
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


def segments(world: World) -> list[slice] | None:
    """Slices that tile rows ``0..N`` in order: the groups and the rows between them; None if groups overlap."""
    out, stop = [], 0
    for group in sorted(world.groups, key=lambda g: g.start):
        if group.start < stop:
            return None
        if group.start > stop:
            out.append(slice(stop, group.start))
        out.append(group.rows)
        stop = group.stop
    if stop < world.n:
        out.append(slice(stop, world.n))
    return out


def per_scope(world: World, reduce) -> list:
    """``reduce(name, rows)`` for every scope; scopes with the same rows are computed once (first name)."""
    done: dict[tuple[int, int], object] = {}
    results = []
    for name, rows in zip(scope_names(world), scope_rows(world)):
        key = (rows.start, rows.stop)
        if key not in done:
            done[key] = reduce(name, rows)
        results.append(done[key])
    return results


def scope_counts(active: torch.Tensor, world: World) -> torch.Tensor:
    """Active agents of each scope: [B, S] int64."""
    return torch.stack([active[:, rows].sum(1) for rows in scope_rows(world)], 1)


def as_reading(value: torch.Tensor) -> torch.Tensor:
    """Readings are float64 on the values' device."""
    return value.to(torch.float64)


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
        """The p-th central moment with divisor n (population form), p >= 2; NaN for an empty scope."""
        return self.central[p - 2] / self.count


# Elements per block of rows: small enough that a float64 block stays in cache
# while its powers are taken, which is several times faster than whole tensors.
BLOCK_ELEMENTS = 1 << 18


def _blocks(x: torch.Tensor, mask: torch.Tensor):
    """(float64 rows [B, r, D], mask [B, r, 1]) in blocks along the agent axis."""
    rows = max(1, BLOCK_ELEMENTS // max(1, x.shape[0] * x.shape[2]))
    for start in range(0, x.shape[1], rows):
        yield x[:, start : start + rows].double(), mask[:, start : start + rows, None]


def _segment_moments(x: torch.Tensor, mask: torch.Tensor, order: int):
    """(count [B, 1], mean [B, D] (0 when empty), central sums) of ``x`` [B, n, D] over ``mask`` [B, n]."""
    b, _, d = x.shape
    options = {"dtype": torch.float64, "device": x.device}
    count = mask.sum(1, keepdim=True).double()
    total = torch.zeros(b, d, **options)
    for part, part_mask in _blocks(x, mask):
        total += part.where(part_mask, 0.0).sum(1)
    mean = total / count.clamp(min=1)
    sums = [torch.zeros(b, d, **options) for _ in range(order - 1)]
    if order < 2:
        return count, mean, sums
    for part, part_mask in _blocks(x, mask):
        centred = (part - mean[:, None]).where(part_mask, 0.0)
        power = centred
        for p in range(order - 1):
            power = power * centred
            sums[p] += power.sum(1)
    return count, mean, sums


def _pool(parts: list, order: int):
    """Combine segments' (count, mean, central sums) into the population's."""
    if len(parts) == 1:
        return parts[0]
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
    reduce = lambda rows: _segment_moments(x[:, rows], active[:, rows], order)  # noqa: E731
    tiling = segments(world)
    if tiling is None:  # overlapping groups: every scope on its own
        parts = per_scope(world, lambda name, rows: reduce(rows))
    else:
        done = {(s.start, s.stop): reduce(s) for s in tiling}
        parts = [done[(g.start, g.stop)] for g in world.groups] + [_pool(list(done.values()), order)]
    count = torch.stack([p[0] for p in parts], 1)
    mean = torch.stack([p[1] for p in parts], 1)
    mean = torch.where(count > 0, mean, torch.nan)
    central = tuple(torch.stack([p[2][i] for p in parts], 1) for i in range(order - 1))
    return Moments(count, mean, central)


def scope_means(x: torch.Tensor, active: torch.Tensor, world: World) -> torch.Tensor:
    """Mean of ``x`` [B, N, D] over the active agents of each scope: [B, S, D], float64, NaN where empty."""
    return scope_moments(x, active, world, order=1).mean
