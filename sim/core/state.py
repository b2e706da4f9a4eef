"""The batched world: what every plugin receives.

Shapes: B worlds, N agents, K value dimensions, G groups.

- :class:`World` holds what does not change during a run (value space, groups,
  network, per-agent parameters, initial values).
- :class:`State` holds what a step changes (values, the active mask, the step).

Groups are contiguous index ranges of the agent axis, in scenario order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .interval import Interval
from .valuespace import ValueSpace


@dataclass(frozen=True)
class Group:
    """A group of agents: rows ``start:stop`` of the agent axis."""

    name: str
    kind: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)


class NetworkError(ValueError):
    """A one-graph view (``rowptr``, ``col``, ``degree()``) asked of a network with per-world graphs."""


@dataclass(frozen=True, init=False)
class Network:
    """Who can influence whom: one graph shared by every world, or G graphs over the same N agents.

    The contract, for plugins that read the network:

    - **One graph** (``graphs == 1``, ``graph is None``): ``rowptr`` [N + 1]
      and ``col`` [E] int64 are a CSR matrix: ``col[rowptr[i]:rowptr[i+1]]``
      are agent i's neighbours, ascending. Every world uses it. This is every
      run with ``network.independent: false`` (the default), and every run
      whose worlds all share one random stream (Shapley coalitions, twins).
    - **Per-world graphs** (``network.independent: true`` over several
      streams): ``rowptrs`` [G, N + 1] and ``cols`` [sum of E_g] hold graph g
      as ``cols[rowptrs[g, i]:rowptrs[g, i+1]]`` (its row pointers are
      offsets into the one ``cols`` array, graphs stored one after another),
      and ``graph`` [B] int64 says which graph world b uses. Worlds on one
      stream share a graph: G is the number of distinct streams.

    ``rowptrs``, ``cols``, :meth:`world_graph`, :meth:`world_degree`,
    :meth:`of_world` and :meth:`by_graph` work in both cases (with one graph
    ``rowptrs`` is ``rowptr[None]``). ``rowptr``, ``col``, ``degree()`` and
    ``num_edges`` describe one graph: with per-world graphs they raise
    :class:`NetworkError` instead of answering for some other world's graph,
    so a plugin written for a shared graph stops with a message (the engine
    names it and the step) rather than giving wrong results.

    Each graph is symmetric (each undirected edge is stored in both rows),
    has no self-loops and no duplicate edges.
    """

    n: int
    rowptrs: torch.Tensor  # [G, N + 1] int64: offsets into cols
    cols: torch.Tensor  # [sum of E_g] int64, E_g = 2 x graph g's undirected edges
    graph: torch.Tensor | None  # [B] int64: each world's graph; None: one graph for every world

    def __init__(self, n: int, rowptr: torch.Tensor, col: torch.Tensor, graph: torch.Tensor | None = None):
        """``Network(n, rowptr [N + 1], col)`` is one graph; ``Network(n, rowptrs [G, N + 1], cols, graph [B])``
        is G graphs (a ``graph`` that names a single graph is stored as one graph)."""
        rowptrs = rowptr if rowptr.dim() == 2 else rowptr[None]
        if rowptrs.shape[1] != n + 1:
            raise ValueError(f"rowptr must have N + 1 = {n + 1} entries per graph, got {rowptrs.shape[1]}")
        if graph is not None and rowptrs.shape[0] == 1:
            graph = None
        if graph is None and rowptrs.shape[0] != 1:
            raise ValueError(f"{rowptrs.shape[0]} graphs need a [B] map from world to graph")
        object.__setattr__(self, "n", int(n))
        object.__setattr__(self, "rowptrs", rowptrs)
        object.__setattr__(self, "cols", col)
        object.__setattr__(self, "graph", graph)

    @property
    def graphs(self) -> int:
        """G: how many distinct graphs the worlds use (1: one graph for all)."""
        return int(self.rowptrs.shape[0])

    @property
    def shared(self) -> bool:
        """Whether every world uses the one graph (``rowptr``, ``col`` and ``degree()`` then describe it)."""
        return self.graph is None

    def _one(self, what: str) -> None:
        if self.graph is not None:
            raise NetworkError(
                f"network.{what} describes one graph, but this run's {self.graph.numel()} worlds have {self.graphs} "
                f"graphs (network.independent: true); read world b's graph with network.of_world(b), loop over "
                f"network.by_graph(), or use network.rowptrs/cols/graph (sim.core.state.Network)")

    @property
    def rowptr(self) -> torch.Tensor:
        """[N + 1] int64 row pointers of the one graph (raises with per-world graphs)."""
        self._one("rowptr")
        return self.rowptrs[0]

    @property
    def col(self) -> torch.Tensor:
        """[E] int64 neighbours of the one graph, row after row (raises with per-world graphs)."""
        self._one("col")
        return self.cols

    @property
    def num_edges(self) -> int:
        """Number of undirected edges of the one graph (raises with per-world graphs; see :meth:`edges_per_graph`)."""
        self._one("num_edges")
        return int(self.cols.numel()) // 2

    def edges_per_graph(self) -> list[int]:
        """Number of undirected edges of each graph, ``[G]``."""
        return [int(e) // 2 for e in (self.rowptrs[:, -1] - self.rowptrs[:, 0]).tolist()]

    def degree(self) -> torch.Tensor:
        """[N] each agent's number of neighbours in the one graph (raises with per-world graphs)."""
        self._one("degree()")
        return self.rowptrs[0, 1:] - self.rowptrs[0, :-1]

    def world_degree(self) -> torch.Tensor:
        """[1, N] with one graph (it broadcasts over worlds), [B, N] with per-world graphs."""
        degree = self.rowptrs[:, 1:] - self.rowptrs[:, :-1]
        return degree if self.graph is None else degree[self.graph]

    def world_graph(self, b: int) -> torch.Tensor:
        """[B] int64: the index into ``rowptrs`` of each of ``b`` worlds' graph (all 0 with one graph)."""
        if self.graph is None:
            return torch.zeros(b, dtype=torch.int64, device=self.cols.device)
        if self.graph.numel() != b:
            raise ValueError(f"the network maps {self.graph.numel()} worlds to graphs, not {b}")
        return self.graph

    def rows(self) -> torch.Tensor:
        """Row index (agent) of every stored edge, aligned with ``cols``."""
        degree = (self.rowptrs[:, 1:] - self.rowptrs[:, :-1]).reshape(-1)
        agents = torch.arange(self.n, device=self.cols.device).repeat(self.graphs)
        return torch.repeat_interleave(agents, degree, output_size=int(self.cols.numel()))

    def graph_at(self, g: int) -> "Network":
        """Graph g alone, as a one-graph network."""
        rowptr = self.rowptrs[g]
        first, last = int(rowptr[0]), int(rowptr[-1])
        return Network(self.n, rowptr - first, self.cols[first:last])

    def of_world(self, b: int) -> "Network":
        """The graph of world b, as a one-graph network (the network itself when it is shared)."""
        return self if self.graph is None else self.graph_at(int(self.graph[b]))

    def by_graph(self) -> list[tuple[torch.Tensor | None, "Network"]]:
        """``(worlds, graph)`` for each graph: the ``[B_g]`` indices of the worlds that use it (None: every
        world) and the graph as a one-graph network. A consumer written for one graph runs once per entry
        on those worlds' rows; since each world's result depends only on its own rows, world b comes out as
        it does in a run of world b alone."""
        if self.graph is None:
            return [(None, self)]
        split = self.__dict__.get("_by_graph")
        if split is None:  # asked by every per-world consumer at every step; the network never changes
            split = [(torch.nonzero(self.graph == g).flatten(), self.graph_at(g)) for g in range(self.graphs)]
            object.__setattr__(self, "_by_graph", split)
        return split

    def to(self, device: torch.device | str) -> "Network":
        graph = None if self.graph is None else self.graph.to(device)
        return Network(self.n, self.rowptrs.to(device), self.cols.to(device), graph)


AGENT_PARAMETERS: dict[str, Interval] = {
    "confidence": Interval(gt=0, le=1),
    "rate": Interval(gt=0, le=0.5),
    "anchoring": Interval(ge=0, le=1),
}
"""The per-agent parameters, each with its range, written once: the scenario's group keys, the
names a dynamics lists in ``uses``, and the float fields of :class:`AgentParams` (which adds ``zealot``)."""


@dataclass(frozen=True)
class AgentParams:
    """Per-agent parameters, each ``[B or 1, N]`` (a leading 1 broadcasts over worlds).

    - ``confidence``: bounded-confidence radius epsilon in (0, 1];
    - ``rate``: convergence rate mu in (0, 0.5];
    - ``anchoring``: Friedkin-Johnsen weight lambda on the initial values, in [0, 1];
    - ``zealot``: bool, the agent's values never change.
    """

    confidence: torch.Tensor
    rate: torch.Tensor
    anchoring: torch.Tensor
    zealot: torch.Tensor

    def to(self, device: torch.device | str) -> "AgentParams":
        return AgentParams(*(getattr(self, f).to(device) for f in (*AGENT_PARAMETERS, "zealot")))


@dataclass(frozen=True)
class World:
    """What does not change during a run."""

    space: ValueSpace
    groups: tuple[Group, ...]
    network: Network
    params: AgentParams
    initial: torch.Tensor  # [B, N, K] values at step 0
    group_index: torch.Tensor  # [N] int64: the group of each agent
    # [B or 1, N] bool: in that world the agent's policy shows its current values, which the dynamics then
    # read live (an [N] tensor given here is taken as [1, N]); it is [B, N] only when worlds differ in it
    # (an agent acting by its own policy in one world and by a baseline in another).
    honest: torch.Tensor
    # Run-level services for plugins that need them (``seed``, ``llm_cache``, ``llm_cache_mode``).
    context: dict = field(default_factory=dict, compare=False)
    # With a scenario's ``counterfactual:``: [B] bool, which worlds are the twins without the named groups, and
    # [B] int64, each world's twin (a factual world's counterfactual and back); None without twins.
    counterfactual: torch.Tensor | None = None
    twin: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.honest.dim() == 1:
            object.__setattr__(self, "honest", self.honest[None])

    @property
    def b(self) -> int:
        return self.initial.shape[0]

    @property
    def n(self) -> int:
        return self.initial.shape[1]

    @property
    def k(self) -> int:
        return self.initial.shape[2]

    @property
    def device(self) -> torch.device:
        return self.initial.device

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)


@dataclass
class State:
    """What a step changes.

    - ``values`` [B, N, K] in [0, 1]: every agent's internal values;
    - ``active`` [B, N] bool: who takes part in each world. An inactive agent
      is absent: never matched, never heard, not counted, frozen (the engine
      enforces it; see ``sim.core.engine``);
    - ``own_policy`` [B, N] bool: whether the agent acts by its group's own
      policy (True) or the group's baseline policy in that world;
    - ``step``: how many steps the batch has taken; ``world_step`` [B] int64:
      each world's own step count, which restarts at 0 when the world is reset
      (``Simulation.reset_worlds``); random draws follow ``world_step``;
    - ``protocols``: each protocol's batched state by protocol name (tensors
      with a leading B), including the outcomes metrics read; ``alignment``
      the same for each alignment rule.
    """

    values: torch.Tensor
    active: torch.Tensor
    step: int = 0
    # Per-world step at which the world stopped changing (-1 while it still moves).
    converged_at: torch.Tensor = field(default=None)  # type: ignore[assignment]
    # What every agent showed in the last step ([B, N, K]); None until a non-honest policy has run.
    expressed: torch.Tensor | None = None
    world_step: torch.Tensor = field(default=None)  # type: ignore[assignment]
    own_policy: torch.Tensor = field(default=None)  # type: ignore[assignment]
    protocols: dict = field(default_factory=dict)
    alignment: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        b, n = self.values.shape[:2]
        if self.converged_at is None:
            self.converged_at = torch.full((b,), -1, dtype=torch.int64)
        if self.world_step is None:
            self.world_step = torch.full((b,), self.step, dtype=torch.int64, device=self.values.device)
        if self.own_policy is None:
            self.own_policy = torch.ones((b, n), dtype=torch.bool, device=self.values.device)
