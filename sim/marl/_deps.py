"""The optional libraries of ``sim.marl``, imported only here; a missing one names the extra to install."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ValuesimError

_EXTRA = {"pettingzoo": "rl", "stable_baselines3": "rl", "supersuit": "rl", "torchrl": "rl", "tensordict": "rl",
          "ray": "ray", "tree": "ray", "lz4": "ray", "ormsgpack": "ray"}


def require(module: str) -> Any:
    """``import module``, or a one-line error naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA.get(top, "rl")
        raise ValuesimError(f"{top} is not installed ({exc}); install the {extra} extra: "
                            f"pip install 'valuesim[{extra}]'") from None
