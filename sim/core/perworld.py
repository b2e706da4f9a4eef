"""Per-world plugin parameters: a protocol's numbers held as ``[B]`` tensors, one value per world.

A sweep or a calibration swarm over a protocol's parameters must be one batch (each point or candidate a
world), as it is for per-agent parameters (``Simulation.set_params``). A protocol opts in by naming the
numeric fields of its ``Params`` that may differ between worlds::

    class Advice:
        per_world: ClassVar[tuple[str, ...]] = ("tactic_gain", "susceptibility", ...)

A named field is a number, or a mapping of numbers (``susceptibility: {financial: 0.4, emotional: 0.5}``,
whose entries vary one by one: ``susceptibility.financial``). After ``Simulation.vary_protocol`` the
protocol's ``params`` hold, for each varied field, a ``[B]`` float64 tensor (a mapping: a mapping of
them) in place of the number; the protocol reads every such field through :func:`per_world`, which
gives ``[B]`` whichever it holds, so one code path serves a single run and a varied batch and world b
computes exactly what the single-world run with world b's values computes (a number and a float64
tensor element give the same float64 arithmetic). A transcendental applied to a ``[B, ...]`` tensor goes
through :func:`per_row`, so that it too rounds in world b as it does in a batch of world b alone.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import ValidationError


def per_world(value: Any, world) -> torch.Tensor:
    """A per-world parameter as ``[B]`` float64 on the world's device: a number broadcast, a tensor as held."""
    if torch.is_tensor(value):
        return value.to(device=world.device, dtype=torch.float64)
    return torch.full((world.b,), float(value), dtype=torch.float64, device=world.device)


def per_row(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (an elementwise transcendental: sigmoid, logit, log) applied world by world.

    torch's CPU kernels run vectorised over most of a tensor and scalar over its tail, and the two paths
    may differ in the last bit, so where an element falls depends on how many worlds are in the batch.
    One row per world gives every world the layout it has alone: world b stays its single-world run.
    """
    return torch.stack([fn(row) for row in x.reshape(x.shape[0], -1)]).reshape(x.shape)


def varied(plugin: Any, label: str, overrides: list[dict[str, Any]], world) -> Any:
    """A new instance of ``plugin``'s class whose varied fields hold one value per world.

    ``overrides[b]`` maps dotted keys (``tactic_gain``, ``susceptibility.financial``) to world b's value;
    a key left out keeps the plugin's own. Every world's parameters are validated by the class's
    ``Params`` (so ranges read as everywhere else); ValueError names the world and the field.
    """
    cls = type(plugin)
    allowed = tuple(getattr(cls, "per_world", ()))
    if len(overrides) != world.b:
        raise ValueError(f"vary_protocol needs one parameter set per world ({world.b}), got {len(overrides)}")
    base = plugin.params.model_dump()
    keys = sorted({key for override in overrides for key in override})
    for key in keys:
        if key.split(".")[0] not in allowed:
            raise ValueError(f"{label}: {key} cannot vary per world (per-world parameters: "
                             f"{', '.join(allowed) or 'none'})")
        _get(base, key, label)  # a key that does not exist is named here, not deep in pydantic
    worlds = []
    for b, override in enumerate(overrides):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            _set(merged, key, value)
        try:
            worlds.append(cls.Params.model_validate(merged).model_dump())
        except ValidationError as exc:
            problem = exc.errors()[0]
            field = ".".join(map(str, problem["loc"]))
            raise ValueError(f"{label} parameters of world {b}: {field}: {problem['msg']}") from None
    update: dict[str, Any] = {}
    for key in keys:
        column = torch.tensor([float(_get(w, key, label)) for w in worlds], dtype=torch.float64, device=world.device)
        field, _, entry = key.partition(".")
        if entry:
            held = update.setdefault(field, dict(getattr(plugin.params, field)))
            held[entry] = column
        else:
            update[field] = column
    return cls(plugin.params.model_copy(update=update))


def _get(data: dict, key: str, label: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"{label}: no parameter {key!r}")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ValueError(f"{label}: {key} is not a number (it is {node!r}), so it cannot vary per world")
    return node


def _set(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
