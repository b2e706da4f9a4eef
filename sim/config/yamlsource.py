"""YAML read safely, with the line of every key kept so errors can point at it.

Also applies ``--set dotted.key=value`` overrides to the parsed document.
"""

from __future__ import annotations

import difflib
import re
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


MAX_YAML_BYTES = 16 * 2**20
"""The largest YAML file read (a scenario, a persona, a profile): larger ones are refused before reading."""
MAX_YAML_NODES = 200_000
"""The most nodes a document may expand to through its aliases (a "billion laughs" is refused, not walked)."""
MAX_DIGITS = 20
"""The most digits of an integer (2**64 has 20): a longer one is a typo or an attack, never a setting."""
_INTEGER = re.compile(r"[-+]?(0|[1-9][0-9_]*)")


def read_text(path: Path, what: str, limit: int = MAX_YAML_BYTES) -> str:
    """A text file's contents after a size check; OSError / UnicodeDecodeError as ValueError."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{what} {path} is {size / 2**20:,.1f} MiB, more than the {limit / 2**20:,.0f} MiB "
                             f"a {what} may be")
        return path.read_bytes()[:limit + 1].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {what} {path}: it is not a UTF-8 text file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_yaml(path: Path) -> Source:
    """Parse a scenario file. Malformed YAML and duplicate keys are ScenarioErrors with a line."""
    name = str(path)
    if not path.exists():
        raise ScenarioError(f"scenario file not found: {name}")
    try:
        text = read_text(path, "scenario file")
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    return parse_yaml(text, name)


def load_yaml(text: str, name: str) -> Any:
    """Plain data from YAML text (safe tags only), for a file a scenario refers to; ValueError with the line."""
    try:
        return parse_yaml(text, name).data
    except ScenarioError as exc:
        raise ValueError(str(exc)) from None


def parse_yaml(text: str, name: str) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_nodes(node, name)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join((exc.problem or exc.context or "malformed YAML").split())
        raise ScenarioError(f"malformed YAML: {problem}", location=f"{name}{line}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ScenarioError(f"malformed YAML: {' '.join(str(exc).split())[:200]}", location=name) from None
    source = Source(data=data, name=name)
    if node is not None:
        _index(node, (), source)
    return source


def _check_nodes(root: yaml.Node, name: str) -> None:
    """Refuse what would blow up loading: too many nodes through aliases, and integers of too many digits."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ScenarioError(f"the document expands to more than {MAX_YAML_NODES:,} nodes (through YAML "
                                "aliases); write it out plainly", location=name)
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif node.tag == "tag:yaml.org,2002:int" and _INTEGER.fullmatch(node.value):
            digits = len(node.value.lstrip("+-").replace("_", ""))
            if digits > MAX_DIGITS:
                raise ScenarioError(f"an integer of {digits:,} digits is too large (at most {MAX_DIGITS})",
                                    location=f"{name}:{node.start_mark.line + 1}")


_MERGE = "tag:yaml.org,2002:merge"


def _index(node: yaml.Node, path: Path_, source: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        # a merge key (``<<: *defaults``) gives the lines of the keys it brings; keys written out win
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                for merged in (value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]):
                    _index(merged, path, source)
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
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
        return yaml.SafeLoader("").construct_object(node)
    if not isinstance(node, yaml.ScalarNode):  # a list or mapping as a key: loading refuses it (unhashable)
        return id(node)
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
            value = parse_yaml(raw, "--set").data
        except ScenarioError as exc:
            raise ScenarioError(f"value of {key.strip()}: {exc.message}", location="--set") from None
        created: list[Path_] = []
        path = _set(source.data, key.strip().split("."), value, key, created)
        # a key that --set brought into the document is blamed on --set, not on the file
        for where in (*created, path):
            source.overridden[where] = "--set"


def _set(data: Any, parts: list[str], value: Any, key: str, created: list[Path_]) -> Path_:
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
            if part not in node:
                created.append(tuple(path))
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
    labels = [entry_label(item) for item in items]
    if part in labels:
        return labels.index(part)
    if part in items:  # a plugin named without parameters: ``- friedkin_johnsen``
        index = items.index(part)
        items[index] = {part: None}
        return index
    close = difflib.get_close_matches(part, [str(label) for label in labels], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ScenarioError(f"cannot set {key}: no entry named {part!r}{hint} (entries: {', '.join(map(str, labels))})",
                        location="--set")


def _is_plugin_entry(item: Any, part: str) -> bool:
    return isinstance(item, dict) and len(item) == 1 and part in item and "name" not in item


def entry_label(item: Any) -> Any:
    """How a list entry is named by ``--set`` paths: its ``name``, or the one key of a one-key mapping."""
    if isinstance(item, dict):
        if "name" in item:
            return item["name"]
        if len(item) == 1:
            return next(iter(item))
    return item
