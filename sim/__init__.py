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


def _keep_large_blocks(environ) -> bool:
    """Ask glibc's malloc to serve blocks up to 1 GiB from its heap and keep up to 1 GiB freed there.

    By default every block over 32 MiB is a fresh mmap, returned to the system when freed, so each step's
    new [B, N, K] tensor page-faults all of its memory in again: at N = 10^6, K = 10 that made a Deffuant
    step ~25% slower and a 3,200-world Shapley batch spend a fifth of its time in the kernel. Kept, the
    memory is reused (peak RSS +0.14 GB there). A user's own ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` wins; other C libraries are left alone.
    """
    if "MALLOC_MMAP_THRESHOLD_" in environ or "MALLOC_TRIM_THRESHOLD_" in environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl and macOS have other allocators  # noqa: B018
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


_keep_large_blocks(os.environ)


def _place_numba_cache(environ, kernels_dir) -> None:
    """Point ``NUMBA_CACHE_DIR`` at a user cache when numba could not write its ``cache=True`` kernels
    beside their source (``__pycache__`` of an installed, read-only copy); a user's own setting wins."""
    from pathlib import Path

    if environ.get("NUMBA_CACHE_DIR") or kernels_dir is None:
        return
    kernels_dir = Path(kernels_dir)
    pycache = kernels_dir / "__pycache__"
    where = pycache if pycache.is_dir() else kernels_dir
    if os.access(where, os.W_OK | os.X_OK):
        return
    import tempfile

    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for candidate in (base / "valuesim" / "numba", Path(tempfile.gettempdir()) / f"valuesim-numba-{os.getuid()}"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK | os.X_OK):
            environ["NUMBA_CACHE_DIR"] = str(candidate)
            return


def _kernels_dir():
    """The folder of the numba kernels (``plugins/dynamics``), found without importing anything."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("plugins")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return os.path.join(locations[0], "dynamics") if locations else None


_place_numba_cache(os.environ, _kernels_dir())

from .errors import PluginError, RunDirError, RunFailed, ScenarioError, ValuesimError

__version__ = "0.1.0"

__all__ = [
    "Scenario", "load_scenario", "scenario_from_dict", "build", "run", "resume", "open_run",
    "calibrate", "shapley", "ValuesimError", "ScenarioError", "PluginError", "RunDirError", "RunFailed", "__version__",
]


def __getattr__(name: str):
    # The scenario code (through the plugin checks) and the runner pull in torch and pyarrow; import
    # them only when asked for, so that `import sim` (and `valuesim --help`) stays fast.
    if name in ("Scenario", "load_scenario", "scenario_from_dict"):
        from .config import scenario
        return getattr(scenario, name)
    if name in ("run", "resume"):
        from .runs import runner
        return getattr(runner, name)
    if name == "build":
        from .config.build import build_simulation
        return build_simulation
    if name == "calibrate":  # the package: sim.calibrate.fit(...), as `valuesim calibrate`
        import importlib

        return importlib.import_module(".calibrate", __name__)
    if name == "shapley":  # the package, callable: sim.shapley(...) as `valuesim shapley`; sim.shapley.estimate(...)
        import importlib

        return importlib.import_module(".shapley", __name__)
    if name == "mesa":  # sim.mesa.ValuesimModel: a scenario as a Mesa 3 model (the mesa extra)
        import importlib

        return importlib.import_module(".analysis.mesa", __name__)
    if name == "open_run":
        from .runs.reading import open_run
        return open_run
    raise AttributeError(name)
