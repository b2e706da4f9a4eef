"""The plugin registry: a table of name -> entry point, per kind.

Every plugin, built-in or third-party, is found through a Python entry point
in the group ``valuesim.<kind>``. Entry points are listed lazily on first use
and cached; a plugin module is imported only when it is asked for. A miss
names what was asked, what exists, and the nearest names.

Beside entry points, a plugin can be registered by name with
:func:`register`: drop-in files a scenario names do this, and so do tests
that need a fake plugin. Such tests wrap it in :func:`scratch`, which undoes
every registration, load and discovery made inside it::

    with registry.scratch():
        registry.register("dynamics", "exploding")(Exploding)
        sim.run(scenario_that_names_exploding)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import PluginError
from .checks import check_plugin
from .kinds import KINDS, SINGULAR, unknown_name_message


_entry_points: dict[str, dict[str, metadata.EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}
# Plugins registered by name, from files the user named (a scenario's ``plugins:`` or ``--plugins DIR``) or
# from code (a test's fake): kind -> name -> (object, "file PATH" or "module NAME")
_dropins: dict[str, dict[str, tuple[Any, str]]] = {}
_loading_file: list[str] = []
_DROPIN_MODULE = "valuesim_dropin_"


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
                first = table[ep.name]
                warnings.warn(
                    f"valuesim: two {kind} plugins are named {ep.name!r}: distribution "
                    f"{_dist_name(first)} ({first.value}) and distribution {_dist_name(ep)} ({ep.value}); "
                    f"keeping the first", stacklevel=2,
                )
                continue
            table[ep.name] = ep
        _entry_points[kind] = table
    return _entry_points[kind]


def _dist_name(ep: metadata.EntryPoint) -> str:
    return getattr(ep.dist, "name", None) or "unknown"


def names(kind: str) -> list[str]:
    """Sorted names of the plugins of ``kind``: installed ones and drop-ins."""
    return sorted(set(entry_points(kind)) | set(_dropins.get(kind, {})))


def origin(kind: str, name: str) -> str:
    """Where a plugin comes from, for messages: its distribution and object, or its file (or module)."""
    table = entry_points(kind)
    if name in table:
        ep = table[name]
        return f"distribution {_dist_name(ep)} ({ep.value})"
    if name in _dropins.get(kind, {}):
        return _dropins[kind][name][1]
    raise PluginError(unknown_name_message(kind, name, names(kind)))


def register(kind: str, name: str | None = None) -> Callable[[Any], Any]:
    """Register a plugin by name: ``@register("policies", "my_policy")`` above the class in a drop-in file.

    Only files the user names are ever loaded (:func:`load_files`). Code may
    call it too, ``register("dynamics", "fake")(FakeDynamics)``: tests do, inside
    :func:`scratch`. The name defaults to the object's ``__name__``; a name
    that is already taken keeps its first owner, with a warning. Like an
    entry point, the plugin is checked against its kind's contract when it is
    first asked for (:func:`get`).
    """
    _group(kind)

    def decorate(obj: Any) -> Any:
        key = name or obj.__name__
        where = f"file {_loading_file[-1]}" if _loading_file else f"module {getattr(obj, '__module__', '?')}"
        taken = entry_points(kind).get(key)
        if taken is not None or key in _dropins.get(kind, {}):
            first = origin(kind, key)
            if not (key in _dropins.get(kind, {}) and _dropins[kind][key][1] == where):
                warnings.warn(f"valuesim: {kind} plugin {key!r} from {where} has the name of the one from "
                              f"{first}; keeping that one", stacklevel=2)
            return obj
        _dropins.setdefault(kind, {})[key] = (obj, where)
        return obj

    return decorate


def load_files(paths: list[Path]) -> None:
    """Import drop-in plugin files (each once per process); their ``@register`` calls add the plugins.

    A file that does not exist or fails to import raises ``PluginError`` naming it and the error.
    """
    for path in paths:
        path = Path(path).resolve()
        module_name = _DROPIN_MODULE + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if module_name in sys.modules:
            continue
        if not path.is_file():
            raise PluginError(f"plugin file not found: {path}")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        _loading_file.append(str(path))
        try:
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report it, do not crash
            sys.modules.pop(module_name, None)
            raise PluginError(f"{path.name} failed to import: {type(exc).__name__}: {exc}") from exc
        finally:
            _loading_file.pop()


def get(kind: str, name: str) -> Any:
    """Load and return the plugin object (usually a class) registered as ``name``."""
    key = (kind, name)
    if key in _loaded:
        return _loaded[key]
    table = entry_points(kind)
    if name in table:
        try:
            obj = table[name].load()
        except Exception as exc:  # a broken plugin is the plugin's fault, reported as such
            raise PluginError(f"{kind} plugin {name!r} from {origin(kind, name)} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
    elif name in _dropins.get(kind, {}):
        obj = _dropins[kind][name][0]
    else:
        elsewhere = [k for k in KINDS if k != kind and name in names(k)]
        hint = f" ({name!r} is a {SINGULAR[elsewhere[0]]} plugin)" if elsewhere else ""
        raise PluginError(unknown_name_message(kind, name, names(kind)) + hint)
    _check(kind, name, obj)
    _loaded[key] = obj
    return obj


def _check(kind: str, name: str, obj: Any) -> None:
    """The plugin's contract is checked when it is loaded, not when it first runs."""
    check_plugin(kind, obj, name=name, origin=origin(kind, name))


@contextlib.contextmanager
def scratch() -> Iterator[None]:
    """Undo, on exit, every change made to the registry inside: for tests that register fake plugins.

    On exit the entry-point cache, the loaded plugins and the plugins
    registered by name are what they were on entry, and drop-in files loaded
    inside may be loaded again. Inside, everything works as usual:
    :func:`register` adds fakes, :func:`refresh` rediscovers entry points (after
    a test puts a fake distribution on ``sys.path``), :func:`load_files` loads
    drop-ins. Not thread-safe: it is for tests, not for concurrent runs.
    """
    tables = (_entry_points, _dropins, _loaded)
    # two levels (kind -> name -> ...), so a name added to a kind's table inside is forgotten too
    saved = [{key: dict(v) if isinstance(v, dict) else v for key, v in table.items()} for table in tables]
    modules_then = set(sys.modules)
    try:
        yield
    finally:
        for table, then in zip(tables, saved):
            table.clear()
            table.update(then)
        for module in [m for m in sys.modules if m.startswith(_DROPIN_MODULE) and m not in modules_then]:
            del sys.modules[module]
