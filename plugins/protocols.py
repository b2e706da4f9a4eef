"""Built-in protocols (step 1 of the engine's step) and the metric that logs their outcomes.

Each class is a ``valuesim.protocols`` plugin (see ``sim.contracts.Protocol``):
it keeps batched state beside the values, acts at its cadence, asks groups for
actions declared as Gymnasium spaces, and records outcomes in
``state.protocols[name]`` that the ``protocol_outcome`` metric logs.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch

from sim.contracts import Interval, PluginParams, ProtocolOutput, Reading, State, Streams, World, per_world
from sim.core.ops import distance


class Broadcast:
    """A group addresses a random share of another group at a cadence; listeners within their bound move.

    Every ``every`` steps, each present member of the audience is reached with
    probability ``share`` by one speaker picked uniformly among the present
    speakers (a speaker's policy may choose its own share: the action
    ``(speakers, "share")``, a number in [0, 1] per speaker). A reached
    listener i hears what its speaker expresses this step, m, and if
    d(x_i, m) < epsilon_i moves x_i += mu_i (m - x_i) (its own confidence
    bound and rate, as in bounded-confidence dynamics). Outcomes per world:
    ``reached`` and ``accepted`` (listeners this step), ``heard`` (how often
    each listener was reached so far).
    """

    class Params(PluginParams):
        speakers: str
        """The group that speaks."""
        audience: str | None = None
        """The group addressed; None: every agent outside the speakers' group."""
        share: Annotated[float, Interval(ge=0, le=1)] = 0.1
        """Chance that a listener is reached in a step the protocol acts, unless the speaker chooses."""
        every: Annotated[int, Interval(ge=1)] = 1
        """Act every this many steps (of each world)."""
        distance: Literal["l2", "linf"] = "l2"
        """How listeners measure how far the message is from their values."""
        log_events: bool = True
        """Write one event per acting step with each world's counts."""

    uses: ClassVar[tuple[str, ...]] = ("confidence", "rate")
    per_world: ClassVar[tuple[str, ...]] = ("share",)  # a sweep over share is one batch (sim.core.perworld)

    def __init__(self, params: Params):
        self.params = params

    def _rows(self, world: World) -> tuple[slice, torch.Tensor]:
        names = [g.name for g in world.groups]
        for field in ("speakers", "audience"):
            value = getattr(self.params, field)
            if value is not None and value not in names:
                raise ValueError(f"{field} must name a group ({', '.join(names)}), got {value!r}")
        speakers = world.group(self.params.speakers).rows
        if self.params.audience is not None:
            audience = world.group(self.params.audience)
            if audience.name == self.params.speakers:
                raise ValueError("speakers and audience must be different groups")
            return speakers, torch.arange(audience.start, audience.stop, device=world.device)
        every = torch.arange(world.n, device=world.device)
        return speakers, every[(every < speakers.start) | (every >= speakers.stop)]

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        _, listeners = self._rows(world)
        zeros = torch.zeros(world.b, dtype=torch.int64, device=world.device)
        return {"reached": zeros, "accepted": zeros.clone(),
                "heard": torch.zeros((world.b, listeners.numel()), dtype=torch.int64, device=world.device)}

    def action_spaces(self, world: World) -> dict:
        from gymnasium.spaces import Box

        return {(self.params.speakers, "share"): Box(0.0, 1.0, shape=(), dtype="float32")}

    def step(self, values, state: State, world: World, carry, rng: Streams, ask) -> ProtocolOutput:
        p = self.params
        speakers, listeners = self._rows(world)
        b, n_listen = world.b, listeners.numel()
        due = (state.world_step + 1) % p.every == 0  # [B]: each world at its own step
        speaking = state.active[:, speakers]
        n_speak = speaking.sum(1)
        # fixed-shape draws: which present speaker (by rank) each listener would hear, and whether it is reached
        purpose = f"broadcast/{p.speakers}/{p.audience or '*'}"  # two broadcasts draw apart
        rank = (rng.uniform(f"{purpose}/speaker", (b, n_listen), torch.float64) * n_speak[:, None]).long()
        order = torch.cumsum(speaking.long(), dim=1)  # rank r is the speaker where the running count reaches r + 1
        pick = torch.searchsorted(order, (rank + 1).clamp_max(n_speak[:, None].clamp_min(1)))
        pick = pick.clamp_max(speaking.shape[1] - 1)
        share = ask(p.speakers, "share")
        chance = per_world(p.share, world)[:, None].expand(b, n_listen) if share is None \
            else share.double().clamp(0, 1).gather(1, pick)
        reached = rng.uniform(f"{purpose}/reach", (b, n_listen), torch.float64) < chance
        reached &= due[:, None] & (n_speak > 0)[:, None] & state.active[:, listeners]
        message = ask(p.speakers, "express").gather(1, pick[..., None].expand(-1, -1, world.k))
        x = values[:, listeners]
        eps = world.params.confidence.expand(b, world.n)[:, listeners]
        mu = world.params.rate.expand(b, world.n)[:, listeners].to(x.dtype)
        accepted = reached & (distance(x, message, p.distance) < eps.double())
        moved = torch.where(accepted[..., None], x + mu[..., None] * (message.to(x) - x), x)
        new = values.clone()
        new[:, listeners] = moved
        out = {"reached": reached.sum(1), "accepted": accepted.sum(1), "heard": carry["heard"] + reached.long()}
        events = []
        if p.log_events and bool(due.any()):
            events.append({"event": "broadcast", "speakers": p.speakers, "reached": out["reached"].tolist(),
                           "accepted": out["accepted"].tolist()})
        return ProtocolOutput(values=new, carry=out, events=events)


class ProtocolOutcome:
    """Logs a protocol's per-world outcome (``state.protocols[protocol][outcome]``, one number per world).

    For example ``{protocol_outcome: {protocol: broadcast, outcome: accepted}}``.
    Outcomes with one entry per agent (``heard``) are logged as their mean.
    """

    class Params(PluginParams):
        protocol: str
        """The protocol's name in the scenario (a second protocol of the same name is ``<name>_2``)."""
        outcome: str
        """Which of its outcomes."""

    def __init__(self, params: Params):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        p = self.params
        if p.protocol not in state.protocols:
            raise ValueError(f"no protocol named {p.protocol!r} in this scenario "
                             f"(protocols: {', '.join(state.protocols) or 'none'})")
        outcomes = state.protocols[p.protocol]
        if p.outcome not in outcomes:
            raise ValueError(f"protocol {p.protocol!r} has no outcome {p.outcome!r} (outcomes: {', '.join(outcomes)})")
        value = outcomes[p.outcome].double()
        value = value.reshape(world.b, -1).mean(1)
        return [Reading(f"{p.protocol}.{p.outcome}", value[:, None, None], ("all",))], None
