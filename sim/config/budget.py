"""What a scenario would cost to build, estimated before anything is allocated, and refused when it cannot fit.

A size typed one digit too long (``count: 10000000000``, ``--worlds 100000000``,
``pairs_per_agent: 1e9``) otherwise allocates until the machine runs out of
memory, or hangs in a network generator. :func:`check_budget` adds up the
large tensors a world needs (values, per-agent parameters, the network, the
pairwise draws of a step) from the scenario alone, compares the sum with the
memory this machine has free, and refuses with the numbers. The estimate is
deliberately rough and on the high side: it is there to catch sizes that
cannot work, not to plan a run that nearly fits.
"""

from __future__ import annotations

import math
import os

from ..errors import ScenarioError
from .scenario import Scenario

MAX_AGENTS = 100_000_000
"""A network generator is never asked for this many agents or more (the engine targets a million)."""
MAX_NETWORK_FILE = 4 * 2**30
"""The largest network file read: 100,000,000 edges of two agent numbers a line fit in about 2 GB."""

VALUE_BYTES = 36
"""Per agent, world and value dimension: float32 values, initial, expressed, a copy per step, and the float64
draws of the initial values."""
PARAM_BYTES = 12 * 4 + 3
"""Per agent (and world, when a parameter varies): four float parameters drawn in float64 and kept in float32,
and the zealot, active and own-policy flags."""
EDGE_BYTES = 64
"""Per undirected edge: the edge array and both directions of the CSR index (int64), and sorting them."""
NETWORKX_EDGE_BYTES = 600
"""Per edge of a graph built by networkx (dicts of dicts) before it becomes tensors."""
STORED_EDGE_BYTES = 16
"""Per undirected edge of each further per-world graph (``network.independent``): both directions in ``cols``
(int64). Graphs are built one at a time, so building costs count once."""
PAIR_BYTES = 24
"""Per pairwise interaction slot of a step and world: focal, partner and a uniform draw."""
NETWORKX_GENERATORS = ("barabasi_albert", "powerlaw_cluster")
GENERATOR_EDGE_LIMIT = 100_000_000
"""The first-party generators refuse more edges than this themselves (``plugins.networks.MAX_EDGES``)."""


def check_budget(scenario: Scenario, worlds: int, graphs: int = 1) -> None:
    """Refuse, with what it would need, a scenario of ``worlds`` worlds that cannot fit in this machine's memory.

    ``graphs``: how many graphs the worlds hold (one per distinct stream with ``network.independent``)."""
    spec = scenario.spec
    n, k = spec.num_agents, len(spec.values.dimensions)
    if n >= MAX_AGENTS:
        largest = max(range(len(spec.population)), key=lambda i: spec.population[i].count)
        raise scenario.error(f"population[{largest}].count", f"{n:,} agents in all, too many to build a network "
                                                             f"for (fewer than {MAX_AGENTS:,}); use fewer agents")
    edges = estimated_edges(scenario, n)
    if edges > GENERATOR_EDGE_LIMIT:
        edges = 0  # the generator refuses it itself, naming its parameters
    parts = {
        "values": worlds * n * k * VALUE_BYTES,
        "parameters": (worlds if _parameters_vary(spec) else 1) * n * PARAM_BYTES,
        "network": edges * (EDGE_BYTES + (NETWORKX_EDGE_BYTES if spec.network.generator in NETWORKX_GENERATORS
                                          else 0)) + (graphs - 1) * (edges * STORED_EDGE_BYTES + (n + 1) * 8),
        "pairwise draws": worlds * _pair_slots(spec, n) * PAIR_BYTES,
    }
    need, have = sum(parts.values()), available_memory()
    if have is not None and need > have:
        biggest = max(parts, key=parts.get)
        shape = f"{_count(worlds, 'world')} x {_count(n, 'agent')} x {_count(k, 'value')}"
        raise ScenarioError(
            f"{scenario.source.name}: this scenario would need about {size(need)} of memory ({shape}; most of "
            f"it for the {biggest}), more than the {size(have)} available; use fewer worlds or agents"
            f"{_hint(biggest)}")


def estimated_edges(scenario: Scenario, n: int) -> float:
    """About how many undirected edges the scenario's network generator will make (0 when it cannot tell)."""
    spec, params = scenario.spec.network, scenario.spec.network.params
    generator = spec.generator
    if generator == "complete":
        return n * (n - 1) / 2
    if generator == "erdos_renyi":
        p = params.get("p")
        return (p * n * (n - 1) / 2) if p is not None else (params.get("mean_degree") or 0) * n / 2
    if generator == "watts_strogatz":
        return (params.get("k") or 0) * n / 2
    if generator in NETWORKX_GENERATORS:
        return (params.get("m") or 0) * n
    if generator == "file" and params.get("path"):
        return network_file_size(scenario) / 4  # "1 2\n": the shortest line an edge can take
    return 0.0


def network_file_size(scenario: Scenario) -> int:
    """The size of the network file, refused before it is read when it is larger than any network valuesim holds."""
    path = scenario.base_dir / str(scenario.spec.network.params["path"])
    try:
        nbytes = path.stat().st_size
    except OSError:
        return 0  # a missing file is the generator's to report, with its path
    if nbytes > MAX_NETWORK_FILE:
        raise scenario.error("network.params.path", f"{path.name} is {size(nbytes)}, larger than any network "
                             f"valuesim holds (a network file may be {size(MAX_NETWORK_FILE)})")
    return nbytes


def _parameters_vary(spec) -> bool:
    return any(getattr(group, name).dist != "constant" for group in spec.population
               for name in ("confidence", "rate", "anchoring"))


def _pair_slots(spec, n: int) -> int:
    """Interaction slots one world draws per step: ``round(pairs_per_agent * N)`` for each pairwise dynamics."""
    slots = 0
    for ref in spec.dynamics:
        per_agent = ref.params.get("pairs_per_agent")
        if isinstance(per_agent, (int, float)) and math.isfinite(per_agent):
            slots += round(per_agent * n)
    return slots


def _count(number: int, word: str) -> str:
    return f"{number:,} {word}{'' if number == 1 else 's'}"


def _hint(biggest: str) -> str:
    return {"pairwise draws": ", or a smaller pairs_per_agent",
            "network": ", or a sparser network"}.get(biggest, "")


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (``MemAvailable``), or None where that cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size(nbytes: float) -> str:
    """``80.0 GB``: decimal units, as memory is sold and reported."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:,.1f} PB"
