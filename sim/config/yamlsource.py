"""YAML read safely, with the line of every key kept so errors can point at it.

Also applies ``--set dotted.key=value`` overrides to the parsed document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ScenarioError

Path_ = tuple[Any, ...]


@dataclass
class Source:
    """A parsed YAML document: ``data`` (plain dicts/lists/scalars) and where each part came from."""

    data: Any
    name: str  # the file as the user named it, or "<dict>"
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: dict[Path_, str] = field(default_factory=dict)  # path -> the flag that set it

    def locate(self, path: Path_) -> str:
        """``file:line`` of the deepest known prefix of ``path`` (``--set`` for overridden keys)."""
        for cut in range(len(path), -1, -1):
            prefix = tuple(path[:cut])
            if prefix in self.overridden:
                return self.overridden[prefix]
            if prefix in self.lines:
                return f"{self.name}:{self.lines[prefix]}"
        return self.name


def format_path(path: Path_) -> str:
    """('population', 1, 'confidence') -> 'population[1].confidence'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_yaml(path: Path) -> Source:
    """Parse a scenario file. Malformed YAML and duplicate keys are ScenarioErrors with a line."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found: {name}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario file {name}: {exc}") from None
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = (exc.problem or exc.context or "malformed YAML").strip()
        raise ScenarioError(f"malformed YAML: {problem}", location=f"{name}{line}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"malformed YAML: {exc}", location=name) from None
    source = Source(data=data, name=name)
    if node is not None:
        _index(node, (), source)
    return source


def _index(node: yaml.Node, path: Path_, source: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _key(key_node)
            if key in seen:
                raise ScenarioError(
                    f"duplicate key {key!r}", location=f"{source.name}:{key_node.start_mark.line + 1}",
                    path=format_path(path + (key,)),
                )
            seen.add(key)
            source.lines[path + (key,)] = key_node.start_mark.line + 1
            _index(value_node, path + (key,), source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            source.lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), source)


def _key(node: yaml.Node) -> Any:
    """The key as ``yaml.safe_load`` builds it (a plain ``1`` is an int, a quoted one a string)."""
    if isinstance(node, yaml.ScalarNode) and node.style is None:
        return yaml.safe_load(node.value)
    return node.value


def apply_overrides(source: Source, overrides: list[str]) -> None:
    """Apply ``dotted.key=value`` overrides in place; the value is read as YAML.

    A list is indexed by position (``population.0.count``) or by the ``name``
    of an entry / the plugin name of a one-key entry (``population.citizens.count``,
    ``dynamics.deffuant.distance``).
    """
    if not isinstance(source.data, dict):
        return
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"expected dotted.key=value, got {item!r}", location="--set")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"value of {key} is not valid YAML: {exc}", location="--set") from None
        path = _set(source.data, key.strip().split("."), value, key)
        source.overridden[path] = "--set"


def _set(data: Any, parts: list[str], value: Any, key: str) -> Path_:
    path: list[Any] = []
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, key)
            path.append(index)
            if last:
                node[index] = value
            elif _is_plugin_entry(node[index], part):
                # ``dynamics.deffuant.distance``: step into the plugin's parameters
                path.append(part)
                if node[index][part] is None:
                    node[index][part] = {}
                node = node[index][part]
            else:
                node = node[index]
        elif isinstance(node, dict):
            path.append(part)
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ScenarioError(f"cannot set {key}: {'.'.join(parts[:i])} is not a mapping or list",
                                location="--set")
    return tuple(path)


def _list_index(items: list, part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ScenarioError(f"cannot set {key}: index {index} is out of range (the list has {len(items)} entries)",
                                location="--set")
        return index % len(items)
    labels = [_label(item) for item in items]
    if part in labels:
        return labels.index(part)
    if part in items:  # a plugin named without parameters: ``- friedkin_johnsen``
        index = items.index(part)
        items[index] = {part: None}
        return index
    raise ScenarioError(f"cannot set {key}: no entry named {part!r} (entries: {', '.join(map(str, labels))})",
                        location="--set")


def _is_plugin_entry(item: Any, part: str) -> bool:
    return isinstance(item, dict) and len(item) == 1 and part in item and "name" not in item


def _label(item: Any) -> Any:
    if isinstance(item, dict):
        if "name" in item:
            return item["name"]
        if len(item) == 1:
            return next(iter(item))
    return item
