"""Network generators: who can influence whom.

Each class is a ``valuesim.networks`` plugin (see ``sim.contracts.NetworkGenerator``):
``build(request)`` returns a networkx graph on nodes ``0..N-1`` or an ``[E, 2]``
int64 edge array; ``sim.core.network`` turns it into the CSR network. Every random
choice is drawn from ``request.seed`` (a fresh ``numpy`` generator, or
``seed=`` for networkx), never from global state, so a scenario's network is
the same on every run with the same seed.

The sparse random models (Erdős–Rényi, Watts–Strogatz, stochastic block) are
sampled with vectorised numpy rather than networkx's per-pair Python loops, so
they build a million-agent network in about a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import networkx as nx
import numpy as np
from pydantic import model_validator

from sim.contracts import Interval, NetworkRequest, NoParams, PluginParams
from sim.errors import ScenarioError

Probability = Annotated[float, Interval(ge=0, le=1)]


class Complete:
    """Everyone is connected to everyone (N(N-1)/2 edges: mind the memory at large N)."""

    Params = NoParams
    random: ClassVar[bool] = False  # one graph whatever the seed: network.independent is refused with it

    def __init__(self, params: NoParams):
        self.params = params

    def build(self, request: NetworkRequest) -> np.ndarray:
        _edge_budget(request.n * (request.n - 1) / 2, request.n, "network.generator")
        first, second = np.triu_indices(request.n, k=1)
        return np.stack([first, second], axis=1).astype(np.int64)


class ErdosRenyi:
    """G(n, p): each of the N(N-1)/2 pairs is an edge independently with probability ``p``.

    Sampled exactly in O(edges): the number of edges is drawn from
    Binomial(N(N-1)/2, p), then that many distinct pairs uniformly at random.
    """

    class Params(PluginParams):
        """Give exactly one of ``p`` and ``mean_degree``."""

        p: Probability | None = None
        """Probability that a given pair of agents is connected."""
        mean_degree: Annotated[float, Interval(ge=0)] | None = None
        """Expected number of neighbours per agent; sets p = mean_degree / (N - 1)."""

        @model_validator(mode="after")
        def _one_of_p_and_mean_degree(self):
            if (self.p is None) == (self.mean_degree is None):
                raise ValueError("give exactly one of p or mean_degree")
            return self

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> np.ndarray:
        n, p = request.n, self.params.p
        if p is None:
            p = self.params.mean_degree / (n - 1) if n > 1 else 0.0
            if p > 1:
                raise ScenarioError(
                    f"mean_degree must be at most N - 1 = {n - 1} for {n} agents, got {self.params.mean_degree}",
                    path="network.params.mean_degree",
                )
        _edge_budget(p * n * (n - 1) / 2, n, "network.params")
        first, second = _random_pairs(np.random.default_rng(request.seed), p, n)
        return np.stack([first, second], axis=1)


class WattsStrogatz:
    """Small world: a ring lattice whose edges are rewired at random.

    Each agent starts connected to its ``k // 2`` nearest neighbours on each
    side of a ring; then each lattice edge (u, u + j) is, with probability
    ``p``, replaced by (u, w) with w uniform among the agents, redrawn while
    it would make a self-loop or a duplicate edge (networkx's
    ``watts_strogatz_graph`` model; ``k == N`` gives the complete graph).

    networkx rewires one edge at a time; this rewires all edges at once in
    rounds of redraws. It is the same model (same lattice, same rewiring
    probability, uniform targets, never a self-loop or duplicate, the edge
    count kept) except where two rewirings interact: a draw can be refused
    for an edge that a rewiring ahead of it in networkx's order has not yet
    moved in an earlier round, or that one behind it has already made. Both
    are rare unless k is close to N. An edge whose end has found no free
    partner after 200 rounds stays where it was (networkx gives up when the
    agent is linked to everyone).
    """

    class Params(PluginParams):
        k: Annotated[int, Interval(ge=2)]
        """Each agent's number of lattice neighbours (k // 2 on each side; even is conventional)."""
        p: Probability
        """Probability that each lattice edge is rewired."""

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> np.ndarray:
        n, k = request.n, self.params.k
        if k > n:
            raise ScenarioError(f"k must be at most the number of agents ({n}), got {k}", path="network.params.k")
        if k == n:
            return Complete(NoParams()).build(request)
        # Lattice edges in networkx's processing order: neighbour distance j outer, node u inner.
        u = np.tile(np.arange(n, dtype=np.int64), k // 2)
        v = (u + np.repeat(np.arange(1, k // 2 + 1, dtype=np.int64), n)) % n
        rng = np.random.default_rng(request.seed)
        rewire = rng.random(u.size) < self.params.p
        w = _rewire(rng, n, u, v, rewire)
        return np.stack([u, w], axis=1)


_MAX_REWIRE_ROUNDS = 200


def _rewire(rng: np.random.Generator, n: int, u: np.ndarray, v: np.ndarray, rewire: np.ndarray) -> np.ndarray:
    """New far ends for the edges (u, v) marked ``rewire``: uniform, no self-loop, no duplicate.

    The edge set never holds a duplicate, as in networkx: a draw is refused if
    it hits a kept edge, a new edge, or the original of a rewiring that is
    still pending (it may yet stay) or comes at or after it in networkx's
    order (networkx removes an edge only on its own turn, and w == v there is
    a duplicate of the edge being moved).
    """
    kept = np.sort(_pair_key(n, u[~rewire], v[~rewire]))
    moving = np.flatnonzero(rewire)
    originals = _pair_key(n, u[moving], v[moving])
    by_key = np.argsort(originals)
    originals, original_turn = originals[by_key], moving[by_key]
    original_pending = np.ones(originals.size, dtype=bool)
    slot = np.empty(u.size, dtype=np.int64)  # where each rewired edge's original sits in ``originals``
    slot[original_turn] = np.arange(originals.size)
    accepted = np.empty(0, dtype=np.int64)
    w = v.copy()
    pending = moving
    for _ in range(_MAX_REWIRE_ROUNDS):
        if pending.size == 0:
            break
        draw = rng.integers(0, n, size=pending.size)
        keys = _pair_key(n, u[pending], draw)
        hit, at = _lookup(originals, keys)
        bad = hit & (original_pending[at] | (original_turn[at] >= pending))
        bad |= (draw == u[pending]) | _lookup(kept, keys)[0] | _lookup(accepted, keys)[0]
        # Of two draws making the same new edge, the first in networkx's order wins.
        good = np.flatnonzero(~bad)
        _, first = np.unique(keys[good], return_index=True)
        winners = good[first]
        w[pending[winners]] = draw[winners]
        accepted = np.sort(np.concatenate([accepted, keys[winners]]))
        original_pending[slot[pending[winners]]] = False
        still = np.ones(pending.size, dtype=bool)
        still[winners] = False
        pending = pending[still]
    return w


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each key is in ``sorted_keys``, and where (an index to ignore where it is not)."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys, at


def _pair_key(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per undirected pair."""
    return np.minimum(a, b) * n + np.maximum(a, b)


class BarabasiAlbert:
    """Preferential attachment: each new agent links to ``m`` existing ones, chosen by degree (networkx)."""

    class Params(PluginParams):
        m: Annotated[int, Interval(ge=1)]
        """Edges each new agent brings; must be below the number of agents."""

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> nx.Graph:
        _check_m_below_n(self.params.m, request.n)
        return nx.barabasi_albert_graph(request.n, self.params.m, seed=request.seed)


class PowerlawCluster:
    """Holme–Kim: preferential attachment plus triangle closure, a scale-free network with clustering (networkx)."""

    class Params(PluginParams):
        m: Annotated[int, Interval(ge=1)]
        """Edges each new agent brings; must be below the number of agents."""
        p: Probability
        """Probability of closing a triangle after each preferential edge."""

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> nx.Graph:
        _check_m_below_n(self.params.m, request.n)
        return nx.powerlaw_cluster_graph(request.n, self.params.m, self.params.p, seed=request.seed)


def _check_m_below_n(m: int, n: int) -> None:
    if m >= n:
        raise ScenarioError(f"m must be less than the number of agents ({n}), got {m}", path="network.params.m")


class StochasticBlock:
    """Communities: the population's groups are the blocks, in scenario order.

    Agents of blocks a and b are connected independently with probability
    ``p[a][b]`` (``p_in`` inside a block and ``p_out`` between blocks, or a
    full matrix). Sampled exactly per block pair in O(edges), like ErdosRenyi.
    """

    class Params(PluginParams):
        """Give ``p_in`` and ``p_out``, or ``p``."""

        p_in: Probability | None = None
        """Connection probability of two agents of the same group."""
        p_out: Probability | None = None
        """Connection probability of two agents of different groups."""
        p: tuple[tuple[Probability, ...], ...] | None = None
        """Full G x G symmetric matrix of connection probabilities between groups, in scenario order."""

        @model_validator(mode="after")
        def _one_form(self):
            pair = (self.p_in is not None, self.p_out is not None)
            if self.p is not None and any(pair):
                raise ValueError("give either p_in and p_out, or p, not both")
            if self.p is None and not all(pair):
                raise ValueError("give both p_in and p_out, or a full matrix p")
            if self.p is not None and (
                any(len(row) != len(self.p) for row in self.p)
                or any(self.p[a][b] != self.p[b][a] for a in range(len(self.p)) for b in range(a))
            ):
                raise ValueError("p must be a square, symmetric matrix")
            return self

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> np.ndarray:
        groups = request.groups
        probability = self._matrix(len(groups))
        expected = sum(probability[a][b] * (g.size * (g.size - 1) / 2 if a == b else g.size * groups[b].size)
                       for a, g in enumerate(groups) for b in range(a, len(groups)))
        _edge_budget(expected, request.n, "network.params")
        rng = np.random.default_rng(request.seed)
        edges = []
        for a, block_a in enumerate(groups):
            for b in range(a, len(groups)):
                block_b = groups[b]
                first, second = _random_pairs(rng, probability[a][b], block_a.size, None if a == b else block_b.size)
                edges.append(np.stack([first + block_a.start, second + block_b.start], axis=1))
        return np.concatenate(edges) if edges else np.empty((0, 2), dtype=np.int64)

    def _matrix(self, num_groups: int):
        params = self.params
        if params.p is None:
            return [[params.p_in if a == b else params.p_out for b in range(num_groups)] for a in range(num_groups)]
        if len(params.p) != num_groups:
            raise ScenarioError(
                f"p must be {num_groups} x {num_groups}, one row and column per group; got {len(params.p)} rows",
                path="network.params.p",
            )
        return params.p


MAX_EDGES = 100_000_000  # 1.6 GB of CSR indices; past it, a typo in a size is likelier than intent


def _edge_budget(expected: float, n: int, path: str) -> None:
    """Refuse, with the numbers, a graph too large to hold rather than run out of memory building it."""
    if expected > MAX_EDGES:
        raise ScenarioError(
            f"this network would have about {expected:,.0f} edges on {n:,} agents, more than the "
            f"{MAX_EDGES:,} valuesim holds; use a sparser generator (erdos_renyi with a mean_degree, "
            f"watts_strogatz, barabasi_albert) or fewer agents", path=path)


def _random_pairs(rng: np.random.Generator, p: float, n_first: int, n_second: int | None = None):
    """Each possible pair independently with probability ``p``, exactly, in O(pairs drawn).

    ``n_second`` None: unordered pairs (i, j), i < j, of ``0..n_first-1`` (G(n, p)).
    Otherwise: pairs (i, j) of ``0..n_first-1`` x ``0..n_second-1`` (bipartite).
    The number of edges is Binomial(pairs, p); given it, the set of edges is
    uniform, so drawing that many distinct pair indices (Floyd's algorithm in
    numpy's ``choice``, O(m) memory however many pairs there are) is exact.
    """
    total = n_first * (n_first - 1) // 2 if n_second is None else n_first * n_second
    count = int(rng.binomial(total, p)) if total else 0
    if count == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    index = rng.choice(total, size=count, replace=False, shuffle=False).astype(np.int64)
    if n_second is not None:
        return np.divmod(index, n_second)
    return _triangle_pair(index)


def _triangle_pair(index: np.ndarray):
    """Pair (j, i), j < i, of the index ``i (i - 1) / 2 + j`` into the strict lower triangle."""
    i = ((1 + np.sqrt(1 + 8 * index.astype(np.float64))) // 2).astype(np.int64)
    # The float square root can be one off near a row boundary: correct it exactly.
    i -= i * (i - 1) // 2 > index
    i += (i + 1) * i // 2 <= index
    return index - i * (i - 1) // 2, i


class FromFile:
    """A network read from a file: an edge list or GraphML.

    Node ids that are exactly the integers 0..N-1 (as numbers or digit
    strings) are the agents' indices. Any other ids are sorted (numerically
    if they are all integers, so "007" is 7; otherwise as text) and numbered
    0..N-1 in that order. Direction,
    self-loops and repeated edges are ignored. The file must name exactly as
    many nodes as the population has agents (an edge list names only nodes
    that have at least one edge).
    """

    random: ClassVar[bool] = False  # the file's graph whatever the seed: network.independent is refused with it

    class Params(PluginParams):
        path: str
        """The file; a relative path is taken from the scenario file's folder."""
        format: Literal["auto", "edgelist", "graphml"] = "auto"
        """``auto`` goes by the suffix: .graphml is GraphML; .edgelist, .edges, .txt, .csv, .tsv an edge list
        (two node ids per line separated by whitespace or a comma, further columns ignored, ``#`` comments)."""

    def __init__(self, params: Params):
        self.params = params

    def build(self, request: NetworkRequest) -> np.ndarray:
        path = self._resolve(request.base_dir)
        reader = _read_graphml if self._format(path) == "graphml" else _read_edgelist
        try:
            endpoints, isolated = reader(path)
        except OSError as error:
            raise _path_error(f"cannot read {self.params.path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise _path_error(f"cannot read {self.params.path}: it is not a UTF-8 text file") from None
        count, edges = _number_nodes(endpoints, isolated)
        if count != request.n:
            raise _path_error(f"{self.params.path} has {count} nodes but the population has {request.n} agents")
        return edges

    def _resolve(self, base_dir: Path) -> Path:
        path = Path(self.params.path).expanduser()
        resolved = (path if path.is_absolute() else Path(base_dir) / path).resolve()
        if not resolved.is_file():
            raise _path_error(f"file not found: {self.params.path} (resolved to {resolved})")
        return resolved

    def _format(self, path: Path) -> str:
        if self.params.format != "auto":
            return self.params.format
        suffix = path.suffix.lower()
        if suffix == ".graphml":
            return "graphml"
        if suffix in (".edgelist", ".edges", ".txt", ".csv", ".tsv"):
            return "edgelist"
        raise _path_error(
            f"cannot tell the format of {self.params.path} from its suffix {suffix!r}; set format: edgelist or graphml"
        )


def _path_error(message: str) -> ScenarioError:
    return ScenarioError(message, path="network.params.path")


_COMMENT = re.compile(r"#[^\n]*")
# Some non-empty line without exactly two ids (one id, or a third column): read line by line.
_NOT_TWO_IDS = re.compile(r"^[^\S\n]*\S+[^\S\n]*$|^[^\S\n]*\S+[^\S\n]+\S+[^\S\n]+\S", re.MULTILINE)


def _read_edgelist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``[E, 2]`` endpoint ids (strings) of an edge-list file, and no isolated nodes."""
    text = path.read_text(encoding="utf-8")
    cleaned = (_COMMENT.sub("", text) if "#" in text else text).replace(",", " ")
    if _NOT_TWO_IDS.search(cleaned) is None:
        # The common file, two ids on every line: one C-level split instead of a loop over lines.
        endpoints = np.array(cleaned.split(), dtype=str).reshape(-1, 2)
    else:
        endpoints = _edgelist_by_line(path, text, cleaned)
    return endpoints, np.empty(0, dtype=str)


def _edgelist_by_line(path: Path, text: str, cleaned: str) -> np.ndarray:
    pairs = []
    for number, line in enumerate(cleaned.split("\n"), start=1):
        fields = line.split(None, 2)
        if len(fields) == 1:
            got = text.split("\n")[number - 1].strip()
            raise _path_error(f"{path}:{number}: expected two node ids, got {got!r}")
        if fields:
            pairs.append(fields[:2])
    return np.array(pairs, dtype=str).reshape(-1, 2)


def _read_graphml(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``[E, 2]`` endpoint ids and the ids of all nodes (isolated ones included) of a GraphML file."""
    try:
        graph = nx.read_graphml(path)
    except OSError:
        raise
    except Exception as error:  # ElementTree.ParseError carries the line; networkx errors the cause.
        raise _path_error(f"{path} is not valid GraphML: {error}") from None
    endpoints = np.array([(str(a), str(b)) for a, b, *_ in graph.edges], dtype=str).reshape(-1, 2)
    return endpoints, np.array([str(node) for node in graph.nodes], dtype=str)


def _number_nodes(endpoints: np.ndarray, others: np.ndarray) -> tuple[int, np.ndarray]:
    """The number of distinct node ids and the edges as indices 0..count-1 (see FromFile)."""
    ids = np.concatenate([endpoints.ravel(), others])
    try:
        keys = ids.astype(np.int64)
    except (ValueError, OverflowError):
        keys = ids  # not all integers: sort as text
    unique = np.sort(keys)
    if unique.size:
        unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
    ends = keys[: endpoints.size]
    if unique.dtype.kind == "i" and unique.size and unique[0] == 0 and unique[-1] == unique.size - 1:
        return unique.size, ends.reshape(-1, 2)  # already 0..N-1
    return unique.size, np.searchsorted(unique, ends).astype(np.int64).reshape(-1, 2)
