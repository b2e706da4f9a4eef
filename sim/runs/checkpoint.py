"""Checkpoint files that hold data only: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``state.safetensors`` (every tensor of the
snapshot, by a generated name) and ``state.json`` (the snapshot's structure,
with each tensor replaced by a reference to its name). Neither format can run
code when read, unlike a pickle (``torch.save``): a run directory someone
shares is safe to resume.

The serializer knows nothing of the snapshot's keys (the engine decides
them): it stores any nesting of dicts with string keys, lists, tuples,
tensors, ints, floats, strings, bools and ``None``, and gives it back equal,
tensors on the CPU. JSON tags mark what JSON has no type for:
``{"$tensor": name}``, ``{"$tuple": [...]}``, and ``{"$dict": {...}}`` for a
dict that has a key starting with ``$`` (so no real key is mistaken for a
tag). Anything that does not decode that way is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..errors import RunDirError

TENSORS = "state.safetensors"
STRUCTURE = "state.json"
FORMAT = "valuesim-checkpoint/1"
LEGACY_PICKLE = "state.pt"

Write = Callable[[Path, bytes], None]


def save_checkpoint(folder: Path, snapshot: dict[str, Any], write: Write) -> None:
    """Write ``snapshot`` into ``folder`` (which exists) with ``write(path, bytes)``, an atomic writer."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(snapshot, tensors, "snapshot")
    # clone: safetensors refuses tensors that share memory (a view of another one)
    blob = save_tensors({k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()})
    write(folder / TENSORS, blob)
    write(folder / STRUCTURE, (json.dumps({"format": FORMAT, "snapshot": tree}) + "\n").encode())


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """The snapshot saved in ``folder``; a :class:`RunDirError` of one line for anything else there."""
    if not (folder / STRUCTURE).is_file() and (folder / LEGACY_PICKLE).is_file():
        raise RunDirError(f"{folder / LEGACY_PICKLE}: a pickled checkpoint (older valuesim); it is not loaded, "
                          "since unpickling can run code; run the scenario again")
    try:
        document = json.loads((folder / STRUCTURE).read_bytes())
        tensors = load_tensors((folder / TENSORS).read_bytes())
    except FileNotFoundError as exc:
        raise RunDirError(f"{exc.filename}: the checkpoint is incomplete (the file is missing)") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{folder / STRUCTURE}: not a valuesim checkpoint ({_short(exc)})") from None
    except (SafetensorError, OSError) as exc:
        raise RunDirError(f"{folder / TENSORS}: not a readable safetensors file ({_short(exc)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or "snapshot" not in document:
        raise RunDirError(f"{folder / STRUCTURE}: not a valuesim checkpoint (format {FORMAT!r} expected)")
    try:
        snapshot = _decode(document["snapshot"], tensors)
    except _Bad as exc:
        raise RunDirError(f"{folder / STRUCTURE}: {exc}") from None
    if not isinstance(snapshot, dict):
        raise RunDirError(f"{folder / STRUCTURE}: the snapshot is not a mapping")
    return snapshot


class _Bad(Exception):
    """A structure that does not decode."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj
        return {"$tensor": name}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"$tuple": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"checkpoint: {where} has a key {key!r} that is not a string")
        body = {key: _encode(v, tensors, f"{where}[{key!r}]") for key, v in obj.items()}
        return {"$dict": body} if any(key.startswith("$") for key in body) else body
    raise TypeError(f"checkpoint: {where} is a {type(obj).__name__}; a snapshot holds only tensors, "
                    "numbers, strings, bools, None, lists, tuples and dicts")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise _Bad(f"unexpected {type(node).__name__} in the structure")
    tags = [key for key in node if key.startswith("$")]
    if not tags:
        return {key: _decode(v, tensors) for key, v in node.items()}
    if len(node) != 1:
        raise _Bad(f"a tagged entry has other keys ({', '.join(sorted(node))})")
    tag, body = next(iter(node.items()))
    if tag == "$tensor":
        if not isinstance(body, str) or body not in tensors:
            raise _Bad(f"refers to tensor {body!r}, which state.safetensors does not hold")
        return tensors[body]
    if tag == "$tuple" and isinstance(body, list):
        return tuple(_decode(v, tensors) for v in body)
    if tag == "$dict" and isinstance(body, dict):
        return {key: _decode(v, tensors) for key, v in body.items()}
    raise _Bad(f"unknown entry {tag!r}")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160] or type(exc).__name__
