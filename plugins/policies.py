"""Policies: what a group's agents express at a step.

An honest agent shows its own current values, and the dynamics read them
live. Every other policy computes what its agents show once per step, from
the state at the start of the step; the dynamics then see that vector while
the agent's own internal values still move under the influence it receives.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

import torch

from sim.contracts import Group, Interval, NoParams, PluginParams, State, Streams, World
from sim.config.distributions import DimResolver
from sim.core.ops import masked_mean, neighbour_min, neighbour_sums

UnitFloat = Annotated[float, Interval(ge=0, le=1)]
ValueVector = Union[UnitFloat, list[UnitFloat], dict[str, UnitFloat]]


class Honest:
    """Express one's own current values (what the classic opinion-dynamics models assume)."""

    Params: ClassVar = NoParams
    # The dynamics read an honest agent's current values directly, even mid-step.
    expresses_own_values: ClassVar[bool] = True
    keeps_unit_range: ClassVar[bool] = True  # its agents' values, which the engine holds in [0, 1]

    def __init__(self, params):
        self.params = params

    def express(self, state: State, world: World, group: Group, rng: Streams) -> torch.Tensor:
        return state.values[:, group.rows]


class Zealot:
    """Always express the same vector: the agent's initial values, or ``values`` when given.

    What the agent shows never moves. To keep its internal values fixed as
    well, set ``zealots: 1.0`` on the group.
    """

    class Params(PluginParams):
        values: ValueVector | None = None
        """The vector to show (one number, a list in dimension order, or a mapping); default: initial values."""

    expresses_own_values: ClassVar[bool] = False
    keeps_unit_range: ClassVar[bool] = True  # initial values, or a vector validated in [0, 1]

    def __init__(self, params):
        self.params = params

    def prepare(self, world: World, group: Group) -> None:
        if self.params.values is not None:
            DimResolver(world.space.dimensions)(self.params.values)  # raises ValueError on a bad vector

    def express(self, state, world, group, rng):
        if self.params.values is None:
            return world.initial[:, group.rows]
        shown = DimResolver(world.space.dimensions)(self.params.values).to(state.values)
        return shown.expand(world.b, group.size, world.k)


class Random:
    """Express noise: a fresh uniform vector in [0, 1]^K each step, or one's own values jittered."""

    class Params(PluginParams):
        mode: Literal["uniform", "jitter"] = "uniform"
        """``uniform``: anything in [0, 1]^K; ``jitter``: own values plus Gaussian noise."""
        sigma: Annotated[float, Interval(ge=0, le=1)] = 0.1
        """Standard deviation of the jitter."""

    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        shape = (world.b, group.size, world.k)
        own = state.values[:, group.rows]
        if self.params.mode == "uniform":
            return rng.uniform(f"random/{group.name}", shape).to(own.dtype)
        noise = rng.normal(f"random/{group.name}", shape).to(own.dtype)
        return (own + self.params.sigma * noise).clamp(0.0, 1.0)


class Contrarian:
    """Express the opposite of one's own values: x + strength * ((1 - x) - x); strength 1 shows 1 - x."""

    class Params(PluginParams):
        strength: UnitFloat = 1.0
        """How far toward the mirror image 1 - x the agent goes."""

    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        own = state.values[:, group.rows]
        return own + self.params.strength * (1.0 - 2.0 * own)


class StrategicInfluencer:
    """Pull targets toward a goal while staying just inside their confidence bound.

    Each step an influencer looks at its targets — its network neighbours, or
    every agent of a named group — and shows the point on the way from their
    mean values toward ``goal`` at ``margin`` times their confidence bound, so
    that bounded-confidence targets still listen; once the goal is that close
    it shows the goal itself. Distances as in the dynamics (``l2`` is the
    Euclidean distance divided by sqrt(K)).
    """

    class Params(PluginParams):
        goal: ValueVector
        """Where the influencer wants its targets' values to go."""
        targets: str = "neighbours"
        """``neighbours`` (each influencer's own) or the name of a population group."""
        margin: Annotated[float, Interval(gt=0, le=1)] = 0.9
        """Share of the targets' confidence bound used per step (below 1 keeps inside it)."""
        bound: Literal["mean", "min"] = "mean"
        """Which of the targets' bounds to respect: their mean, or the most closed-minded."""
        distance: Literal["l2", "linf"] = "l2"
        """The distance the targets' dynamics use."""

    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params

    def prepare(self, world: World, group: Group) -> None:
        DimResolver(world.space.dimensions)(self.params.goal)
        names = [g.name for g in world.groups]
        if self.params.targets != "neighbours" and self.params.targets not in names:
            raise ValueError(f"targets must be 'neighbours' or a group name ({', '.join(names)}), "
                             f"got {self.params.targets!r}")

    def express(self, state, world, group, rng):
        goal = DimResolver(world.space.dimensions)(self.params.goal).to(state.values)
        if self.params.targets == "neighbours":
            centre, bound, has_targets = _neighbour_view(state, world, group, self.params.bound)
        else:
            centre, bound, has_targets = _group_view(state, world, world.group(self.params.targets), self.params.bound)
        gap = goal - centre
        if self.params.distance == "l2":
            dist = gap.norm(dim=-1, keepdim=True) / world.k ** 0.5
        else:
            dist = gap.abs().amax(dim=-1, keepdim=True)
        reach = self.params.margin * bound.unsqueeze(-1)
        scale = torch.where(dist > reach, reach / dist.clamp_min(1e-12), torch.ones_like(dist))
        shown = (centre + scale * gap).clamp(0.0, 1.0)
        own = state.values[:, group.rows]
        return torch.where(has_targets.unsqueeze(-1), shown.expand_as(own), own)


def _neighbour_view(state: State, world: World, group: Group, bound: str):
    """Per influencer: mean values and mean/min confidence of its present neighbours, and whether it has any."""
    values, active = state.values, state.active
    sums, count = neighbour_sums(world.network, group.start, group.stop, values, active)
    eps = world.params.confidence.expand(world.b, world.n).to(values.dtype)
    if bound == "mean":
        limit = neighbour_sums(world.network, group.start, group.stop, eps[..., None], active)[0][..., 0]
        limit = limit / count.clamp_min(1)
    else:
        limit = neighbour_min(world.network, group.start, group.stop, eps, active, 1.0)
    return sums / count.clamp_min(1)[..., None], limit, count > 0


def _group_view(state: State, world: World, target: Group, bound: str):
    """The target group's present agents' mean values and mean/min confidence, the same for every influencer."""
    present = state.active[:, target.rows]
    centre = masked_mean(state.values[:, target.rows], present).unsqueeze(1)
    eps = world.params.confidence.expand(world.b, world.n)[:, target.rows].to(state.values.dtype)
    if bound == "mean":
        limit = masked_mean(eps, present)
    else:
        limit = torch.where(present, eps, torch.ones_like(eps)).amin(dim=1)
    has = present.any(dim=1, keepdim=True)
    return centre.nan_to_num(0.5), limit.nan_to_num(1.0).unsqueeze(1), has
