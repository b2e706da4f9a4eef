"""valuesim-example: an example third-party plugin package for valuesim.

It provides one policy, ``bridge_builder`` (:class:`BridgeBuilder`), registered
through the entry point in this package's ``pyproject.toml``.
"""

from .bridge_builder import BridgeBuilder

__all__ = ["BridgeBuilder"]
