"""Agent definitions in ``agents/``: value archetypes and LLM personas, read as data."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..plugin.kinds import unknown_name_message


def agents_dir(base_dir: Path) -> Path:
    """``agents/`` in the scenario's folder or the nearest one above it (the project layout), else in the cwd."""
    for base in (base_dir, *base_dir.parents):
        if (base / "agents").is_dir():
            return base / "agents"
    return Path.cwd() / "agents"


def read_agent(name: str, base_dir: Path) -> tuple[dict[str, Any], Path]:
    """The mapping in ``agents/<name>.yaml``; ValueError with the known names when there is none."""
    folder = agents_dir(base_dir)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ValueError(unknown_name_message("agent definition", name, known, f"in {folder}"))
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of fields")
    return data, path


def resolve_persona(spec: str | dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A persona by name, or ``{name: ..., field: override}`` merged over the named file (one level deep)."""
    overrides = {"name": spec} if isinstance(spec, str) else dict(spec)
    if "name" not in overrides:
        raise ValueError("a persona given as a mapping needs a 'name' (the file in agents/)")
    data, _ = read_agent(overrides["name"], base_dir)
    merged = copy.deepcopy(data)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
