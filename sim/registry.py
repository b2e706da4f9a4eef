"""``sim.registry`` is ``sim.plugin.registry`` under its public name (``@sim.registry.register``)."""

import sys

from .plugin import registry as _registry

sys.modules[__name__] = _registry
