"""What ``valuesim plugins list`` and ``valuesim plugins show`` print: plugins described from their code."""

from __future__ import annotations

import inspect
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .. import registry
from ..errors import PluginError
from .scaffold import KIND_WORDS

_BOUND_WORDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}


def kind_of(word: str) -> str:
    """The registry's kind for what a user typed: the plural or the singular (``policy``, ``llm_backend``)."""
    word = word.strip().lower().replace("-", "_")
    kind = KIND_WORDS.get(word, word)  # the words `valuesim new plugin` takes
    if kind not in registry.KINDS and f"{kind}s" in registry.KINDS:  # llm_backend, value_reader
        kind = f"{kind}s"
    return kind


def _kinds(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return registry.KINDS
    if kind_of(kind) not in registry.KINDS:
        raise PluginError(registry.unknown_name_message("plugin kind", kind, list(registry.KINDS), "kinds"))
    return (kind_of(kind),)


def listing(kind: str | None = None) -> list[dict[str, Any]]:
    """One row per plugin: kind, name, first line of its docstring, origin; a broken one carries ``error``."""
    rows = []
    for k in _kinds(kind):
        for name in registry.names(k):
            row = {"kind": k, "name": name, "origin": registry.origin(k, name), "summary": "", "error": None}
            try:
                row["summary"] = plain((inspect.getdoc(registry.get(k, name)) or "").split("\n")[0])
            except PluginError as exc:
                row["error"] = str(exc)
                row["summary"] = "(cannot be used: see the warning)"
            rows.append(row)
    return rows


LINE_WIDTH = 120
"""The longest line of ``valuesim plugins list``."""


def plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` -> x, :class:`~a.b.C` -> C, :func:`f` -> f, *x* -> x."""
    text = re.sub(r":[a-z]+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0)
                  else m.group(1), text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)


def list_line(row: dict[str, Any], width: int = LINE_WIDTH) -> str:
    """One plugin as a line of at most ``width`` characters: kind, name, summary (cut with '...'), origin."""
    origin = row["origin"]
    if origin.startswith("distribution "):  # 'distribution valuesim (plugins.policies:Honest)' -> valuesim
        origin = origin.removeprefix("distribution ").split(" (")[0]
    elif len(origin) > 30:
        origin = "..." + origin[-27:]
    head, tail = f"{row['kind']:<13} {row['name']:<22} ", f"  [{origin}]"
    room = max(width - len(head) - len(tail), 10)
    summary = row["summary"] if len(row["summary"]) <= room else row["summary"][:room - 3].rstrip() + "..."
    return head + summary + tail


def describe(name: str, kind: str | None = None) -> dict[str, Any]:
    """Documentation, parameters, origin and source file of the plugin called ``name``."""
    kinds = [k for k in _kinds(kind) if name in registry.names(k)]
    if not kinds:
        every = sorted({n for k in _kinds(kind) for n in registry.names(k)})
        raise PluginError(registry.unknown_name_message("plugin", name, every))
    if len(kinds) > 1:
        raise PluginError(f"{name!r} names plugins of several kinds ({', '.join(kinds)}); add --kind")
    obj = registry.get(kinds[0], name)
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        source = None
    return {"name": name, "kind": kinds[0], "origin": registry.origin(kinds[0], name), "file": source,
            "doc": inspect.getdoc(obj) or "", "parameters": parameters(obj.Params)}


def parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field of a ``Params`` model: name, type, default (or required), constraints, description."""
    out = []
    for field_name, field in model.model_fields.items():
        required = field.is_required()
        default = None if required else (field.default_factory() if field.default is PydanticUndefined
                                         else field.default)
        out.append({"name": field_name, "type": _type_name(field.annotation), "required": required,
                    "default": default if isinstance(default, (int, float, str, bool, type(None), list, dict))
                    else repr(default),
                    "constraints": _constraints(field.metadata), "description": field.description or ""})
    return out


def _type_name(annotation: Any) -> str:
    """``Annotated[float, Field(gt=0)] | None`` -> ``float (> 0) | None``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        limits = _constraints(list(args[1:]) + [m for a in args[1:] for m in getattr(a, "metadata", [])])
        return _type_name(args[0]) + (f" ({', '.join(limits)})" if limits else "")
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for item in metadata:
        for attr, word in _BOUND_WORDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{word} {value}")
    return out


def render(info: dict[str, Any]) -> str:
    """The human form of :func:`describe`."""
    lines = [f"{info['name']} ({info['kind']}) from {info['origin']}"]
    if info["file"]:
        lines.append(f"file: {info['file']}")
    lines += ["", info["doc"] or "(no documentation)", "", "parameters:" if info["parameters"] else
              "parameters: none"]
    for p in info["parameters"]:
        default = "required" if p["required"] else f"default {p['default']!r}"
        limits = f"; {', '.join(p['constraints'])}" if p["constraints"] else ""
        lines.append(f"  {p['name']}: {p['type']} ({default}{limits})")
        if p["description"]:
            lines.append(f"      {p['description']}")
    return "\n".join(lines)
