"""Exogenous moral drift: human values that move by themselves, along a trend or a replayed trajectory.

A trajectory is a table of value vectors over time: a CSV file whose header
is ``time`` and then every dimension of the value space (in any order), or
the same rows written inline in the scenario (``points: [[time, v1, ..., vK],
...]``, dimensions in the value space's order). Times are world steps and
strictly increase; the trajectory is linear between its rows and constant
before the first and after the last. :func:`read_trajectory` is shared with
the coevolution metrics (``plugins.coevolution``), which score against a
reference trajectory.

A relative file path is taken from the scenario file's folder
(``world.context["base_dir"]``, set by ``sim.build``), else from the current
directory. Files are refused above :data:`MAX_BYTES` or :data:`MAX_ROWS`
rows, and every error names the file and the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Union

import torch
from pydantic import model_validator

from sim.config.distributions import DimResolver
from sim.contracts import Interval, PluginParams, State, Streams, World

MAX_BYTES = 8 << 20
MAX_ROWS = 100_000
TIME_COLUMNS = ("time", "step")

Trend = Union[float, list[float], dict[str, float]]


@dataclass(frozen=True)
class Trajectory:
    """Value vectors over time: ``times`` [R] float64 (strictly increasing), ``values`` [R, K] float64."""

    times: torch.Tensor
    values: torch.Tensor

    def at(self, t: torch.Tensor) -> torch.Tensor:
        """The trajectory at times ``t`` [B] (linear between rows, constant outside): [B, K] float64."""
        times = self.times.to(t.device)
        values = self.values.to(t.device)
        t = t.to(torch.float64).clamp(float(times[0]), float(times[-1]))
        upper = torch.searchsorted(times, t, right=False).clamp(1, max(1, times.numel() - 1))
        if times.numel() == 1:
            return values[0].expand(t.shape[0], -1).clone()
        lower = upper - 1
        span = times[upper] - times[lower]
        weight = ((t - times[lower]) / span)[:, None]
        return values[lower] + weight * (values[upper] - values[lower])


def resolve_path(name: str, world: World) -> Path:
    """A trajectory file's path: relative ones from the scenario's folder (or the current directory)."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    return Path(world.context.get("base_dir", ".")) / path


def read_trajectory(path: Path, dimensions: tuple[str, ...], unit: bool = True) -> Trajectory:
    """Read a CSV trajectory (``time`` then one column per dimension); errors name the file and line.

    ``unit``: every value must lie in [0, 1].
    """
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ValueError(f"{path}: cannot read the trajectory ({error.strerror or error})") from None
    if size > MAX_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_BYTES} a trajectory may have")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    rows = [(number, line) for number, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not rows:
        raise ValueError(f"{path}: empty; write a header (time, then one column per dimension) and rows")
    if len(rows) - 1 > MAX_ROWS:
        raise ValueError(f"{path}: {len(rows) - 1} rows, more than the {MAX_ROWS} a trajectory may have")
    header_line, header = rows[0]
    order = _columns(path, header_line, header, dimensions)
    points = []
    for number, line in rows[1:]:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(order) + 1:
            raise ValueError(f"{path}:{number}: expected {len(order) + 1} columns (time and {len(order)} "
                             f"dimensions), got {len(cells)}")
        try:
            numbers = [float(c) for c in cells]
        except ValueError:
            raise ValueError(f"{path}:{number}: not a number in {line.strip()!r}") from None
        points.append([numbers[0]] + [numbers[1 + order.index(k)] for k in range(len(order))])
    return _trajectory(points, len(dimensions), unit, lambda i: f"{path}:{rows[1 + i][0]}")


def _columns(path: Path, number: int, header: str, dimensions: tuple[str, ...]) -> list[int]:
    """For each dimension, its position among the value columns of the header."""
    names = [c.strip() for c in header.split(",")]
    if names[0] not in TIME_COLUMNS:
        raise ValueError(f"{path}:{number}: the first column must be 'time', got {names[0]!r}")
    values = names[1:]
    unknown = [n for n in values if n not in dimensions]
    missing = [d for d in dimensions if d not in values]
    if unknown or missing or len(values) != len(dimensions):
        what = f"unknown column {unknown[0]!r}" if unknown else (
            f"no column for dimension {missing[0]!r}" if missing else "a dimension listed twice")
        raise ValueError(f"{path}:{number}: {what} (the columns are time and the dimensions "
                         f"{', '.join(dimensions)})")
    return [values.index(d) for d in dimensions]


def inline_trajectory(points: list[list[float]], dimensions: tuple[str, ...], unit: bool = True) -> Trajectory:
    """A trajectory written in the scenario: rows ``[time, v1, ..., vK]`` in the value space's order."""
    for i, row in enumerate(points):
        if len(row) != len(dimensions) + 1:
            raise ValueError(f"points[{i}]: expected {len(dimensions) + 1} numbers (time and "
                             f"{len(dimensions)} dimensions: {', '.join(dimensions)}), got {len(row)}")
    return _trajectory([list(map(float, row)) for row in points], len(dimensions), unit, lambda i: f"points[{i}]")


def _trajectory(points: list[list[float]], k: int, unit: bool, where) -> Trajectory:
    if not points:
        raise ValueError(f"{where(0)}: a trajectory needs at least one row")
    for i, row in enumerate(points):
        if not all(math.isfinite(v) for v in row):
            raise ValueError(f"{where(i)}: not finite")
        if i and row[0] <= points[i - 1][0]:
            raise ValueError(f"{where(i)}: time {row[0]:g} does not come after {points[i - 1][0]:g}")
        if unit and not all(0.0 <= v <= 1.0 for v in row[1:]):
            raise ValueError(f"{where(i)}: values must be in [0, 1]")
    table = torch.tensor(points, dtype=torch.float64).reshape(len(points), k + 1)
    return Trajectory(times=table[:, 0].contiguous(), values=table[:, 1:].contiguous())


class TrajectorySource(PluginParams):
    """A trajectory given by ``file`` or inline ``points``."""

    file: str | None = None
    """A CSV file: header ``time,<dimension>,...`` (every dimension, any order), a row per time."""
    points: list[list[float]] | None = None
    """Inline rows ``[time, v1, ..., vK]``, dimensions in the value space's order."""


def load(source: TrajectorySource, world: World, unit: bool = True) -> Trajectory | None:
    """The trajectory ``source`` names (None if it names none)."""
    if source.file is not None:
        return read_trajectory(resolve_path(source.file, world), world.space.dimensions, unit)
    if source.points is not None:
        return inline_trajectory(source.points, world.space.dimensions, unit)
    return None


class Drift:
    """Exogenous drift of human values: a constant trend per step, or a trajectory replayed step by step.

    At the step from world step t to t + 1 every agent of the drifting groups
    moves by ``trend`` (per dimension), or by the trajectory's change
    r(t + 1) - r(t); values are clipped to [0, 1]. Give exactly one of
    ``trend``, ``file`` or ``points``. List it with the social dynamics (in
    any order: it adds the same shift to every drifting agent).
    """

    class Params(TrajectorySource):
        trend: Trend | None = None
        """Change per step: one number for every dimension, a list in dimension order, or a mapping."""
        groups: list[str] | None = None
        """The groups that drift; None: every group of kind human."""
        scale: Annotated[float, Interval(ge=0)] = 1.0
        """Multiplies the trend or the trajectory's change (0 switches the drift off)."""

        @model_validator(mode="after")
        def _one_source(self):
            given = [n for n in ("trend", "file", "points") if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of trend, file or points" +
                                 (f" (got {', '.join(given)})" if given else ""))
            return self

    uses: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params):
        self.params = params
        self._cache: dict[tuple, object] = {}  # what the parameters name, read once per value space and folder

    def prepare(self, world: World) -> None:
        """Read the trajectory and check the groups when the world is built (errors name the file and line)."""
        self._source(world)
        self._mask(world)

    def _source(self, world: World):
        key = (world.space.dimensions, world.context.get("base_dir"))
        if key not in self._cache:
            if self.params.trend is not None:
                self._cache[key] = DimResolver(world.space.dimensions)(self.params.trend)
            else:
                self._cache[key] = load(self.params, world, unit=True)
        return self._cache[key]

    def _mask(self, world: World) -> torch.Tensor:
        names = [g.name for g in world.groups]
        for name in self.params.groups or ():
            if name not in names:
                raise ValueError(f"groups: unknown group {name!r} (groups: {', '.join(names)})")
        chosen = [g for g in world.groups if (g.name in self.params.groups if self.params.groups is not None
                                              else g.kind == "human")]
        mask = torch.zeros(world.n, dtype=torch.bool, device=world.device)
        for group in chosen:
            mask[group.rows] = True
        return mask

    def shift(self, state: State, world: World) -> torch.Tensor:
        """The change of this step, [B, K] float64."""
        source = self._source(world)
        if isinstance(source, Trajectory):
            t = state.world_step.to(torch.float64)
            change = source.at(t + 1) - source.at(t)
        else:
            change = source.to(world.device).expand(world.b, world.k)
        return self.params.scale * change

    def apply(self, values: torch.Tensor, expressed: torch.Tensor, state: State, world: World,
              rng: Streams) -> torch.Tensor:
        mask = self._mask(world).to(values.dtype)
        change = self.shift(state, world).to(values.device, values.dtype)
        return (values + mask[None, :, None] * change[:, None, :]).clamp(0.0, 1.0)
