"""Agent definitions in ``agents/``: value archetypes and LLM personas, read as data.

A name is looked up in the ``agents/`` folder of the scenario's project first
(the scenario's folder or the nearest one above it that has one), then in the
definitions installed with the package (``sim/data/agents``: in a checkout a
link to the top-level ``agents/``, in a wheel a copy), so a scenario copied
alone anywhere still finds ``neutral_assistant``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..plugin.kinds import unknown_name_message
from .yamlsource import load_yaml, read_text


# The definitions shipped with the package (package-data in pyproject.toml).
INSTALLED_AGENTS = Path(__file__).resolve().parent.parent / "data" / "agents"


def agents_dirs(base_dir: Path) -> list[Path]:
    """Where agent names are looked up, in order: the scenario's project ``agents/``, then the installed ones."""
    project = next((b / "agents" for b in (base_dir, *base_dir.parents) if (b / "agents").is_dir()), None)
    folders = [project] if project is not None else []
    if INSTALLED_AGENTS.is_dir() and not any(f.resolve() == INSTALLED_AGENTS.resolve() for f in folders):
        folders.append(INSTALLED_AGENTS)
    return folders


def read_agent(name: str, base_dir: Path) -> tuple[dict[str, Any], Path]:
    """The mapping in ``agents/<name>.yaml``; ValueError with the known names when there is none."""
    folders = agents_dirs(base_dir)
    path = next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)
    if path is None:
        known = sorted({p.stem for f in folders for p in f.glob("*.yaml")})
        where = "in " + " or ".join(map(str, folders)) if folders else "no agents/ folder found"
        raise ValueError(unknown_name_message("agent definition", name, known, where))
    data = load_yaml(read_text(path, "agent definition"), str(path)) or {}
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
