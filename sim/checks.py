"""``sim.checks`` is ``sim.plugin.checks`` under its public name: the checkers plugin authors call."""

import sys

from .plugin import checks as _checks

sys.modules[__name__] = _checks
