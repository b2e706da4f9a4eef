"""The scenario schema: frozen, typed, strict (unknown keys are errors).

Ranges live in the types, as :class:`~sim.core.interval.Interval` (the one
interval type, shared with plugin parameters), so every range error reads the
same way: ``must be in (0, 1], got 1.5``. See ``scenarios/README.md`` for a
guided tour.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator,
)
from pydantic_core import PydanticCustomError

from ..core.contracts import Strict
from ..core.interval import Interval
from ..core.state import AGENT_PARAMETERS
from .distributions import Constant, Distribution, Uniform
from ..core.valuespace import BUILTIN_SPACES

GROUP_KINDS = ("human", "llm", "ai", "rl")
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]


# ---------------------------------------------------------------- per-agent parameters


def _number_is_constant(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"dist": "constant", "value": value}
    return value


def _within(interval: Interval):
    """An after-validator: every value the distribution can give lies in the interval."""

    def check(dist: Any) -> Any:
        for name in ("value", "low", "high", "mean"):
            v = getattr(dist, name, 0.0)
            if not isinstance(v, (int, float)):
                raise PydanticCustomError("scalar", "{name} must be a single number for a per-agent parameter",
                                          {"name": name})
        lo, hi = dist.support()
        if dist.dist == "normal":  # clipped into the interval when sampled
            lo = hi = dist.mean
        # which ends of its support a distribution can actually return
        lo_hit, hi_hit = {"uniform": (True, False), "beta": (False, False)}.get(dist.dist, (True, True))
        # an end the distribution can return must lie in the interval; one it only approaches, in its closure
        if lo not in (interval if lo_hit else interval.closure) or hi not in (interval if hi_hit else interval.closure):
            support = Interval(**{"ge" if lo_hit else "gt": lo, "le" if hi_hit else "lt": hi})
            raise interval.error(lo if dist.dist == "constant" else f"{dist.dist} on {support.brackets}")
        return dist

    return check


def AgentParam(interval: Interval):
    """A per-agent parameter: a number or a distribution whose every value lies in ``interval``."""
    return Annotated[Distribution, BeforeValidator(_number_is_constant), AfterValidator(_within(interval))]


UnitFloat = Annotated[float, Interval(ge=0, le=1)]


def _not_a_bool(value: Any) -> Any:
    # pydantic takes true for 1 (and YAML writes true for yes): a count of true is a slip, not a 1
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "must be an integer, got {given}", {"given": str(value).lower()})
    return value


def Count(interval: Interval):
    """An integer field of the scenario: ``true`` is not 1."""
    return Annotated[int, BeforeValidator(_not_a_bool), interval]


MAX_SEED = 2**64 - 1
"""Seeds are hashed as 64-bit words: a larger one would share its streams with a smaller one."""


def _seed_fits(seed: int) -> int:
    if seed > MAX_SEED:
        raise PydanticCustomError("seed", "must be at most 2**64 - 1, got {given}", {"given": seed})
    return seed


MAX_NAME = 100
"""The longest scenario name: it begins the run directory's name, which a file system keeps to 255 bytes."""
RESERVED_GROUPS = ("all",)
"""Group names the run log uses itself: ``all`` is the metrics' whole-population scope."""


def _group_name(name: str) -> str:
    if name.lower() in RESERVED_GROUPS:
        raise PydanticCustomError("reserved", "group name '{name}' is reserved: the metrics' readings for the whole "
                                  "population have scope 'all'; rename the group", {"name": name})
    return name


def _short_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise PydanticCustomError("too_long", "must be at most {most} characters (it names the run directory), "
                                  "got {length}", {"most": MAX_NAME, "length": len(name)})
    return name


# ---------------------------------------------------------------- initial values


class FileInit(Strict):
    """Initial values read from a file with one row per agent and one column per dimension (csv, parquet, npy)."""

    file: str


class ProfileInit(Strict):
    """Initial values around the value profile of ``agents/<profile>.yaml``, with Gaussian ``spread``."""

    profile: str
    spread: Annotated[float, Interval(ge=0)] = 0.05


def _init_kind(value: Any) -> str | None:
    for key in ("dist", "file", "profile"):
        if (key in value) if isinstance(value, dict) else hasattr(value, key):
            return key
    return None


InitSpec = Annotated[
    Union[Annotated[Distribution, Tag("dist")], Annotated[FileInit, Tag("file")],
          Annotated[ProfileInit, Tag("profile")]],
    Discriminator(_init_kind, custom_error_type="init_kind",
                  custom_error_message="needs one of the keys 'dist', 'file' or 'profile'"),
]


# ---------------------------------------------------------------- plugins named in a scenario


class PluginRef(BaseModel):
    """A plugin named in a scenario, written ``name`` or ``{name: {param: value}}``.

    After loading, ``params`` holds the validated parameters with defaults filled in.
    """

    model_config = ConfigDict(frozen=True)
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data, "params": {}}
        if isinstance(data, dict) and not ("name" in data and set(data) <= {"name", "params"}):
            if len(data) != 1:
                raise PydanticCustomError(
                    "plugin_ref", "must be a plugin name or a one-key mapping of the name to its parameters, got keys {keys}",
                    {"keys": ", ".join(map(str, data))})
            (name, params), = data.items()
            if params is not None and not isinstance(params, dict):
                raise PydanticCustomError("plugin_params", "parameters of '{name}' must be a mapping, got {given}",
                                          {"name": name, "given": params})
            return {"name": str(name), "params": params or {}}
        return data

    def as_yaml(self) -> Any:
        return {self.name: dict(self.params)}


# ---------------------------------------------------------------- the scenario


class RLReward(Strict):
    """An RL group's reward: one reading of a metric, ``sign`` times it, each step (the whole group shares it).

    The reading is reduced to a number per world: its ``scope`` (a group name or ``all``), then its
    ``dimension`` (one name; None: the mean over its dimensions), or, with ``target``, the distance of
    the reading's vector from ``target`` (l2 / sqrt(K), in [0, 1]: ``sign: -1`` rewards getting close).
    """

    metric: PluginRef
    """A metric plugin, written like one under ``metrics`` (``mean_values``, ``{polarization: {...}}``)."""
    reading: str | None = None
    """Which of the metric's readings (its ``writes``); None: the first one it returns."""
    scope: str = "all"
    dimension: str | None = None
    target: UnitFloat | list[UnitFloat] | dict[str, UnitFloat] | None = None
    sign: Literal[1, -1] = 1
    change: bool = False
    """Reward the step's change of the quantity (after the step minus before) instead of its value: an
    episode's return is then its total change, and each step's reward is what that step's actions did."""


class RLObserveGroup(Strict):
    """Observe the mean values of a group's present agents (an audience), [K]."""

    group: str


class RLObserveProtocol(Strict):
    """Observe a protocol outcome (``state.protocols[protocol][outcome]``), one number per world (per-agent
    outcomes as their mean), times ``scale``."""

    protocol: str
    outcome: str
    scale: float = 1.0


RLFeature = Union[Literal["own", "neighbours", "step"], RLObserveGroup, RLObserveProtocol]


class RLSpec(Strict):
    """What an ``rl`` group trains on: its observation, its action, its reward and the episode length.

    Observation features, concatenated in order into one float32 Box per agent: ``own`` (its values, [K]),
    ``neighbours`` (the mean values of its present network neighbours, [K]; its own values without any),
    ``step`` (the world's step / episode length, [1]), ``{group: NAME}`` and ``{protocol: .., outcome: ..}``.
    ``action`` is ``express`` (the vector its agents show, Box [0, 1]^K) or an action a protocol declares
    for the group (broadcast's ``share``), in the space the protocol declares.
    """

    observe: Annotated[list[RLFeature], Field(min_length=1)] = Field(
        default_factory=lambda: ["own", "neighbours", "step"])
    action: str = "express"
    reward: RLReward
    episode: Annotated[int, Interval(ge=1)] | None = None
    """Steps per episode (every world is truncated then and restarted on a fresh stream); None: ``steps``."""


class GroupSpec(Strict):
    """A population group: ``count`` agents of one ``kind`` with their initial values and parameters."""

    name: Annotated[Identifier, AfterValidator(_group_name)]
    kind: Literal["human", "llm", "ai", "rl"] = "human"
    count: Count(Interval(ge=1))
    init: InitSpec = Uniform(dist="uniform", low=0.0, high=1.0)
    confidence: AgentParam(AGENT_PARAMETERS["confidence"]) = Constant(value=0.2)
    rate: AgentParam(AGENT_PARAMETERS["rate"]) = Constant(value=0.5)
    anchoring: AgentParam(AGENT_PARAMETERS["anchoring"]) = Constant(value=0.0)
    zealots: UnitFloat = 0.0
    policy: PluginRef = PluginRef(name="honest")
    baseline: PluginRef | None = None
    """The policy the group's agents act by in worlds where they do not use their own (``state.own_policy``
    False: a Shapley null, a counterfactual); None means ``honest`` when one is needed."""
    persona: str | dict[str, Any] | None = None
    """An LLM persona: the name of ``agents/<name>.yaml``, or ``{name: ..., field: override}``."""
    backend: PluginRef | None = None
    """For a persona group: the LLM backend to use instead of the persona's (``scripted``, ``transformers``,
    ``openai``)."""
    rl: RLSpec | None = None
    """For an ``rl`` group: its observation, action, reward and episode length (``sim.marl``)."""


class NetworkSpec(Strict):
    """The influence network: a generator plugin and its parameters (``file`` reads a graph file)."""

    generator: str = "complete"
    params: dict[str, Any] = Field(default_factory=dict)
    independent: bool = False
    """A graph per world instead of one shared by all: each world's graph is drawn from (seed, its stream), so
    replicates differ in their network too and their spread counts the graph's variance; worlds on one stream
    (Shapley coalitions, counterfactual twins, a sweep's paired points) share a graph, and stream 0's is the
    shared graph. Refused for more than one world with a generator that is not random (``file``, ``complete``)."""


class StopSpec(Strict):
    """When to stop before ``steps``: ``tolerance`` stops once no value moved more than it in a step (every world)."""

    tolerance: Annotated[float, Interval(gt=0)] | None = None


class LogSpec(Strict):
    """What the run log keeps.

    ``values_every``: steps between value snapshots (default: ``log_every``).
    ``values_max_agents``: every agent is kept up to this many per world, a seeded sample beyond it.
    ``checkpoint_every``: steps between checkpoints (default: 10 x ``log_every``).
    """

    values_every: Count(Interval(ge=1)) | None = None
    values_max_agents: Count(Interval(ge=0)) = 10_000
    checkpoint_every: Count(Interval(ge=1)) | None = None


class ValueSpaceSpec(Strict):
    name: str = "custom"
    dimensions: Annotated[list[Identifier], Field(min_length=1)]


def _value_space(value: Any) -> Any:
    if isinstance(value, str):
        if value not in BUILTIN_SPACES:
            close = difflib.get_close_matches(value, list(BUILTIN_SPACES), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PydanticCustomError(
                "value_space", "unknown value space '{given}'{hint} (built-in: {known}; or a list of dimension names)",
                {"given": value, "hint": hint, "known": ", ".join(BUILTIN_SPACES)})
        return {"name": value, "dimensions": list(BUILTIN_SPACES[value])}
    if isinstance(value, list):
        return {"name": "custom", "dimensions": value}
    return value


# The key and attribute columns of the run log's tables (values, agents, network: sim/runs/tables.py); a value
# dimension is a column of values.parquet beside them, so it may not be named like one.
RUN_LOG_COLUMNS = ("world", "step", "agent", "group", "stream", "kind", "policy", "confidence", "rate",
                   "anchoring", "zealot", "degree", "logged", "source", "target", "moved")


def _unique_dimensions(spec: ValueSpaceSpec) -> ValueSpaceSpec:
    dupes = sorted({d for d in spec.dimensions if spec.dimensions.count(d) > 1})
    if dupes:
        raise PydanticCustomError("duplicate", "dimension '{name}' is listed twice", {"name": dupes[0]})
    reserved = [d for d in spec.dimensions if d.lower() in RUN_LOG_COLUMNS]
    if reserved:
        raise PydanticCustomError(
            "reserved", "dimension '{name}' is reserved: the run log's tables have a column of that name "
            "(reserved: {names}); rename the dimension", {"name": reserved[0], "names": ", ".join(RUN_LOG_COLUMNS)})
    return spec


class ScenarioSpec(Strict):
    """One simulation, as written in a scenario file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$"), AfterValidator(_short_name)]
    description: str = ""
    plugins: list[str] = Field(default_factory=list)
    """Drop-in plugin files to load (paths relative to the scenario); only files named here are run."""
    seed: Annotated[Count(Interval(ge=0)), AfterValidator(_seed_fits)] = 0
    steps: Count(Interval(ge=0)) = 100
    log_every: Count(Interval(ge=1)) = 1
    worlds: Count(Interval(ge=1)) = 1
    values: Annotated[ValueSpaceSpec, BeforeValidator(_value_space), AfterValidator(_unique_dimensions)] = \
        ValueSpaceSpec(name="schwartz10", dimensions=list(BUILTIN_SPACES["schwartz10"]))
    network: NetworkSpec = NetworkSpec()
    population: Annotated[list[GroupSpec], Field(min_length=1)]
    dynamics: list[PluginRef] = Field(default_factory=lambda: [PluginRef(name="deffuant")])
    metrics: list[PluginRef] = Field(
        default_factory=lambda: [PluginRef(name=m) for m in ("mean_values", "drift", "polarization", "clusters")])
    protocols: list[PluginRef] = Field(default_factory=list)
    """Step 1 of every step: who meets whom beyond pairwise influence (``broadcast``, ...), in order."""
    alignment: list[PluginRef] = Field(default_factory=list)
    counterfactual: list[Identifier] = Field(default_factory=list)
    """Groups left out of a twin of every world: each world gets a counterfactual world on the same stream in
    which these groups are absent (the second half of the batch), so their effect is measured with common random
    numbers. Empty: no twins."""
    """Step 4 of every step: rules that move AI groups' own values toward the humans they serve, in order."""
    stop: StopSpec = StopSpec()
    log: LogSpec = LogSpec()

    @model_validator(mode="after")
    def _unique_groups(self) -> "ScenarioSpec":
        seen: set[str] = set()
        for i, group in enumerate(self.population):
            if group.name in seen:
                raise PydanticCustomError("duplicate_group", "population[{i}]: group name '{name}' is used twice",
                                          {"i": i, "name": group.name})
            seen.add(group.name)
        for name in self.counterfactual:
            if name not in seen:
                raise PydanticCustomError("unknown_group", "counterfactual: unknown group '{name}' (groups: {groups})",
                                          {"name": name, "groups": ", ".join(g.name for g in self.population)})
        return self

    @property
    def num_agents(self) -> int:
        return sum(g.count for g in self.population)
