"""The batched world: what every plugin receives.

Shapes: B worlds, N agents, K value dimensions, G groups.

- :class:`World` holds what does not change during a run (value space, groups,
  network, per-agent parameters, initial values).
- :class:`State` holds what a step changes (values, the active mask, the step).

Groups are contiguous index ranges of the agent axis, in scenario order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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


@dataclass(frozen=True)
class Network:
    """Who can influence whom, as CSR shared by all worlds.

    ``rowptr[i]:rowptr[i+1]`` indexes ``col`` for the neighbours of agent i.
    The graph is symmetric (each undirected edge is stored in both rows),
    has no self-loops and no duplicate edges.
    """

    n: int
    rowptr: torch.Tensor  # [N + 1] int64
    col: torch.Tensor  # [E] int64, E = 2 x number of undirected edges

    @property
    def num_edges(self) -> int:
        """Number of undirected edges."""
        return int(self.col.numel()) // 2

    def degree(self) -> torch.Tensor:
        return self.rowptr[1:] - self.rowptr[:-1]

    def rows(self) -> torch.Tensor:
        """Row index of every stored edge, aligned with ``col``."""
        return torch.repeat_interleave(torch.arange(self.n, device=self.col.device), self.degree())

    def to(self, device: torch.device | str) -> "Network":
        return replace(self, rowptr=self.rowptr.to(device), col=self.col.to(device))


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
