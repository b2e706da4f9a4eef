"""Side-by-side benchmark of opinion dynamics: valuesim against NDlib and Mesa 3.

This is a benchmark, not a test: it measures and prints, and never fails on a
figure. All tools run in this one process, on the same graph and the same
initial opinions.

What is measured
----------------
Graph. One Erdos-Renyi G(n, p) graph per N with mean degree 10
(p = 10 / (N - 1)), drawn with a seeded numpy generator. NDlib crashes on
isolated nodes, so every isolated node is given one edge to a uniformly drawn
other node; the repaired graph is the one all three tools use.

Deffuant-Weisbuch (DW). One *iteration* is N pair interactions: a focal agent
drawn uniformly at random meets a neighbour drawn uniformly at random; if
|x_i - x_j| < epsilon both move by mu towards each other. K = 1,
epsilon = 0.2, mu = 0.5 (NDlib's ``AlgorithmicBiasModel`` with gamma = 0 is
DW with mu fixed at 0.5, so mu = 0.5 everywhere). Throughput = pair
interactions per second.

Hegselmann-Krause (HK). One *iteration* is one synchronous step: every agent
moves to the mean of the neighbours (and itself) within epsilon = 0.2.
Throughput = agent updates per second (N per step). NDlib's ``HKModel`` is not
a synchronous step: its iteration draws N random nodes and computes each one's
average (of the neighbours strictly within epsilon, itself excluded) but writes
back only the last one. Its figure is therefore N computed node updates per
iteration divided by the time, reported as such and flagged in the output.

Mesa. A plain Mesa 3 model written the way a Mesa user would: a
``mesa.Model`` seeded through ``super().__init__(seed=...)``, one
``FixedAgent`` per node holding its opinion, a ``mesa.discrete_space.Network``
over the shared networkx graph (as Mesa's own virus_on_network example does),
neighbours through ``cell.neighborhood`` and the model's ``self.random``. DW
draws N random focal agents per step; HK computes every agent's next opinion
with ``self.agents.do("compute")`` and then applies them with
``self.agents.do("advance")``.

valuesim. ``sim.core.engine.Simulation`` with one world on the CPU; one step of
``deffuant`` is N pair interactions, one step of ``hegselmann_krause`` is one
synchronous step. At N = 10^6 it runs alone with K = 10 (``schwartz10``):
DW pair interactions per second, the time of one HK step, and the process's
peak RSS for each. That part runs first, before any peer has allocated
anything; the peak is reset (Linux ``/proc/self/clear_refs``) after the graph
is drawn, so it covers the interpreter, torch, the edge array and valuesim.

Protocol. For each cell (model, N, tool): build (timed, not counted); a short
probe estimates the time of one iteration (for a peer, the median of a few
timed chunks of focal draws, i.e. fractions of an iteration; for valuesim, a
step after an untimed first one that pays for JIT compilation); a repetition is enough iterations for about
``--rep-seconds``; one warm-up repetition (when it takes under 5 s), then the
median of ``--reps`` repetitions (5; a slow peer gets down to 3). A peer whose
estimated time for the measured iterations still exceeds ``--limit`` seconds
(60) is printed as "skipped (>60 s)".

Seeds. Everything is seeded from ``--seed``: the graph, the initial opinions,
Mesa's ``Model(seed=...)``, valuesim's scenario seed. NDlib draws from the
*global* ``random`` and ``np.random`` (and ``DiffusionModel.__init__`` calls
``np.random.seed``, with None for ``HKModel``, i.e. fresh OS entropy); the
benchmark gives each NDlib model its own seeded copy of those global states
and swaps it in and out around every NDlib call, so nothing outside NDlib sees
them changed.

Goals (from the issue). N = 10^5, K = 1 DW: valuesim >= 100x NDlib and
>= 30x Mesa. N = 10^6, K = 10 DW: >= 5e6 pair interactions/s (stretch 1e7),
peak memory < 2 GB. N = 10^6 HK step < 1 s.

Usage::

    python benchmarks/dynamics.py
    python benchmarks/dynamics.py --sizes 1000,10000 --big 0
    python benchmarks/dynamics.py --skip-peers --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import random
import resource
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

MEAN_DEGREE = 10
CONFIDENCE = 0.2  # epsilon
RATE = 0.5  # mu; NDlib's AlgorithmicBiasModel fixes it at 0.5
MODELS = ("deffuant", "hk")
UNIT = {"deffuant": "pair interactions/s", "hk": "agent updates/s"}
NDLIB_HK_NOTE = "computed node updates/s; writes back 1 of N per iteration (not a synchronous step)"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# sim first, before anything loads torch: importing sim sets OMP_WAIT_POLICY=PASSIVE (and numba's
# workqueue layer), which OpenMP reads only when torch first loads it. Imported after torch, torch's
# idle threads spin after every parallel region and starve numba's on two cores: the step at N = 10^4
# ran 11x slower, at N = 10^6 2x (benchmarks/README.md).
import sim  # noqa: E402,F401


# ---------------------------------------------------------------- the graph


def erdos_renyi_edges(n: int, mean_degree: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A G(n, p) graph, p = mean_degree / (n - 1), as sorted edges [E, 2] int64 with u < v.

    Each of the n(n-1)/2 pairs is an edge with probability p: the gaps between
    successive edges in the row-major upper triangle are geometric(p)
    (Batagelj and Brandes 2005), so the cost is O(E). Every isolated node then
    gets one edge to a uniformly drawn other node. Returns (edges, repaired).
    """
    p = mean_degree / (n - 1)
    pairs = n * (n - 1) // 2
    expected = pairs * p
    chunks, last = [], -1
    while last < pairs:
        gaps = rng.geometric(p, int(expected + 6 * expected**0.5) + 64)
        positions = last + np.cumsum(gaps)
        chunks.append(positions)
        last = int(positions[-1])
    linear = np.concatenate(chunks)
    linear = linear[linear < pairs]
    u, v = _upper_triangle_pair(n, linear)
    degree = np.bincount(u, minlength=n) + np.bincount(v, minlength=n)
    isolated = np.flatnonzero(degree == 0)
    other = rng.integers(0, n - 1, isolated.size)
    other += other >= isolated  # uniform over the nodes other than itself
    keys = u * n + v  # sorted: row-major order
    # A repair edge touches an isolated node, so it is not in `keys`; two isolated nodes may pick each other.
    repair = np.unique(np.minimum(isolated, other) * n + np.maximum(isolated, other))
    keys = np.insert(keys, np.searchsorted(keys, repair), repair)
    return np.stack([keys // n, keys % n], axis=1), int(isolated.size)


def _upper_triangle_pair(n: int, linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v), u < v, of row-major positions in the strict upper triangle of an n x n matrix."""
    def row_start(u):
        return u * n - u * (u + 1) // 2

    b = 2 * n - 1
    u = ((b - np.sqrt(b * b - 8.0 * linear)) // 2).astype(np.int64)
    u -= row_start(u) > linear  # correct float rounding at row boundaries
    u += row_start(u + 1) <= linear
    return u, linear - row_start(u) + u + 1


def networkx_graph(n: int, edges: np.ndarray):
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(range(n))  # node order 0..n-1, the same rows as valuesim's agents
    graph.add_edges_from(edges.tolist())
    return graph


# ---------------------------------------------------------------- the cases


class Case(Protocol):
    """One tool running one model at one size."""

    def probe(self) -> float:
        """Run a little of the model and return the estimated seconds of one iteration."""

    def run(self, iterations: int) -> None:
        """Run whole iterations."""


def probe_by_draws(run_draws: Callable[[int], None], n: int, chunk_seconds: float = 0.02, chunks: int = 5) -> float:
    """Estimate the seconds of n focal draws from the median of a few timed chunks of draws.

    The chunk grows (64, 256, ...) until it takes chunk_seconds; the median
    over chunks keeps one garbage-collector pause of a big Python heap (Mesa
    at N = 10^5 has ~0.6 s ones) from passing for the cost of every draw.
    """
    def timed(draws: int) -> float:
        start = time.perf_counter()
        run_draws(draws)
        return time.perf_counter() - start

    draws = min(64, n)
    while (elapsed := timed(draws)) < chunk_seconds and draws < n:
        draws = min(n, draws * 4)
    times = [elapsed] + [timed(draws) for _ in range(chunks - 1)]
    return statistics.median(times) * n / draws


class ValuesimCase:
    """valuesim's Simulation, one world on the CPU; one step = one iteration."""

    def __init__(self, model: str, n: int, k: int, edges: np.ndarray, opinions: np.ndarray | None, seed: int):
        from sim import build
        from sim.config.scenario import scenario_from_dict

        scenario = scenario_from_dict({
            "name": f"bench_{model}", "seed": seed, "steps": 1,
            "values": ["opinion"] if k == 1 else "schwartz10",
            "network": {"generator": "file", "params": {"path": "/dev/null"}},  # overridden by `network=edges`
            "population": [{"name": "people", "count": n, "init": {"dist": "uniform", "low": 0, "high": 1},
                            "confidence": CONFIDENCE, **({"rate": RATE} if model == "deffuant" else {})}],
            "dynamics": [{"deffuant": {}} if model == "deffuant" else {"hegselmann_krause": {}}],
            "metrics": [],
        })
        self.simulation = build(scenario, worlds=1, device="cpu", network=edges)
        values = self.simulation.state.values
        if opinions is not None and tuple(values.shape) == (1, n, 1):  # start from the peers' opinions
            import torch

            values[0, :, 0] = torch.from_numpy(opinions).to(values.dtype)

    def probe(self) -> float:
        self.simulation.advance(1)  # the first step pays for JIT compilation: not timed
        steps, start = 0, time.perf_counter()
        while steps < 1 or (time.perf_counter() - start < 0.05 and steps < 1000):
            self.simulation.advance(1)
            steps += 1
        return (time.perf_counter() - start) / steps

    def run(self, iterations: int) -> None:
        self.simulation.advance(iterations)


class GlobalRandomStreams:
    """A private seeded copy of the global `random` and `np.random` states, swapped in around NDlib calls."""

    def __init__(self, seed: int):
        outer = self._save()
        random.seed(seed)
        np.random.seed(seed)
        self._own = self._save()
        self._restore(outer)

    @staticmethod
    def _save():
        return random.getstate(), np.random.get_state()

    @staticmethod
    def _restore(states) -> None:
        random.setstate(states[0])
        np.random.set_state(states[1])

    @contextlib.contextmanager
    def active(self):
        outer = self._save()
        self._restore(self._own)
        try:
            yield
        finally:
            self._own = self._save()
            self._restore(outer)


class NdlibCase:
    """NDlib 6.0.1: AlgorithmicBiasModel(gamma=0) for DW, HKModel for HK."""

    def __init__(self, model: str, graph, opinions: np.ndarray, seed: int):
        import ndlib.models.ModelConfig as mc
        import ndlib.models.opinions as op

        self.n = graph.number_of_nodes()
        self.streams = GlobalRandomStreams(seed)
        config = mc.Configuration()
        config.add_model_parameter("epsilon", CONFIDENCE)
        with self.streams.active():
            if model == "deffuant":
                config.add_model_parameter("gamma", 0)
                self.model = op.AlgorithmicBiasModel(graph, seed=seed)  # seeds the global np.random itself
            else:
                self.model = op.HKModel(graph)  # calls np.random.seed(None): reseed after it
                np.random.seed(seed)
            self.model.set_initial_status(config)
            self.model.status = dict(enumerate(opinions.tolist()))  # the shared initial opinions
            self.model.initial_status = self.model.status.copy()
            self.model.iteration(node_status=False)  # iteration 0 only reports the initial state

    def _draws(self, count: int) -> None:
        # Both models loop `for i in range(graph.number_of_nodes())` once per iteration; shadowing that
        # method runs their own loop for `count` draws (HKModel then draws among the first `count` nodes,
        # at the same per-draw cost: it rebuilds list(graph.nodes) on every draw).
        graph = self.model.graph
        graph.number_of_nodes = lambda: count
        try:
            with self.streams.active():
                self.model.iteration(node_status=False)
        finally:
            del graph.number_of_nodes

    def probe(self) -> float:
        return probe_by_draws(self._draws, self.n)

    def run(self, iterations: int) -> None:
        with self.streams.active():
            for _ in range(iterations):
                self.model.iteration(node_status=False)


def mesa_classes():
    """The Mesa 3 model, written as a Mesa user would write it (defined lazily: Mesa is optional)."""
    import mesa
    from mesa.discrete_space import FixedAgent, Network

    class OpinionAgent(FixedAgent):
        def __init__(self, model, cell, opinion):
            super().__init__(model)
            self.cell = cell
            self.opinion = opinion
            self.next_opinion = opinion

        def interact(self):
            """Deffuant: meet a random neighbour; both move by mu if within epsilon."""
            partner = self.cell.neighborhood.select_random_agent()
            if abs(self.opinion - partner.opinion) < self.model.confidence:
                mine = self.opinion
                self.opinion += self.model.rate * (partner.opinion - mine)
                partner.opinion += self.model.rate * (mine - partner.opinion)

        def compute(self):
            """Hegselmann-Krause: the mean of own and neighbours' opinions within epsilon."""
            total, count = self.opinion, 1
            for other in self.cell.neighborhood.agents:
                if abs(other.opinion - self.opinion) <= self.model.confidence:
                    total += other.opinion
                    count += 1
            self.next_opinion = total / count

        def advance(self):
            self.opinion = self.next_opinion

    class OpinionModel(mesa.Model):
        def __init__(self, graph, opinions, dynamics, seed):
            super().__init__(seed=seed)
            self.confidence, self.rate, self.dynamics = CONFIDENCE, RATE, dynamics
            self.grid = Network(graph, capacity=1, random=self.random)
            OpinionAgent.create_agents(self, len(opinions), list(self.grid.all_cells), list(opinions))
            self.agent_list = list(self.agents)

        def interactions(self, count):
            for _ in range(count):
                self.random.choice(self.agent_list).interact()

        def step(self):
            if self.dynamics == "deffuant":
                self.interactions(len(self.agent_list))
            else:
                self.agents.do("compute")
                self.agents.do("advance")

    return OpinionModel


class MesaCase:
    def __init__(self, model: str, graph, opinions: np.ndarray, seed: int):
        self.model = mesa_classes()(graph, opinions.tolist(), model, seed)
        self.n = len(opinions)
        self.dynamics = model

    def _draws(self, count: int) -> None:
        if self.dynamics == "deffuant":
            self.model.interactions(count)
        else:  # computing without advancing leaves the opinions untouched
            for agent in self.model.random.sample(self.model.agent_list, count):
                agent.compute()

    def probe(self) -> float:
        return probe_by_draws(self._draws, self.n)

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            self.model.step()


# ---------------------------------------------------------------- measuring


@dataclass
class Result:
    model: str
    n: int
    k: int
    tool: str
    rate: float | None = None  # updates per second (see UNIT)
    seconds_per_iteration: float | None = None
    iterations_per_rep: int = 0
    reps: int = 0
    setup_seconds: float = 0.0
    probe_seconds_per_iteration: float | None = None
    skipped: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


_REPORTED_FAILURES: set[str] = set()  # tools whose traceback was already printed


def measure(result: Result, build: Callable[[], Case], args) -> Result:
    """Build, probe, warm up and time a case, filling `result` in.

    A tool that is missing or raises is recorded as such (its first traceback
    goes to stderr): a broken tool should not cost the other cells their figures.
    """
    try:
        _measure(result, build, args)
    except Exception as error:
        if result.tool not in _REPORTED_FAILURES:
            _REPORTED_FAILURES.add(result.tool)
            traceback.print_exc()
        result.rate = result.seconds_per_iteration = None
        result.skipped = "unavailable" if isinstance(error, ImportError) else "failed"
        result.note = f"{type(error).__name__}: {error}".splitlines()[0][:100]
        if isinstance(error, ImportError):
            result.note += " (install the peers: pip install -e '.[bench]')"
    return result


def _measure(result: Result, build: Callable[[], Case], args) -> None:
    start = time.perf_counter()
    case = build()
    result.setup_seconds = time.perf_counter() - start
    gc.collect()  # the build's garbage is not the model's cost
    estimate = max(case.probe(), 1e-9)
    result.probe_seconds_per_iteration = estimate
    iterations = max(1, round(args.rep_seconds / estimate))
    reps = args.reps
    while reps > min(args.reps, 3) and reps * iterations * estimate > args.limit:
        reps -= 1  # a slow peer gets fewer repetitions (at least 3) before it is skipped
    if reps * iterations * estimate > args.limit:
        result.skipped = f"skipped (>{args.limit:g} s)"
        result.note = f"probe: ~{estimate:.1f} s/iteration (~{result.n / estimate:,.0f}/s); " + result.note
        return
    if iterations * estimate < 5.0:
        case.run(iterations)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        case.run(iterations)
        times.append(time.perf_counter() - start)
    result.seconds_per_iteration = statistics.median(times) / iterations
    result.rate = result.n / result.seconds_per_iteration
    result.iterations_per_rep, result.reps = iterations, reps


def progress(result: Result) -> None:
    figure = result.skipped or f"{result.rate:,.0f} {UNIT[result.model]}"
    print(f"  {result.model:8} N={result.n:<8} K={result.k:<2} {result.tool:8} {figure}", file=sys.stderr, flush=True)


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: VmHWM); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak RSS: VmHWM where /proc has it, else getrusage's ru_maxrss."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_big(n: int, args) -> tuple[list[Result], dict]:
    """valuesim alone at N = n, K = 10: DW throughput, one HK step, the peak RSS of each."""
    edges, repaired = erdos_renyi_edges(n, MEAN_DEGREE, np.random.default_rng([args.seed, n]))
    info = {"n": n, "undirected_edges": len(edges), "repaired_isolated": repaired}
    results = []
    for model in MODELS:
        gc.collect()
        reset = reset_peak_rss()
        result = Result(model, n, 10, "valuesim")
        measure(result, lambda: ValuesimCase(model, n, 10, edges, None, args.seed), args)
        result.extra["peak_rss_bytes"] = peak_rss_bytes()
        result.extra["peak_rss_scope"] = ("this model: build and run (peak reset after the graph was drawn)" if reset
                                          else "the whole process so far, graph generation included")
        results.append(result)
        progress(result)
    return results, info


def run_size(n: int, args) -> tuple[list[Result], dict]:
    """All tools, both models, K = 1, on one graph of n nodes."""
    rng = np.random.default_rng([args.seed, n])
    edges, repaired = erdos_renyi_edges(n, MEAN_DEGREE, rng)
    opinions = rng.random(n)
    graph = None if args.skip_peers else networkx_graph(n, edges)
    builders = {
        "valuesim": lambda model: ValuesimCase(model, n, 1, edges, opinions, args.seed),
        "ndlib": lambda model: NdlibCase(model, graph, opinions, args.seed),
        "mesa": lambda model: MesaCase(model, graph, opinions, args.seed),
    }
    tools = ["valuesim"] if args.skip_peers else list(builders)
    results = []
    for model in MODELS:
        for tool in tools:
            result = Result(model, n, 1, tool, note=NDLIB_HK_NOTE if (tool, model) == ("ndlib", "hk") else "")
            measure(result, lambda: builders[tool](model), args)
            results.append(result)
            progress(result)
            gc.collect()
    return results, {"n": n, "undirected_edges": len(edges), "repaired_isolated": repaired}


# ---------------------------------------------------------------- reporting


def ratio(results: list[Result], result: Result) -> float | None:
    """valuesim's rate over this tool's, for the same model, N and K."""
    ours = next((r for r in results if (r.model, r.n, r.k, r.tool) == (result.model, result.n, result.k, "valuesim")), None)
    if ours is None or ours.rate is None or result.rate is None:
        return None
    return ours.rate / result.rate


def goals(results: list[Result]) -> list[dict]:
    def find(model, n, k, tool):
        return next((r for r in results if (r.model, r.n, r.k, r.tool) == (model, n, k, tool)), None)

    def check(name, value, target, met, shown):
        status = "not measured" if value is None else ("met" if met(value) else "NOT met")
        return {"goal": name, "value": value, "target": target, "status": status, "shown": shown(value)}

    rows = []
    for tool, need in (("ndlib", 100), ("mesa", 30)):
        peer = find("deffuant", 100_000, 1, tool)
        value = ratio(results, peer) if peer else None
        rows.append(check(f"DW N=1e5 K=1 valuesim / {tool}", value, f">= {need}x", lambda v, need=need: v >= need,
                          lambda v: "-" if v is None else f"{v:,.0f}x"))
    dw, hk = find("deffuant", 1_000_000, 10, "valuesim"), find("hk", 1_000_000, 10, "valuesim")
    rows.append(check("DW N=1e6 K=10 pair interactions/s", dw.rate if dw else None, ">= 5e6 (stretch 1e7)",
                      lambda v: v >= 5e6, lambda v: "-" if v is None else f"{v:.3g}" + (" (stretch met)" if v >= 1e7 else "")))
    rss = dw.extra.get("peak_rss_bytes") if dw and dw.rate else None
    rows.append(check("DW N=1e6 K=10 process peak RSS", rss, "< 2 GB", lambda v: v < 2e9,
                      lambda v: "-" if v is None else f"{v / 1e9:.2f} GB"))
    step = hk.seconds_per_iteration if hk else None
    rows.append(check("HK step N=1e6 K=10", step, "< 1 s", lambda v: v < 1.0,
                      lambda v: "-" if v is None else f"{v:.3f} s"))
    return rows


def print_report(results: list[Result], graphs: list[dict], goal_rows: list[dict], meta: dict) -> None:
    print(f"valuesim dynamics benchmark  ({meta['python']}, {meta['machine']}, torch threads {meta['torch_threads']})")
    print(f"graph: Erdos-Renyi, mean degree {MEAN_DEGREE}, seeded; isolated nodes given one edge each to a random "
          f"node (NDlib crashes on them); the same graph and opinions for every tool")
    for g in graphs:
        print(f"  N={g['n']:<8} edges={g['undirected_edges']:<9} isolated nodes repaired={g['repaired_isolated']}")
    print(f"DW: epsilon={CONFIDENCE}, mu={RATE}, 1 iteration = N pair interactions; "
          f"HK: epsilon={CONFIDENCE}, 1 iteration = 1 synchronous step (N agent updates)")
    print("NDlib draws from the global random/np.random (it seeds np.random itself); each NDlib model gets its own "
          "seeded copy, swapped in around its calls\n")
    header = f"{'model':8} {'N':>9} {'K':>3} {'tool':8} {'updates/s':>18} {'s/iteration':>12} {'valuesim ratio':>15}  note"
    print(header)
    print("-" * len(header))
    for r in results:
        shown = r.skipped or f"{r.rate:,.0f}"
        per_it = "" if r.seconds_per_iteration is None else f"{r.seconds_per_iteration:.4g}"
        x = ratio(results, r)
        shown_ratio = "" if r.tool == "valuesim" else ("-" if x is None else f"{x:,.1f}x")
        print(f"{r.model:8} {r.n:>9,} {r.k:>3} {r.tool:8} {shown:>18} {per_it:>12} {shown_ratio:>15}  {r.note}")
    print("\nupdates/s: DW = pair interactions/s, HK = agent updates/s "
          "(NDlib HK: computed node updates/s; it writes back 1 per iteration)")
    for r in results:
        if "peak_rss_bytes" in r.extra:
            print(f"{r.model} N={r.n:,} K={r.k}: process peak RSS {r.extra['peak_rss_bytes'] / 1e9:.2f} GB "
                  f"({r.extra['peak_rss_scope']}; the interpreter, torch and the edge array included; "
                  "before any peer ran)")
    if meta.get("load_before") is not None:
        print(f"load average (1 min) before {meta['load_before']:.2f}, after {meta['load_after']:.2f} on "
              f"{platform_cpus()} CPUs: valuesim's threaded kernels lose much more than the single-threaded "
              "peers when other processes share the cores")
    print("\ngoals (from the issue):")
    for g in goal_rows:
        print(f"  {g['goal']:38} {g['shown']:>22}  target {g['target']:<22} {g['status']}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Deffuant and Hegselmann-Krause throughput: valuesim vs NDlib vs Mesa 3 (one process).",
        epilog="examples:\n  python benchmarks/dynamics.py\n"
               "  python benchmarks/dynamics.py --sizes 1000,10000 --big 0\n"
               "  python benchmarks/dynamics.py --skip-peers --json bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="N for the side-by-side runs (K = 1)")
    parser.add_argument("--big", type=int, default=1_000_000, help="N for valuesim alone with K = 10 (0: skip)")
    parser.add_argument("--skip-peers", action="store_true", help="run valuesim only")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the graphs, opinions and every model")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per cell (median reported)")
    parser.add_argument("--rep-seconds", type=float, default=0.75, help="target duration of one repetition")
    parser.add_argument("--limit", type=float, default=60.0, help="skip a peer estimated to need longer (s)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    meta = {"python": platform.python_version(), "machine": f"{platform.machine()}, {platform_cpus()} CPUs",
            "torch_threads": threads, "seed": args.seed, "argv": sys.argv, "load_before": load_average()}
    results, graphs = [], []
    if args.big:  # first, before any peer has allocated anything
        big_results, big_graph = run_big(args.big, args)
        results += big_results
    for n in args.sizes:
        size_results, graph = run_size(n, args)
        results += size_results
        graphs.append(graph)
    if args.big:
        graphs.append(big_graph)
        results.sort(key=lambda r: r.n == args.big and r.k == 10)  # the big rows last (stable)
    meta["load_after"] = load_average()
    goal_rows = goals(results)
    print_report(results, graphs, goal_rows, meta)
    if args.json:
        payload = {"meta": meta, "graphs": graphs, "goals": goal_rows,
                   "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


def load_average() -> float | None:
    """The 1-minute load average: valuesim's threaded kernels slow down sharply on a busy machine."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def platform_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
