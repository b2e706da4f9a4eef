"""Loading a scenario: YAML -> validated, resolved :class:`Scenario`.

Validation happens in two passes, both reported the same way
(``file:line path: message``): the schema (``sim.config.schema``), then each plugin
the scenario names, looked up in the registry and its parameters validated
against the plugin's own ``Params``. The result holds the validated
parameters with every default filled in, which is what the run log writes
back as ``scenario.yaml``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .. import registry
from ..core.interval import Interval
from ..errors import PluginError, ScenarioError
from .distributions import Constant
from .persona import resolve_persona
from .schema import GroupSpec, PluginRef, ScenarioSpec
from .yamlsource import Source, apply_overrides, format_path, parse_yaml, read_yaml
from ..core.valuespace import ValueSpace


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: ``spec`` (the schema object), where it came from, and where to resolve paths."""

    spec: ScenarioSpec
    source: Source
    base_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def space(self) -> ValueSpace:
        return ValueSpace(self.spec.values.name, tuple(self.spec.values.dimensions))

    def locate(self, path: str | tuple) -> str:
        """``file:line`` of a dotted path such as ``network.params.path``."""
        if isinstance(path, str):
            path = tuple(int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", path) if p)
        return self.source.locate(path)

    def error(self, path: str, message: str) -> ScenarioError:
        return ScenarioError(message, location=self.locate(path), path=path)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved scenario (defaults filled in), as plain YAML-ready data."""
        data = self.spec.model_dump(mode="json", exclude_none=True)
        data["values"] = (self.spec.values.name if self.spec.values.name != "custom"
                          else list(self.spec.values.dimensions))
        data["dynamics"] = [ref.as_yaml() for ref in self.spec.dynamics]
        data["metrics"] = [ref.as_yaml() for ref in self.spec.metrics]
        for group, raw in zip(self.spec.population, data["population"]):
            raw["policy"] = group.policy.as_yaml()
            raw.pop("persona", None)  # a persona group's policy now carries the whole resolved persona
            raw.pop("backend", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  plugin_dirs: list[str | Path] | tuple = ()) -> Scenario:
    """Read, override (``dotted.key=value``), validate and resolve a scenario file.

    ``plugin_dirs``: folders whose ``*.py`` files are drop-in plugins (``--plugins DIR``);
    they are added to the scenario's ``plugins`` so that a resumed run loads them too.
    """
    path = Path(path)
    source = read_yaml(path)
    _add_plugin_dirs(source, plugin_dirs)
    return _build(source, overrides, path.resolve().parent)


def plugin_files(directory: str | Path) -> list[Path]:
    """The drop-in plugin files of a ``--plugins`` folder."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ScenarioError(f"not a folder: {directory}", location="--plugins")
    return sorted(p.resolve() for p in folder.glob("*.py"))


def _add_plugin_dirs(source: Source, plugin_dirs) -> None:
    files = [str(f) for d in plugin_dirs for f in plugin_files(d)]
    if files and isinstance(source.data, dict):
        listed = source.data.get("plugins") or []
        source.data["plugins"] = list(listed) + [f for f in files if f not in listed]
        source.overridden.update({("plugins", i): "--plugins" for i in range(len(listed), len(source.data["plugins"]))})


def scenario_from_dict(data: dict[str, Any], overrides=(), base_dir: str | Path = ".") -> Scenario:
    """Validate a scenario given as a Python mapping (as it would be read from YAML)."""
    source = Source(data=copy.deepcopy(data), name="<dict>")
    return _build(source, overrides, Path(base_dir).resolve())


def scenario_from_yaml(text: str, name: str = "<string>", base_dir: str | Path = ".") -> Scenario:
    return _build(parse_yaml(text, name), (), Path(base_dir).resolve())


def _build(source: Source, overrides, base_dir: Path) -> Scenario:
    if not isinstance(source.data, dict):
        raise ScenarioError(f"a scenario must be a mapping of keys, got {type(source.data).__name__}",
                            location=source.locate(()))
    apply_overrides(source, list(overrides))
    _finite_numbers(source.data, (), source)
    try:
        spec = ScenarioSpec.model_validate(source.data)
    except ValidationError as exc:
        raise _scenario_error(exc, source, ()) from None
    _load_plugin_files(spec, source, base_dir)
    spec = _resolve_plugins(spec, source, base_dir)
    return Scenario(spec=spec, source=source, base_dir=base_dir)


def _finite_numbers(node: Any, path: tuple, source: Source) -> None:
    """NaN and infinities have no place in a scenario (a bound, a mean, a rate): refused wherever they are."""
    if isinstance(node, float) and not math.isfinite(node):
        raise _error(source, path, f"must be a finite number, got {_given(node)}")
    if isinstance(node, dict):
        for key, value in node.items():
            _finite_numbers(value, path + (key,), source)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _finite_numbers(value, path + (i,), source)


def _load_plugin_files(spec: ScenarioSpec, source: Source, base_dir: Path) -> None:
    for i, name in enumerate(spec.plugins):
        path = base_dir / name
        where = dict(location=source.locate(("plugins", i)), path=f"plugins[{i}]")
        if not path.is_file():
            raise ScenarioError(f"plugin file not found: {name} (resolved to {path})", **where)
        try:
            registry.load_files([path])
        except PluginError as exc:
            raise ScenarioError(str(exc), **where) from None


# ---------------------------------------------------------------- plugins


def _resolve_group(group: GroupSpec, i: int, source: Source, base_dir: Path) -> GroupSpec:
    if (group.kind == "rl") != (group.rl is not None):  # an rl group says what it trains on (sim.marl)
        raise _error(source, ("population", i, "rl" if group.rl is not None else "kind"),
                     "is only for groups of kind rl" if group.rl is not None else
                     "an rl group needs an 'rl:' entry with at least its reward (see scenarios/README.md)")
    if group.kind == "rl":
        if group.persona is not None:
            raise _error(source, ("population", i, "persona"), "an rl group takes its actions from training")
        reward = group.rl.reward
        rl = group.rl.model_copy(update={"reward": reward.model_copy(update={"metric": _resolve_ref(
            "metrics", reward.metric, ("population", i, "rl", "reward", "metric"), source)})})
        policy = group.policy if "policy" in group.model_fields_set else PluginRef(name="external")
        group = group.model_copy(update={"rl": rl, "policy": policy})
    if group.persona is None:
        if group.backend is not None:
            raise _error(source, ("population", i, "backend"), "a backend is for groups with a persona")
        return group.model_copy(update={
            "policy": _resolve_ref("policies", group.policy, ("population", i, "policy"), source),
            "baseline": None if group.baseline is None else _resolve_ref("policies", group.baseline,
                                                                         ("population", i, "baseline"), source)})
    return _persona_group(group, i, source, base_dir)


def _persona_group(group: GroupSpec, i: int, source: Source, base_dir: Path) -> GroupSpec:
    """A persona group: the ``llm`` policy with the persona file resolved, plus the persona's defaults."""
    where = ("population", i, "persona")
    if "policy" in group.model_fields_set:
        raise _error(source, ("population", i, "policy"), "a group with a persona speaks through it; "
                     "remove either policy or persona")
    try:
        persona = resolve_persona(group.persona, base_dir)
    except ValueError as exc:
        raise _error(source, where, str(exc)) from None
    if group.backend is not None:
        persona["backend"] = {group.backend.name: group.backend.params}
    backend = PluginRef.model_validate(persona.get("backend", "scripted"))
    if group.backend is not None:
        name_path = ("population", i, "backend")
    elif isinstance(group.persona, dict) and "backend" in group.persona:
        name_path = where + ("backend",)
    else:
        name_path = where  # the persona file's own backend
    params_path = name_path + (backend.name,) if name_path != where else where
    persona["backend"] = {"name": backend.name, "params": _plugin_params(
        "llm_backends", backend.name, backend.params, name_path, params_path, source)}
    reader = PluginRef.model_validate(persona.get("reader", "auto"))
    persona["reader"] = {"name": reader.name, "params": _plugin_params(
        "value_readers", reader.name, reader.params, where, where, source)}
    _check_persona_values(persona, source, where)
    params = _plugin_params("policies", "llm", {"persona": persona}, where, ("population", i), source)
    _check_prompts(params["persona"], source, where)
    _check_local_model(persona["backend"], source, name_path)
    update: dict[str, Any] = {"policy": PluginRef(name="llm", params=params)}
    kind = params["persona"]["kind"]
    if "kind" not in group.model_fields_set:
        update["kind"] = kind
    elif group.kind not in ("llm", "ai"):
        raise _error(source, ("population", i, "kind"), f"a group with a persona is llm or ai, got {group.kind!r}")
    if "zealots" not in group.model_fields_set and not params["persona"]["adapts"]:
        update["zealots"] = 1.0  # a persona's own values stay put unless it adapts
    if "init" not in group.model_fields_set:
        space = source.data.get("values", "schwartz10") if isinstance(source.data, dict) else "schwartz10"
        profile = params["persona"]["values"].get(space if isinstance(space, str) else "custom")
        if profile is not None:
            update["init"] = Constant(dist="constant", value=dict(profile))
    return group.model_copy(update=update)


# The placeholders a persona's prompt templates may use (filled by plugins/llm/policy.py).
PROMPT_PLACEHOLDERS = {"system_prompt": ("values_text", "goal_text", "tactics_text"),
                       "message_prompt": ("audience_text", "step")}


def _check_persona_values(persona: dict[str, Any], source: Source, where: tuple) -> None:
    """A persona's value profile and goal: numbers in [0, 1], as every value is."""
    for field in ("values", "goal"):
        table = persona.get(field)
        if not isinstance(table, dict):
            continue  # the persona model says what it should be
        for space, profile in table.items():
            for dimension, value in (profile.items() if isinstance(profile, dict) else ()):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in _UNIT:
                    raise _error(source, where, f"persona {persona.get('name')!r} {field}.{space}.{dimension}: "
                                                f"{_UNIT.message(value)}")


_UNIT = Interval(ge=0, le=1)


def _check_prompts(persona: dict[str, Any], source: Source, where: tuple) -> None:
    """Each prompt template fills with the placeholders the policy gives it, and with nothing else."""
    for field, allowed in PROMPT_PLACEHOLDERS.items():
        template = persona[field]
        names = ", ".join("{" + a + "}" for a in allowed)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            bad = next((f for f in fields if f.split(".")[0].split("[")[0] not in allowed), None)
            if bad is None:
                template.format(**{a: 1 if a == "step" else "x" for a in allowed})
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise _error(source, where, f"persona {persona['name']!r} {field}: not a valid template ({exc}); "
                                        f"write a literal brace as {{{{ or }}}}") from None
        if bad is not None:
            what = f"positional placeholder {{{bad}}}" if bad == "" or bad.isdigit() else f"unknown placeholder {{{bad}}}"
            raise _error(source, where, f"persona {persona['name']!r} {field}: {what} (allowed: {names})")


def _check_local_model(backend: dict[str, Any], source: Source, path: tuple) -> None:
    """A local model named by path must be there when the scenario is checked, not when the run first speaks."""
    model = backend["params"].get("model") if backend["name"] == "transformers" else None
    if not isinstance(model, str) or not (model.startswith(("/", ".", "~")) or model.endswith(".gguf")):
        return  # smollm2, or a hub name looked up in the local cache
    local = Path(model).expanduser()
    if not (local.is_file() if model.endswith(".gguf") else local.is_dir()):
        kind = "model file" if model.endswith(".gguf") else "model directory"
        raise _error(source, path, f"transformers backend: {kind} {model!r} does not exist")


def _error(source: Source, path: tuple, message: str) -> ScenarioError:
    return ScenarioError(message, location=source.locate(path), path=format_path(path))


def _resolve_plugins(spec: ScenarioSpec, source: Source, base_dir: Path) -> ScenarioSpec:
    network = spec.network.model_copy(update={"params": _plugin_params(
        "networks", spec.network.generator, spec.network.params, ("network", "generator"),
        ("network", "params"), source)})
    dynamics = [_resolve_ref("dynamics", ref, ("dynamics", i), source) for i, ref in enumerate(spec.dynamics)]
    metrics = [_resolve_ref("metrics", ref, ("metrics", i), source) for i, ref in enumerate(spec.metrics)]
    protocols = [_resolve_ref("protocols", ref, ("protocols", i), source) for i, ref in enumerate(spec.protocols)]
    alignment = [_resolve_ref("alignment", ref, ("alignment", i), source) for i, ref in enumerate(spec.alignment)]
    population = [_resolve_group(g, i, source, base_dir) for i, g in enumerate(spec.population)]
    return spec.model_copy(update={"network": network, "dynamics": dynamics, "metrics": metrics,
                                   "protocols": protocols, "alignment": alignment, "population": population})


def _resolve_ref(kind: str, ref: PluginRef, path: tuple, source: Source) -> PluginRef:
    params_path = path + (ref.name,) if _is_mapping_entry(source, path) else path
    return PluginRef(name=ref.name, params=_plugin_params(kind, ref.name, ref.params, path, params_path, source))


def _is_mapping_entry(source: Source, path: tuple) -> bool:
    node: Any = source.data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(node, dict)


def _plugin_params(kind: str, name: str, params: dict, name_path: tuple, params_path: tuple,
                   source: Source) -> dict[str, Any]:
    try:
        cls = registry.get(kind, name)
    except PluginError as exc:
        raise ScenarioError(str(exc), location=source.locate(name_path), path=format_path(name_path)) from None
    try:
        validated: BaseModel = cls.Params.model_validate(params)
    except ValidationError as exc:
        raise _scenario_error(exc, source, params_path) from None
    return validated.model_dump(mode="json")


def instantiate(kind: str, ref: PluginRef) -> Any:
    """Build a plugin object from a resolved reference."""
    cls = registry.get(kind, ref.name)
    return cls(cls.Params.model_validate(ref.params))


# ---------------------------------------------------------------- error messages


def _scenario_error(exc: ValidationError, source: Source, prefix: tuple) -> ScenarioError:
    err = exc.errors(include_url=False)[0]
    path = _real_path(source.data, prefix, err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "unknown_key":
        path = path + (ctx["key"],)
    return ScenarioError(_message(err), location=source.locate(path), path=format_path(path) or None)


def _real_path(data: Any, prefix: tuple, loc: tuple) -> tuple:
    """The part of pydantic's ``loc`` that exists in the document (union tags dropped), after ``prefix``.

    A key that is missing from the document is kept (so the path names it)
    only when it is the last part of ``loc``.
    """
    node = data
    for part in prefix:
        node = node[part] if isinstance(node, (dict, list)) else None
    path = list(prefix)
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            path.append(part)
    return tuple(path)


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
# pydantic's own bound errors (a plugin's ``Field(gt=0)``), written as an Interval writes its own
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _given(value: Any) -> str:
    return repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip() \
        .removesuffix("...").strip()


def _message(err: dict) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_given(given)}"
    if kind in _BOUNDS:
        return Interval(**{_BOUNDS[kind]: ctx[_BOUNDS[kind]]}).message(given)
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return _choice_message(given, allowed)
    if kind == "union_tag_invalid":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        return "unknown distribution " + _choice_message(ctx.get("tag"), allowed, prefix=False)
    if kind == "string_pattern_mismatch":
        return f"must be a name of letters, digits, '_' or '-', got {_given(given)}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'][0].lower()}{err['msg'][1:]}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def _choice_message(given: Any, allowed: list[str], prefix: bool = True) -> str:
    close = difflib.get_close_matches(str(given), allowed, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    head = f"must be one of {', '.join(allowed)}, got " if prefix else ""
    tail = "" if prefix else f" (allowed: {', '.join(allowed)})"
    return f"{head}{_given(given)}{hint}{tail}"
