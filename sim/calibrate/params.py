"""The parameters a calibration searches: ``--param dotted.key=low:high``.

A key is a dotted path into the *resolved* scenario (every default filled in,
as ``valuesim validate --json`` prints it), found the way ``--set`` finds it:
list entries by position or by name (``population.people.rate``,
``dynamics.noise.sigma``). It must name a number (or a per-agent parameter,
which a number sets to a constant). Both ends of the range must be values the
scenario accepts there, so a candidate anywhere in the box is valid.

How a candidate reaches the engine depends on the key:

- **per world** (one batch holds every candidate): the per-agent parameters of
  a group and their distributions (``population.<group>.confidence``,
  ``.rate``, ``.anchoring``, ``.zealots``, ``population.<group>.confidence.low``,
  ...), which become ``[B, N]`` tensors through ``Simulation.set_params``, and a
  group's policy parameters (``population.<group>.policy.<policy>.<param>``),
  through ``Simulation.vary_policy``; and a protocol's numbers that its class
  names in ``per_world`` (``protocols.advice.tactic_gain``,
  ``protocols.advice.susceptibility.financial``), held as ``[B]`` tensors
  through ``Simulation.vary_protocol`` (``sim.core.perworld``);
- **per batch**: every other key (network parameters, dynamics parameters,
  counts, steps): the engine holds one network and one set of plugins per
  batch, so candidates are grouped by their values of these keys and each
  group is a batch of its own. Continuous values differ between candidates,
  so such a key costs one batch per candidate: correct, but as slow as one
  run per candidate. Integer keys are rounded.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..core.state import AGENT_PARAMETERS
from ..config.yamlsource import entry_label
from ..errors import ScenarioError

PER_AGENT = (*AGENT_PARAMETERS, "zealots")


@dataclass(frozen=True)
class Parameter:
    """One searched parameter: its ``--set`` key, its box ``[low, high]``, and how it reaches the engine.

    ``path`` is the resolved path (list entries as indices); ``kind`` is
    ``"agents"`` (per-agent parameters, per world), ``"policy"`` (a group's
    policy parameter, per world), ``"protocol"`` (a protocol's per-world
    parameter) or ``"batch"`` (grouped into batches); ``integer`` rounds
    candidates.
    """

    key: str
    low: float
    high: float
    path: tuple
    kind: str
    integer: bool = False
    group: str | None = None  # the population group, for "agents" and "policy" keys
    protocol: str | None = None  # the protocol's name in state.protocols, for "protocol" keys
    field: str | None = None  # its key for Simulation.vary_protocol (``susceptibility.financial``)

    def value(self, unit: float) -> float:
        """The parameter's value at ``unit`` in [0, 1] of its box (rounded for integers, 6 digits otherwise)."""
        x = self.low + min(max(unit, 0.0), 1.0) * (self.high - self.low)
        return float(round(x)) if self.integer else float(f"{x:.6g}")

    def flag(self, value: float) -> str:
        """The ``--set`` flag that sets this parameter to ``value``."""
        return f"{self.key}={int(value) if self.integer else format(value, '.6g')}"


def parse_params(specs: list[str], scenario) -> list[Parameter]:
    """``--param`` flags -> Parameters, checked against ``scenario`` (a :class:`sim.Scenario`)."""
    if not specs:
        raise ScenarioError("give at least one --param dotted.key=low:high to search", location="--param")
    params, seen = [], set()
    resolved = scenario.to_dict()
    for spec in specs:
        key, low, high = _split(spec)
        if key in seen:
            raise ScenarioError(f"{key} is given twice", location=f"--param {spec}")
        seen.add(key)
        path, value = _walk(resolved, key, scenario, spec)
        param = _classify(key, low, high, path, value, resolved, scenario, spec)
        _check_ends(param, scenario, spec)
        params.append(param)
    return params


def _split(spec: str) -> tuple[str, float, float]:
    key, sep, box = spec.partition("=")
    lo, colon, hi = box.partition(":")
    where = f"--param {spec}"
    if not sep or not key.strip() or not colon:
        raise ScenarioError("expected dotted.key=low:high, e.g. population.people.rate=0.05:0.5", location=where)
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        raise ScenarioError(f"the range {box!r} must be two numbers low:high", location=where) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ScenarioError(f"the range {box!r} must be finite", location=where)
    if not low < high:
        raise ScenarioError(f"the range must have low < high, got {box!r}", location=where)
    return key.strip(), low, high


def _walk(data: Any, key: str, scenario, spec: str) -> tuple[tuple, Any]:
    """Follow ``key`` through the resolved scenario as ``--set`` would; a miss names the nearest key."""
    path: list[Any] = []
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = scenario.source.locate(tuple(path))
        here = ".".join(parts[:i]) or "the scenario"
        if isinstance(node, list):
            labels = [entry_label(item) for item in node]
            if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                index = int(part) % len(node)
            elif part in labels:
                index = labels.index(part)
            else:
                raise _missing(key, part, here, [str(x) for x in labels], where, spec)
            path.append(index)
            node = node[index]
            if isinstance(node, dict) and set(node) == {"name", "params"} and i + 1 < len(parts) \
                    and parts[i + 1] not in node:  # a resolved protocol: ``protocols.advice.tactic_gain``
                path.append("params")
                node = node["params"]
            elif isinstance(node, dict) and len(node) == 1 and "name" not in node and i + 1 < len(parts) \
                    and part in node:  # ``dynamics.noise.sigma``: step into the plugin's parameters
                path.append(part)
                node = node[part]
        elif isinstance(node, dict):
            if part not in node:
                raise _missing(key, part, here, [str(k) for k in node], where, spec)
            path.append(part)
            node = node[part]
        else:
            raise ScenarioError(f"{key}: {here} is a value, not a mapping or list", location=where, path=key)
    return tuple(path), node


def _missing(key: str, part: str, here: str, known: list[str], where: str, spec: str) -> ScenarioError:
    close = difflib.get_close_matches(part, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ScenarioError(f"no such key {part!r} in {here}{hint} (keys: {', '.join(known) or 'none'}) "
                         f"[--param {spec}]", location=where, path=key)


def _classify(key, low, high, path, value, resolved, scenario, spec) -> Parameter:
    where = scenario.source.locate(path)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    per_agent = len(path) >= 3 and path[0] == "population" and path[2] in PER_AGENT
    if per_agent and len(path) == 3 and isinstance(value, dict):
        if value.get("dist") != "constant":
            fields = [k for k in value if k != "dist"]
            raise ScenarioError(f"is a {value.get('dist')} distribution; search one of its parameters instead "
                                f"({', '.join(f'{key}.{f}' for f in fields)}) [--param {spec}]",
                                location=where, path=key)
        numeric = True  # a number given here is a constant
    if value is None:  # an optional number that is off (``repulsion: null``): a candidate turns it on
        numeric = True
    if not numeric:
        raise ScenarioError(f"must name a number to search, but it is {_describe(value)} [--param {spec}]",
                            location=where, path=key)
    integer = isinstance(value, int) and not isinstance(value, bool) and not per_agent
    group = resolved["population"][path[1]]["name"] if path[0] == "population" and len(path) > 1 else None
    protocol, field = _per_world_protocol(path, resolved, scenario)
    if per_agent:
        kind = "agents"
    elif len(path) == 5 and path[0] == "population" and path[2] == "policy":
        kind = "policy"
    elif protocol is not None:
        kind = "protocol"
    else:
        kind = "batch"
    if kind == "protocol":
        integer = False  # held as float64 [B] tensors (a 1 written in the file is still a number to search)
    return Parameter(key=key, low=low, high=high, path=path, kind=kind, integer=integer, group=group,
                     protocol=protocol, field=field)


def _per_world_protocol(path: tuple, resolved, scenario) -> tuple[str | None, str | None]:
    """(the protocol's name, its field) when ``path`` is a number its class lets vary per world, else Nones."""
    if len(path) < 4 or path[0] != "protocols" or path[2] != "params":
        return None, None
    from .. import registry
    from ..config.build import protocol_keys

    ref = scenario.spec.protocols[path[1]]
    allowed = getattr(registry.get("protocols", ref.name), "per_world", ())
    if path[3] not in allowed:
        return None, None
    return protocol_keys(scenario.spec.protocols)[path[1]], ".".join(map(str, path[3:]))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a mapping (keys: {', '.join(map(str, value))})"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _check_ends(param: Parameter, scenario, spec: str) -> None:
    """Both ends of the box must be values the scenario accepts at the key (its range, its type)."""
    for end in (param.low, param.high):
        try:
            with_overrides(scenario, [param.flag(end)])
        except ScenarioError as exc:
            message = exc.message if exc.path is None else f"{exc.path}: {exc.message}"
            raise ScenarioError(f"the range {param.low:g}:{param.high:g} leaves what the scenario accepts: "
                                f"{message}", location=f"--param {spec}") from None


def with_overrides(scenario, flags: list[str]):
    """``scenario`` (as loaded, its own ``--set`` flags applied) with more ``--set`` flags."""
    from ..config.scenario import scenario_from_dict

    return scenario_from_dict(scenario.source.data, flags, scenario.base_dir)
