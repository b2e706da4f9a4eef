"""Dynamics that act on each agent alone: Friedkin–Johnsen anchoring and noise."""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch

from sim.contracts import Interval, NoParams, PluginParams, State, Streams, World


class FriedkinJohnsen:
    """Anchoring to initial values: x_i <- lambda_i x_i(0) + (1 - lambda_i) x_i.

    List it after the social dynamics it anchors: the values they produced are
    pulled back toward each agent's own starting point by its ``anchoring``
    (lambda, per agent, set on the population group).
    """

    Params: ClassVar = NoParams
    uses: ClassVar[tuple[str, ...]] = ("anchoring",)
    keeps_unit_range: ClassVar[bool] = True  # convex moves / clipping, proven by tests/test_dynamics.py

    def __init__(self, params):
        self.params = params

    def apply(self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
              rng: Streams) -> torch.Tensor:
        lam = world.params.anchoring.to(values.dtype)[..., None]
        return lam * world.initial + (1 - lam) * values


class Noise:
    """Gaussian noise: each value dimension of each agent gets N(0, sigma^2), clipped to [0, 1]."""

    class Params(PluginParams):
        sigma: Annotated[float, Interval(ge=0, le=1)] = 0.01
        """Standard deviation of the noise added per step."""
        share: Annotated[float, Interval(gt=0, le=1)] = 1.0
        """Share of agents, drawn anew each step, that receive noise."""

    uses: ClassVar[tuple[str, ...]] = ()
    keeps_unit_range: ClassVar[bool] = True  # convex moves / clipping, proven by tests/test_dynamics.py

    def __init__(self, params):
        self.params = params

    def apply(self, values, expressed, state, world, rng):
        noise = rng.normal("noise/sigma", values.shape).to(values.dtype)
        if self.params.share < 1.0:
            hit = rng.uniform("noise/share", values.shape[:2]) < self.params.share
            noise = noise * hit[..., None]
        return (values + self.params.sigma * noise).clamp_(0.0, 1.0)
