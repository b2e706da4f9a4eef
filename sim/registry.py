"""The plugin registry: a table of name -> entry point, per kind.

Every plugin, built-in or third-party, is found through a Python entry point
in the group ``valuesim.<kind>``. Entry points are listed lazily on first use
and cached; a plugin module is imported only when it is asked for. A miss
names what was asked, what exists, and the nearest names.
"""

from __future__ import annotations

import difflib
import warnings
from importlib import metadata
from typing import Any

from .errors import PluginError

KINDS = (
    "policies", "dynamics", "networks", "protocols", "alignment_rules", "metrics",
    "llm_backends", "value_readers", "trainers", "executors",
)

_entry_points: dict[str, dict[str, metadata.EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}


def _group(kind: str) -> str:
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return f"valuesim.{kind}"


def refresh() -> None:
    """Forget what was discovered (after installing a plugin package in the same process)."""
    _entry_points.clear()
    _loaded.clear()


def entry_points(kind: str) -> dict[str, metadata.EntryPoint]:
    """Name -> entry point for one kind, discovered once and cached."""
    if kind not in _entry_points:
        table: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=_group(kind)):
            if ep.name in table and table[ep.name].value != ep.value:
                warnings.warn(
                    f"valuesim: two {kind} plugins are named {ep.name!r} "
                    f"({table[ep.name].value} and {ep.value}); keeping the first",
                    stacklevel=2,
                )
                continue
            table[ep.name] = ep
        _entry_points[kind] = table
    return _entry_points[kind]


def names(kind: str) -> list[str]:
    """Sorted names of the plugins of ``kind``."""
    return sorted(entry_points(kind))


SINGULAR = {"policies": "policy", "networks": "network generator", "metrics": "metric",
            "alignment_rules": "alignment rule", "llm_backends": "LLM backend", "value_readers": "value reader",
            "protocols": "protocol", "trainers": "trainer", "executors": "executor", "dynamics": "dynamics"}


def unknown_name_message(kind: str, name: str, known: list[str], where: str = "installed") -> str:
    """"unknown dynamics 'defuant'; did you mean 'deffuant'? (installed: ...)"."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {SINGULAR.get(kind, kind)} {name!r}{hint} ({where}: {', '.join(known) or 'none'})"


def get(kind: str, name: str) -> Any:
    """Load and return the plugin object (usually a class) registered as ``name``."""
    key = (kind, name)
    if key in _loaded:
        return _loaded[key]
    table = entry_points(kind)
    if name not in table:
        raise PluginError(unknown_name_message(kind, name, sorted(table)))
    ep = table[name]
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin is the plugin's fault, reported as such
        dist = getattr(ep.dist, "name", "an unknown distribution")
        raise PluginError(
            f"{kind} plugin {name!r} from {dist} ({ep.value}) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _loaded[key] = obj
    return obj
