"""valuesim: how human values change among people and AI systems.

The public API is as small as the CLI:

- :func:`load_scenario` reads and validates a scenario file;
- :func:`run` runs it and writes a run log;
- :func:`open_run` reads a run log back (tables as pandas or Arrow).
"""

import os

# torch's OpenMP threads and numba's spin while idle and starve each other on a
# small machine (a 10k-agent step went from 0.4 ms to 20 ms of torch work after a
# numba call). Passive waiting removes that; it only takes effect when set before
# torch first loads, and a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numba's workqueue threads sleep when idle; its OpenMP layer would spin the same way.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

from .errors import PluginError, RunDirError, RunFailed, ScenarioError, ValuesimError
from .config.scenario import Scenario, load_scenario, scenario_from_dict

__version__ = "0.1.0"

__all__ = [
    "Scenario", "load_scenario", "scenario_from_dict", "build", "run", "resume", "open_run",
    "ValuesimError", "ScenarioError", "PluginError", "RunDirError", "RunFailed", "__version__",
]


def __getattr__(name: str):
    # The runner pulls in torch and pyarrow; import it only when asked for.
    if name in ("run", "resume"):
        from .runs import runner
        return getattr(runner, name)
    if name == "build":
        from .config.build import build_simulation
        return build_simulation
    if name == "open_run":
        from .runs.reading import open_run
        return open_run
    raise AttributeError(name)
