"""Built-in alignment rules: how an AI group's own values follow the humans it serves (step 4 of a step).

Each class is a ``valuesim.alignment`` plugin (see ``sim.contracts.AlignmentRule``).
A rule moves the rows of one AI group (``ai``, of kind ``ai`` or ``llm``)
toward what it learns from the humans (``humans``: groups; default every
group of kind ``human``), every ``every`` steps of each world:

- ``static``: never moves (the AI keeps the values it was built with);
- ``follow``: toward the humans' aggregate (mean or median), or, with
  ``feedback: preferences``, by their stated preferences between two outputs
  (RLHF-like, below);
- ``lifelong``: toward an exponential moving average of the aggregate, a
  memory of everything it has seen;
- ``extrapolative``: toward a least-squares linear trend of the aggregate's
  recent history, forecast ``horizon`` steps ahead.

The learning rate is ``rate``; ``phases`` changes it with the world's step
(plasticity by phase: fast at first, like supervised fine-tuning, then slow,
like preference optimisation). With ``learn_from: reached`` a rule learns only
from the humans a protocol reached since its last update (a protocol whose
state has ``reached_agents`` [B, N], such as ``trusted_broadcast``); otherwise
from every present human. Absent humans count for nothing and absent AI
agents do not move; a world with no one to learn from leaves its AI as it is.

The rule moves the AI's internal values. An honest AI shows them; an LLM
persona carries them into its prompts when it ``adapts`` (``adapts: true`` in
the persona), otherwise it keeps speaking from its file's profile. Zealot AI
agents (``zealots: 1.0``) are not moved by social influence but are moved by
their rule: that is how an AI that only learns through its rule is written.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from sim.contracts import Interval, PluginParams, State, StepOutput, Streams, World

UnitFloat = Annotated[float, Interval(ge=0, le=1)]


class Phase(PluginParams):
    """From world step ``start`` on, the rule learns at ``rate``."""

    start: Annotated[int, Interval(ge=0)]
    rate: UnitFloat


class RuleParams(PluginParams):
    ai: str
    """The AI group whose values the rule moves."""
    humans: list[str] | None = None
    """The groups it learns from; None: every group of kind human."""
    every: Annotated[int, Interval(ge=1)] = 1
    """Update every this many steps (of each world)."""
    rate: UnitFloat = 0.1
    """Learning rate: the share of the way to its target the AI moves per update."""
    phases: list[Phase] = Field(default_factory=list)
    """Plasticity by phase: the rate from each phase's start step on (before the first: ``rate``)."""
    learn_from: Literal["present", "reached"] = "present"
    """Every present human, or only those the protocol ``protocol`` reached since the last update."""
    protocol: str = "trusted_broadcast"
    """With ``learn_from: reached``: the protocol whose ``reached_agents`` say who was reached."""


def _rows(params: RuleParams, world: World) -> tuple[slice, torch.Tensor]:
    """The AI group's rows and a [N] bool mask of the humans it learns from."""
    names = [g.name for g in world.groups]
    if params.ai not in names:
        raise ValueError(f"ai must name a group ({', '.join(names)}), got {params.ai!r}")
    for name in params.humans or ():
        if name not in names:
            raise ValueError(f"humans: unknown group {name!r} (groups: {', '.join(names)})")
        if name == params.ai:
            raise ValueError(f"humans: {name!r} is the AI group itself")
    mask = torch.zeros(world.n, dtype=torch.bool, device=world.device)
    for group in world.groups:
        chosen = group.name in params.humans if params.humans is not None else group.kind == "human"
        if chosen and group.name != params.ai:
            mask[group.rows] = True
    return world.group(params.ai).rows, mask


def rate_now(params: RuleParams, world_step: torch.Tensor) -> torch.Tensor:
    """The learning rate in effect at each world's step: [B] float64."""
    rate = torch.full(world_step.shape, params.rate, dtype=torch.float64, device=world_step.device)
    for phase in sorted(params.phases, key=lambda p: p.start):
        rate = torch.where(world_step >= phase.start, phase.rate, rate)
    return rate


def aggregate(values: torch.Tensor, weight: torch.Tensor, how: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The aggregate of the rows where ``weight`` [B, N] is True: ([B, K] float64, [B] bool: anyone counted)."""
    x = values.double()
    anyone = weight.any(1)
    if how == "median":
        masked = torch.where(weight[..., None], x, torch.nan)
        centre = masked.nanmedian(dim=1).values
    else:
        w = weight.to(torch.float64)[..., None]
        centre = (x * w).sum(1) / w.sum(1).clamp(min=1)
    return torch.where(anyone[:, None], centre, 0.0), anyone


class _Rule:
    """Shared machinery: groups, cadence, rate, who counts, and the move itself."""

    name = "rule"
    Params = RuleParams

    def __init__(self, params):
        self.params = params

    def _base_carry(self, world: World) -> dict[str, torch.Tensor]:
        _rows(self.params, world)  # refuse a world without the named groups when the world is built
        return {"updates": torch.zeros(world.b, dtype=torch.int64, device=world.device),
                "seen": torch.zeros((world.b, world.n), dtype=torch.bool, device=world.device)}

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        return self._base_carry(world)

    def _learners(self, state: State, world: World, carry) -> tuple[torch.Tensor, torch.Tensor]:
        """(who counts this update [B, N] bool, the accumulated 'reached' carry)."""
        _, humans = _rows(self.params, world)
        counted = state.active & humans[None]
        if self.params.learn_from == "present":
            return counted, carry["seen"]
        outcomes = state.protocols.get(self.params.protocol)
        if outcomes is None or "reached_agents" not in outcomes:
            raise ValueError(f"learn_from: reached needs a protocol {self.params.protocol!r} whose state has "
                             "'reached_agents' (trusted_broadcast has); protocols: "
                             f"{', '.join(state.protocols) or 'none'}")
        seen = carry["seen"] | outcomes["reached_agents"].to(torch.bool)
        return counted & seen, seen

    def _due(self, state: State) -> torch.Tensor:
        return (state.world_step + 1) % self.params.every == 0

    def _move(self, values: torch.Tensor, state: State, world: World, target: torch.Tensor,
              moving: torch.Tensor) -> torch.Tensor:
        """The AI rows moved a rate's share toward ``target`` ([B, K] or [B, n_ai, K]) in ``moving`` worlds."""
        ai, _ = _rows(self.params, world)
        own = values[:, ai]
        if target.dim() == 2:
            target = target[:, None]
        rate = rate_now(self.params, state.world_step)[:, None, None]
        moved = (own.double() + rate * (target - own.double())).clamp(0, 1).to(values.dtype)
        keep = ~(moving[:, None] & state.active[:, ai])
        new = values.clone()
        new[:, ai] = torch.where(keep[..., None], own, moved)
        return new

    def update(self, values: torch.Tensor, state: State, world: World, carry: dict[str, torch.Tensor],
               rng: Streams) -> StepOutput:
        due = self._due(state)
        counted, seen = self._learners(state, world, carry)
        target, moving, extra = self.target(values, state, world, carry, counted, due, rng)
        moving = moving & due
        new = self._move(values, state, world, target, moving) if bool(moving.any()) else None
        out = {**carry, **extra, "updates": carry["updates"] + moving.long(),
               "seen": torch.where(due[:, None], torch.zeros_like(seen), seen)}
        return StepOutput(values=new, carry=out, events=[])

    def target(self, values, state, world, carry, counted, due, rng):
        """(target [B, K] or [B, n_ai, K] float64, [B] bool: worlds that move, carry entries to update)."""
        raise NotImplementedError


class Static(_Rule):
    """An AI whose values never change: the reference against which learning rules are compared."""

    class Params(PluginParams):
        ai: str
        """The AI group (checked to exist; its values are left as they are)."""

    def _base_carry(self, world: World) -> dict[str, torch.Tensor]:
        names = [g.name for g in world.groups]
        if self.params.ai not in names:
            raise ValueError(f"ai must name a group ({', '.join(names)}), got {self.params.ai!r}")
        return {"updates": torch.zeros(world.b, dtype=torch.int64, device=world.device)}

    def update(self, values, state, world, carry, rng) -> StepOutput:
        return StepOutput(values=None, carry=dict(carry), events=[])


class FollowParams(RuleParams):
    aggregate: Literal["mean", "median"] = "mean"
    """The humans' aggregate it moves toward (per dimension), with ``feedback: values``."""
    feedback: Literal["values", "preferences"] = "values"
    """``values``: the humans' stated values; ``preferences``: their choices between two outputs (RLHF-like)."""
    raters: Annotated[int, Interval(ge=1)] = 8
    """With preferences: humans drawn (with replacement) to compare each AI agent's two outputs per update."""
    spread: Annotated[float, Interval(gt=0, le=0.5)] = 0.05
    """With preferences: the two outputs are the AI's values plus and minus a N(0, spread^2) perturbation."""


class Follow(_Rule):
    """Toward the aggregate of the humans it learns from, at the learning rate: a <- a + rate (h - a).

    With ``feedback: preferences`` each AI agent shows two outputs, o+ = a + d
    and o- = a - d (d drawn N(0, spread^2) per dimension), to ``raters`` humans
    drawn uniformly among those it learns from; each prefers the output
    nearer its own values. The AI moves to a + rate * s * d, s the net share
    preferring o+ (in [-1, 1]): a preference-gradient step (an evolution
    strategy on human approval), which heads toward the raters' geometric
    median rather than their mean. Carry: ``updates`` [B] (updates made),
    ``approval`` [B, n_ai] (the last net preference share).
    """

    Params = FollowParams

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        carry = self._base_carry(world)
        ai, _ = _rows(self.params, world)
        carry["approval"] = torch.zeros((world.b, ai.stop - ai.start), dtype=torch.float64, device=world.device)
        return carry

    def target(self, values, state, world, carry, counted, due, rng):
        if self.params.feedback == "values":
            centre, anyone = aggregate(values, counted, self.params.aggregate)
            return centre, anyone, {}
        return self._preferences(values, world, counted, rng)

    def _preferences(self, values, world: World, counted: torch.Tensor, rng: Streams):
        p = self.params
        ai, _ = _rows(p, world)
        b, n_ai, k = world.b, ai.stop - ai.start, world.k
        own = values[:, ai].double()
        d = p.spread * rng.normal(f"alignment/{p.ai}/follow/pair", (b, n_ai, k), torch.float64).to(own.device)
        plus, minus = (own + d).clamp(0, 1), (own - d).clamp(0, 1)
        m = counted.sum(1)
        rank = (rng.uniform(f"alignment/{p.ai}/follow/raters", (b, n_ai * p.raters), torch.float64)
                .to(own.device) * m[:, None]).long()
        in_order = torch.sort((~counted).to(torch.uint8), dim=1, stable=True).indices  # counted rows first
        rows = in_order.gather(1, rank.clamp(max=world.n - 1))
        raters = values.double().gather(1, rows[..., None].expand(-1, -1, k)).view(b, n_ai, p.raters, k)
        near_plus = (raters - plus[:, :, None]).square().sum(-1)
        near_minus = (raters - minus[:, :, None]).square().sum(-1)
        share = torch.sign(near_minus - near_plus).mean(-1)  # +1: everyone preferred o+
        anyone = m > 0
        share = torch.where(anyone[:, None], share, 0.0)
        # the target is where a full step (rate 1) would go: a + s d
        return own + share[..., None] * d, anyone, {"approval": share}


class LifelongParams(RuleParams):
    rate: UnitFloat = 1.0
    """The share of the way to the moving average the AI moves per update (1: it is the average)."""
    decay: Annotated[float, Interval(gt=0, le=1)] = 0.05
    """Weight of the newest aggregate in the moving average (1 / decay: the memory, in updates)."""


class Lifelong(_Rule):
    """Toward an exponential moving average of the humans' mean: m <- m + decay (h - m), a <- a + rate (m - a).

    The average starts at the first mean it sees, so a lifelong AI keeps what
    the humans were and lags behind a trend by about (1 - decay) / decay
    updates. Carry: ``updates`` [B], ``average`` [B, K] (the moving average),
    ``started`` [B] (whether it has seen a mean yet).
    """

    Params = LifelongParams

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        carry = self._base_carry(world)
        carry["average"] = torch.zeros((world.b, world.k), dtype=torch.float64, device=world.device)
        carry["started"] = torch.zeros(world.b, dtype=torch.bool, device=world.device)
        return carry

    def target(self, values, state, world, carry, counted, due, rng):
        centre, anyone = aggregate(values, counted)
        seen = anyone & due
        blended = carry["average"] + self.params.decay * (centre - carry["average"])
        average = torch.where((seen & carry["started"])[:, None], blended,
                              torch.where(seen[:, None], centre, carry["average"]))
        started = carry["started"] | seen
        return average, started, {"average": average, "started": started}


class ExtrapolativeParams(RuleParams):
    rate: UnitFloat = 0.5
    horizon: Annotated[float, Interval(ge=0)] = 10.0
    """How many steps ahead of the latest mean the trend is forecast."""
    window: Annotated[int, Interval(ge=2, le=10_000)] = 20
    """How many of the latest updates' means the trend is fitted to."""


class Extrapolative(_Rule):
    """Toward a trend's forecast: a least-squares line through the humans' recent means, ``horizon`` steps on.

    Each update stores the humans' mean with the world's step; the line per
    dimension is fitted to the latest ``window`` of them and evaluated at the
    current step + ``horizon`` (clipped to [0, 1]). With one mean stored the
    target is that mean. Carry: ``updates`` [B], ``history`` [B, window, K],
    ``times`` [B, window], ``stored`` [B] (how many means were stored so far).
    """

    Params = ExtrapolativeParams

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        carry = self._base_carry(world)
        w = self.params.window
        carry["history"] = torch.zeros((world.b, w, world.k), dtype=torch.float64, device=world.device)
        carry["times"] = torch.zeros((world.b, w), dtype=torch.float64, device=world.device)
        carry["stored"] = torch.zeros(world.b, dtype=torch.int64, device=world.device)
        return carry

    def target(self, values, state, world, carry, counted, due, rng):
        centre, anyone = aggregate(values, counted)
        store = anyone & due
        now = (state.world_step + 1).to(torch.float64)
        slot = (carry["stored"] % self.params.window)[:, None]
        history = carry["history"].clone()
        times = carry["times"].clone()
        fresh = torch.zeros_like(times, dtype=torch.bool).scatter_(1, slot, True) & store[:, None]
        history = torch.where(fresh[..., None], centre[:, None], history)
        times = torch.where(fresh, now[:, None], times)
        stored = carry["stored"] + store.long()
        forecast = trend_forecast(history, times, stored.clamp(max=self.params.window), now + self.params.horizon)
        return forecast, stored > 0, {"history": history, "times": times, "stored": stored}


def trend_forecast(history: torch.Tensor, times: torch.Tensor, count: torch.Tensor,
                   at: torch.Tensor) -> torch.Tensor:
    """Least-squares line through the first ``count`` [B] entries of ``history`` [B, W, K] over ``times`` [B, W],
    evaluated at ``at`` [B]; clipped to [0, 1]. One entry: that entry (no slope)."""
    w = (torch.arange(history.shape[1], device=history.device)[None] < count[:, None]).to(torch.float64)
    n = w.sum(1).clamp(min=1)
    t_mean = (times * w).sum(1) / n
    y_mean = (history * w[..., None]).sum(1) / n[:, None]
    dt = (times - t_mean[:, None]) * w
    spread = dt.square().sum(1)
    slope = (dt[..., None] * (history - y_mean[:, None])).sum(1) / spread.clamp(min=1e-300)[:, None]
    slope = torch.where((spread > 0)[:, None], slope, 0.0)
    return (y_mean + slope * (at - t_mean)[:, None]).clamp(0, 1)
