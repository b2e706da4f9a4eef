"""Populations: groups of agents laid out as contiguous rows, with initial values and parameters.

Initial values and per-agent parameters are drawn per world from the
worlds' random streams at step -1 (purpose ``population/<group>/<what>``), so
world b's population is that of the single-world run of its stream. A parameter that is constant everywhere
stays ``[1, N]`` and broadcasts over worlds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .budget import size
from .distributions import Constant, DimResolver
from ..errors import ScenarioError
from .persona import read_agent
from .scenario import Scenario
from .schema import FileInit, GroupSpec, ProfileInit
from ..core.rng import Streams
from ..core.state import AGENT_PARAMETERS, AgentParams, Group

VALUE_FILE_BYTES = 32
"""The most bytes a value of an initial-values file may take (a CSV number with its separator needs about 8)."""
# What normal draws are clipped into: each parameter's range, an open end moved inside by 1e-6.
PARAM_RANGES = {name: (r.low + 1e-6 if r.gt is not None else r.low, r.high) for name, r in AGENT_PARAMETERS.items()}


def layout(scenario: Scenario) -> tuple[Group, ...]:
    """Groups as contiguous row ranges, in scenario order."""
    groups, start = [], 0
    for spec in scenario.spec.population:
        groups.append(Group(spec.name, spec.kind, start, start + spec.count))
        start += spec.count
    return tuple(groups)


def initial_values(scenario: Scenario, rng: Streams) -> torch.Tensor:
    """``[B, N, K]`` float32 initial values in [0, 1]."""
    distinct, inverse = _distinct_streams(rng)
    if inverse is not None:  # worlds on one stream draw alike: draw once per stream, then copy
        return initial_values(scenario, distinct)[inverse]
    dims = tuple(scenario.spec.values.dimensions)
    parts = []
    for i, spec in enumerate(scenario.spec.population):
        where = f"population[{i}].init"
        parts.append(_group_values(scenario, spec, dims, rng, where))
    return torch.cat(parts, dim=1).clamp_(0.0, 1.0).to(torch.float32)


def _group_values(scenario, spec: GroupSpec, dims, rng: Streams, where) -> torch.Tensor:
    shape = (rng.b, spec.count, len(dims))
    purpose = f"population/{spec.name}/init"
    init = spec.init
    if isinstance(init, FileInit):
        table = read_values_file(scenario, init.file, spec.count, dims, f"{where}.file")
        return torch.from_numpy(table).to(torch.float64).expand(shape).clone()
    if isinstance(init, ProfileInit):
        profile = read_profile(scenario, init.profile, dims, f"{where}.profile")
        noise = rng.normal(purpose, shape, torch.float64).cpu()
        return profile + init.spread * noise
    try:
        return init.sample(shape, rng, purpose, DimResolver(dims)).cpu()
    except ValueError as exc:
        raise scenario.error(where, str(exc)) from None


def agent_params(scenario: Scenario, rng: Streams) -> AgentParams:
    """Per-agent parameters, each ``[B or 1, N]``."""
    distinct, inverse = _distinct_streams(rng)
    if inverse is not None:
        drawn = agent_params(scenario, distinct)
        return AgentParams(**{name: value if value.shape[0] == 1 else value[inverse]
                              for name, value in vars(drawn).items()})
    specs = scenario.spec.population
    out = {}
    for name, (low, high) in PARAM_RANGES.items():
        dists = [getattr(s, name) for s in specs]
        varies = any(not isinstance(d, Constant) for d in dists)
        draw = rng if varies else rng.select(slice(0, 1))  # a constant parameter stays [1, N]
        parts = [d.sample((draw.b, s.count), draw, f"population/{s.name}/{name}", DimResolver(None)).cpu()
                 for d, s in zip(dists, specs)]
        # normal draws are clipped into range by design; the clamp also keeps a beta draw that
        # rounded onto an open end (a rate of exactly 0) inside it
        value = torch.cat(parts, dim=1).clamp(low, high)
        out[name] = value.to(torch.float32)
    out["zealot"] = _zealots(specs, rng)
    return AgentParams(**out)


def _distinct_streams(rng: Streams) -> tuple[Streams, torch.Tensor | None]:
    """The streams of ``rng`` without repeats and, where some repeat, each world's index among them.

    A Shapley batch holds thousands of coalitions on a handful of streams; their populations are equal, so
    drawing once per (stream, step) and copying is the same bits at a fraction of the cost.
    """
    pairs = torch.stack([rng.stream, rng.step], dim=1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    if unique.shape[0] == rng.b:
        return rng, None
    return Streams(rng.seed, unique[:, 0], unique[:, 1]), inverse.cpu()  # it indexes the CPU draws


def _zealots(specs: list[GroupSpec], rng: Streams) -> torch.Tensor:
    """Exactly round(share x count) zealots per group, a fresh random choice in each world."""
    if not any(s.zealots > 0 for s in specs):
        return torch.zeros((1, sum(s.count for s in specs)), dtype=torch.bool)
    parts = []
    for s in specs:
        chosen = torch.zeros((rng.b, s.count), dtype=torch.bool)
        howmany = round(s.zealots * s.count)
        if howmany:
            order = rng.uniform(f"population/{s.name}/zealots", (rng.b, s.count)).cpu().argsort(dim=1)
            chosen.scatter_(1, order[:, :howmany], True)
        parts.append(chosen)
    return torch.cat(parts, dim=1)


def read_values_file(scenario: Scenario, name: str, count: int, dims: tuple[str, ...], where: str) -> np.ndarray:
    """A ``count x K`` table of initial values from csv / parquet / npy (columns named by dimension, or in order)."""
    path = (scenario.base_dir / name)
    if not path.is_file():
        raise scenario.error(where, f"file not found: {name} (resolved to {path})")
    limit = count * len(dims) * VALUE_FILE_BYTES + 2**20
    if path.stat().st_size > limit:  # checked before reading: a file this large is not the group's table
        raise scenario.error(where, f"{name} is {size(path.stat().st_size)}, too large for a table of {count:,} "
                                    f"rows x {len(dims)} values (at most {size(limit)})")
    try:
        if path.suffix == ".npy":
            table = np.load(path, allow_pickle=False)
        else:
            import pandas as pd

            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            cols = [d for d in dims if d in frame.columns]
            table = frame[cols].to_numpy() if len(cols) == len(dims) else frame.to_numpy()
    except Exception as exc:  # unreadable data file: say which and why
        raise scenario.error(where, f"cannot read {name}: {exc}") from None
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 1 and len(dims) == 1:
        table = table[:, None]
    if table.shape != (count, len(dims)):
        raise scenario.error(where, f"{name} holds a {'x'.join(map(str, table.shape))} table; "
                                    f"the group needs {count} rows x {len(dims)} value columns")
    if not np.isfinite(table).all() or table.min() < 0 or table.max() > 1:
        raise scenario.error(where, f"{name}: values must be numbers in [0, 1]")
    return table


def read_profile(scenario: Scenario, name: str, dims: tuple[str, ...], where: str) -> torch.Tensor:
    """The value profile of ``agents/<name>.yaml`` in the scenario's value space, ``[K]``."""
    try:
        data, path = read_agent(name, scenario.base_dir)
    except ValueError as exc:
        raise scenario.error(where, str(exc)) from None
    spaces = data.get("values", {})
    space = scenario.spec.values.name
    profile = spaces.get(space) if isinstance(spaces, dict) else None
    if not isinstance(profile, dict):
        have = ", ".join(spaces) if isinstance(spaces, dict) else "none"
        raise scenario.error(where, f"agents/{name}.yaml has no profile in value space {space!r} (it has: {have})")
    try:
        return DimResolver(dims)(profile)
    except ValueError as exc:
        raise ScenarioError(f"agents/{name}.yaml values.{space}: {exc}", location=str(path)) from None
