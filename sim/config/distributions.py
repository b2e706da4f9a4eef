"""Distributions for initial values and per-agent parameters, drawn from the run's random streams.

A scenario gives a per-agent parameter as a number (constant) or as a mapping
with a ``dist`` key::

    confidence: 0.2
    confidence: {dist: uniform, low: 0.15, high: 0.3}
    rate: {dist: beta, a: 2, b: 5, low: 0, high: 0.5}

Initial values use the same distributions, and their parameters may be given
per value dimension (a list in dimension order, or a mapping by name).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.special import betaincinv

from ..core.rng import Streams

Number = Union[float, list[float], dict[str, float]]


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def sample(self, shape: tuple[int, ...], rng: Streams, purpose: str, k: "DimResolver") -> torch.Tensor:
        raise NotImplementedError

    def support(self) -> tuple[float, float]:
        """Smallest interval holding every sample (used to check parameter ranges)."""
        raise NotImplementedError


class DimResolver:
    """Turns a scalar / list / mapping parameter into a tensor broadcastable over the last axis."""

    def __init__(self, dimensions: tuple[str, ...] | None):
        self.dimensions = dimensions

    def __call__(self, value: Number) -> torch.Tensor:
        if isinstance(value, (int, float)):
            return torch.tensor(float(value), dtype=torch.float64)
        if self.dimensions is None:
            raise ValueError("a per-dimension list or mapping is only allowed for initial values")
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(self.dimensions))
            if unknown:
                raise ValueError(f"unknown value dimension {unknown[0]!r} (dimensions: {', '.join(self.dimensions)})")
            missing = [d for d in self.dimensions if d not in value]
            if missing:
                raise ValueError(f"no value for dimension {missing[0]!r}")
            value = [value[d] for d in self.dimensions]
        if len(value) != len(self.dimensions):
            raise ValueError(f"needs {len(self.dimensions)} numbers (one per dimension), got {len(value)}")
        return torch.tensor([float(v) for v in value], dtype=torch.float64)


def _extreme(value: Number, pick) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    items = value.values() if isinstance(value, dict) else value
    return float(pick(items))


class Constant(_Dist):
    """Every agent gets ``value``."""

    dist: Literal["constant"] = "constant"
    value: Number

    def sample(self, shape, rng, purpose, k):
        return k(self.value).expand(shape).clone()

    def support(self):
        return _extreme(self.value, min), _extreme(self.value, max)


class Uniform(_Dist):
    """Uniform on [``low``, ``high``)."""

    dist: Literal["uniform"]
    low: Number = 0.0
    high: Number = 1.0

    @model_validator(mode="after")
    def _ordered(self):
        # per-dimension bounds are checked where they are resolved against the dimensions
        if isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and self.low > self.high:
            raise ValueError(f"low must not exceed high, got low={self.low}, high={self.high}")
        return self

    def sample(self, shape, rng, purpose, k):
        u = rng.uniform(purpose, shape, torch.float64)
        return k(self.low) + u * (k(self.high) - k(self.low))

    def support(self):
        return _extreme(self.low, min), _extreme(self.high, max)


class Normal(_Dist):
    """Normal(``mean``, ``std``), clipped into the allowed range of the quantity."""

    dist: Literal["normal"]
    mean: Number
    std: Annotated[float, Field(ge=0)]

    def sample(self, shape, rng, purpose, k):
        return k(self.mean) + self.std * rng.normal(purpose, shape, torch.float64)

    def support(self):
        return float("-inf"), float("inf")


class Beta(_Dist):
    """Beta(``a``, ``b``) rescaled onto [``low``, ``high``] (default [0, 1])."""

    dist: Literal["beta"]
    a: Annotated[float, Field(gt=0)]
    b: Annotated[float, Field(gt=0)]
    low: float = 0.0
    high: float = 1.0

    def sample(self, shape, rng, purpose, k):
        # inverse CDF of a counter-based uniform: world b's draws do not depend on the other worlds
        u = rng.uniform(purpose, shape, torch.float64).cpu().numpy()
        draws = torch.from_numpy(betaincinv(self.a, self.b, u))
        return self.low + (self.high - self.low) * draws

    def support(self):
        return self.low, self.high


Distribution = Annotated[Union[Constant, Uniform, Normal, Beta], Field(discriminator="dist")]
DIST_NAMES = ("constant", "uniform", "normal", "beta")
