"""Language models for the decision protocols: a persona resolved from ``agents/``, its backend (through the
run's response cache) and its value reader, as the ``llm`` policy builds them for a population group.

A protocol holds one :class:`Speaker` per persona it speaks through (a service, like the policy's backend, not
run state) and sends one batch per turn for every world and client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.config.persona import resolve_persona
from sim.config.scenario import instantiate
from sim.config.schema import PluginRef
from sim.llm import Sampling, can_choose
from sim.llm.cache import with_run_cache

from ..llm.policy import Persona, _describe, _system_prompt


@dataclass
class Speaker:
    """A persona with its backend and value reader, ready to answer batches."""

    persona: Persona
    backend: Any
    reader: Any

    def system(self, space: str, goal: dict[str, float] | None, tactics: list[str] | None = None,
               profile: dict[str, float] | None = None) -> str:
        """The persona's system prompt; ``profile`` speaks from other values than its own (a client's)."""
        persona = self.persona
        if tactics is not None:
            persona = persona.model_copy(update={"tactics": list(tactics)})
        return _system_prompt(persona, persona.values[space] if profile is None else profile, goal)

    @property
    def sampling(self) -> Sampling:
        s = self.persona.sampling
        return Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)


def speaker(spec: str | dict[str, Any], backend: str | dict[str, Any] | None, world, *,
            needs_choice: bool = False) -> Speaker:
    """The persona ``spec`` (a name in ``agents/`` or ``{name: ..., field: override}``), its backend (``backend``
    overrides the persona's) behind the run's cache, and its reader. ValueError when it cannot serve ``world``."""
    base_dir = Path(world.context.get("base_dir") or Path.cwd())
    data = resolve_persona(spec, base_dir)
    if backend is not None:
        data["backend"] = backend
    data["backend"] = PluginRef.model_validate(data.get("backend", "scripted")).model_dump()
    data["reader"] = PluginRef.model_validate(data.get("reader", "auto")).model_dump()
    try:
        persona = Persona.model_validate(data)
    except Exception as exc:  # pydantic's message, on one line
        raise ValueError(f"persona {data.get('name')!r}: {' '.join(str(exc).split())}") from None
    if world.space.name not in persona.values:
        raise ValueError(f"persona {persona.name!r} has no values in value space {world.space.name!r} "
                         f"(it has: {', '.join(persona.values)})")
    model = with_run_cache(instantiate("llm_backends", persona.backend), world.context)
    if needs_choice and not can_choose(model):
        raise ValueError(f"persona {persona.name!r}: backend {persona.backend.name!r} has no choice call")
    return Speaker(persona=persona, backend=model, reader=instantiate("value_readers", persona.reader))


def describe(values: dict[str, float], top: int | None = None) -> str:
    """'benevolence (0.80), universalism (0.75), ...', highest first (as the llm policy describes values)."""
    return _describe(values, top)
