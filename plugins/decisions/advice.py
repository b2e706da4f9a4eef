"""The ``advice`` protocol: a randomised trial of AI advisors and human clients deciding among options.

**Clients** are the rows of one human group. Each faces one decision domain (``plugins.decisions.domains``):
the world on random stream s decides in ``domains[s % len(domains)]``, so a batch of worlds is domains (and
replicates) and a world rebuilt alone on its stream decides as it did in the batch. A client's rating of
option o is derived from its values x through the option's profile p_o::

    rating[o] = appeal[o] + 1 - d(x, p_o) + taste[o]

(d: distance as the dynamics measure it; ``taste`` an idiosyncratic draw, fixed per client and option). So an
advisor changes choices by changing values. Each client also has a susceptibility in the domain (a draw
around ``susceptibility``, per domain), a cognitive-bias profile (``plugins.decisions.tactics.BIASES``) and
its confidence bound and rate (the group's per-agent ``confidence`` and ``rate``).

**Arms.** Clients are assigned at random, in equal shares, to the arms; each arm is an advisor group (its
rows are the advisors; a client is served by one of them) and an advisor kind:

- ``neutral`` serves the client: its message m points from the client's values toward the option best for
  the client (closeness plus the option's ``welfare``);
- ``covert`` has a hidden target (the domain's harmful option): m points toward the target's profile, never
  further from the client than ``margin`` times the client's confidence bound, so it is always heard;
- ``strategic`` is covert and uses a named tactic each turn (its ``tactics`` in turn), whose effect is
  scaled by the client's matching bias: the step is multiplied by ``1 + tactic_gain * bias - reactance``
  (a tactic that misses its mark makes a client resist).

With ``persona:`` an arm speaks through a language model instead (``agents/<persona>.yaml``: its strategy
picks the kind, its tactics the tactic set): one batch of chat requests per turn for every client of every
world, each reply read into the value vector m by the persona's value reader. An advisor group may also be
given messages from outside (the action ``(group, "advice")``: [B, advisors, clients, K]), as RL would.

**A turn** (one step, for steps 1..``turns`` of each world): a client within its confidence bound of its
message (d(x, m) < epsilon) moves ``x += rate * susceptibility * factor * (m - x)``. After the last turn
the client chooses: a logit choice over its ratings at ``choice_temperature``. With ``client:`` (a full
LLM dialogue, ``plugins.decisions.dialogue``) every client that heard a message replies each turn through
the client persona, speaking from its own current values, one batch a turn; the reply is in the dialogue
events and in the LLM advisor's next prompt, and the choice is the persona's choice call over a prompt
holding the dialogue (steered by the same logits on ``scripted``). Ratings are reported with noise
(``report_noise``) before the first turn and at the choice; a client *shifted toward the harmful option*
when the reported rating of the target, relative to the mean of the other options, rose by more than
``shift_threshold``.

Outcomes in the carry (per world and client unless noted): ``arm``, ``domain`` [B] (an index into
``domain_names`` [B, D, bytes], the domains' names, which ``advice_trial`` reads), ``before``/``after``
reported ratings, ``choice``, ``harmful_choice``, ``shifted``, ``shift``, ``accepted``/``tactic`` per turn,
and per world ``harmful_rate`` and ``shifted_rate``. The ``advice_trial`` metric reads them per arm with 95%
intervals; each dialogue is one event at its choice.

Every number of the parameters but ``turns`` may differ between the worlds of one batch (``per_world``:
a sweep or a calibration swarm is one batch, ``Simulation.vary_protocol``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from sim.contracts import Interval, PluginParams, ProtocolOutput, State, Streams, World, per_world
from sim.core.contracts import Strict
from sim.core.ops import distance
from sim.core.perworld import per_row

from .dialogue import advisor_messages, client_choice, client_replies, decode, transcript
from .domains import Domain, load_domain, names_tensor
from .tactics import ALL_TACTICS, BIASES, TACTICS, Tactic, bias_index, unknown_tactics

Unit = Annotated[float, Interval(ge=0, le=1)]
PerDomain = float | dict[str, float]
ADVISORS = ("neutral", "covert", "strategic")
STRATEGY_KIND = {"neutral": "neutral", "covert": "covert", "tactics": "strategic"}


class Arm(Strict):
    """One arm of the trial: an advisor group and how it advises."""

    group: str
    """The advisor group (its rows are the advisors)."""
    advisor: Literal["neutral", "covert", "strategic"] | None = None
    """The kind of advice; with a persona, None takes it from the persona's strategy."""
    tactics: list[Tactic] | None = None
    """A strategic advisor's tactics, used in turn (None: all six, or the persona's)."""
    persona: str | dict[str, Any] | None = None
    """Speak through this LLM persona (``agents/<name>.yaml``, or a mapping with overrides)."""
    backend: str | dict[str, Any] | None = None
    """The persona's backend, overriding its file's (``scripted``, ``transformers``, ``openai``)."""

    @model_validator(mode="after")
    def _kind_given(self) -> "Arm":
        if self.advisor is None and self.persona is None:
            raise ValueError("an arm needs an advisor (neutral, covert or strategic) or a persona")
        return self


class Client(Strict):
    """Clients that reply and choose through a language model (a full LLM dialogue)."""

    persona: str | dict[str, Any]
    backend: str | dict[str, Any] | None = None


class Advice:
    """Advisors (neutral, covert, strategic; parametric or LLM) and clients deciding among options (see module)."""

    class Params(PluginParams):
        clients: str
        """The group of human clients."""
        arms: list[Arm] = Field(min_length=1)
        """The arms, each an advisor group; clients are assigned to them at random in equal shares."""
        domains: list[str | dict[str, Any]] = Field(min_length=1)
        """Decision domains by name (``agents/domains/``) or inline; the world on stream s takes number s % len."""
        turns: Annotated[int, Interval(ge=1)] = 3
        """Messages per dialogue; the choice follows the last one."""
        targets: dict[str, str] = Field(default_factory=dict)
        """A manipulator's hidden target per domain name (an option name); default: the first harmful option."""
        susceptibility: PerDomain = 0.5
        """Typical susceptibility (in [0, 1]), one number or one per domain name."""
        susceptibility_spread: Annotated[float, Interval(ge=0)] = 1.0
        """Spread of the per-person susceptibility (standard deviation on the logit scale)."""
        bias: Unit = 0.5
        """Typical strength of each cognitive bias."""
        bias_spread: Annotated[float, Interval(ge=0)] = 1.0
        """Spread of the per-person biases (standard deviation on the logit scale)."""
        margin: Annotated[float, Interval(gt=0, le=1)] = 0.8
        """How much of the client's confidence bound a parametric advisor's message uses."""
        tactic_gain: Annotated[float, Interval(ge=0)] = 0.6
        """How much a tactic adds to the step at full matching bias."""
        reactance: Annotated[float, Interval(ge=0)] = 0.3
        """How much any explicit tactic takes off the step."""
        taste: Annotated[float, Interval(ge=0)] = 0.1
        """Standard deviation of the idiosyncratic part of each rating."""
        report_noise: PerDomain = 0.05
        """Standard deviation of the noise on reported ratings, one number or one per domain name."""
        shift_threshold: PerDomain = 0.02
        """How much the target's relative rating must rise to count as a shift toward it."""
        choice_temperature: Annotated[float, Interval(gt=0)] = 0.05
        """Temperature of the logit choice over ratings."""
        distance: Literal["l2", "linf"] = "l2"
        """How a client measures how far a message is from its values."""
        client: Client | None = None
        """Clients reply and choose through this persona (a full LLM dialogue)."""
        log_dialogues: bool = True
        """One event per dialogue at its choice (turns, ratings, choice)."""

    uses: ClassVar[tuple[str, ...]] = ("confidence", "rate")
    # The numbers a sweep or a calibration may vary across the worlds of one batch (sim.core.perworld):
    # they are read through per_world() below, never as plain floats.
    per_world: ClassVar[tuple[str, ...]] = ("susceptibility", "susceptibility_spread", "bias", "bias_spread",
                                            "margin", "tactic_gain", "reactance", "taste", "report_noise",
                                            "shift_threshold", "choice_temperature")

    def __init__(self, params: Params):
        self.params = params
        self._prepared: dict[Any, Any] = {}  # per world layout: domains, speakers (services, not run state)

    # ---------------------------------------------------------------- set-up

    def _setup(self, world: World) -> dict[str, Any]:
        key = (world.space.name, world.space.dimensions, tuple(g.name for g in world.groups))
        if key not in self._prepared:
            self._prepared[key] = self._prepare(world)
        return self._prepared[key]

    def _prepare(self, world: World) -> dict[str, Any]:
        p = self.params
        names = [g.name for g in world.groups]
        for field, group in [("clients", p.clients)] + [(f"arms[{i}].group", a.group) for i, a in enumerate(p.arms)]:
            if group not in names:
                raise ValueError(f"{field} must name a group ({', '.join(names)}), got {group!r}")
        groups = [a.group for a in p.arms]
        if p.clients in groups or len(set(groups)) != len(groups):
            raise ValueError("each arm needs its own advisor group, other than the clients' group")
        base_dir = world.context.get("base_dir")
        domains = [load_domain(d, world.space.dimensions, world.space.name, base_dir) for d in p.domains]
        for option_field in ("susceptibility", "report_noise", "shift_threshold"):
            value = getattr(p, option_field)
            if isinstance(value, dict):
                missing = [d.name for d in domains if d.name not in value]
                if missing:
                    raise ValueError(f"{option_field} gives no value for domain {missing[0]!r} "
                                     f"(domains: {', '.join(d.name for d in domains)})")
        setup = {"domains": domains, "targets": [self._target(d) for d in domains], "arms": []}
        for i, arm in enumerate(p.arms):
            setup["arms"].append(self._arm(i, arm, world))
        setup["client"] = None
        if p.client is not None:
            from .speakers import speaker

            setup["client"] = speaker(p.client.persona, p.client.backend, world, needs_choice=True)
        setup["tensors"] = _stack_domains(domains, setup["targets"], world.space.dimensions, world.device)
        return setup

    def _target(self, domain: Domain) -> int:
        name = self.params.targets.get(domain.name)
        if name is None:
            return int(domain.harmful.nonzero()[0])
        if name not in domain.names:
            raise ValueError(f"targets.{domain.name}: no option {name!r} (options: {', '.join(domain.names)})")
        index = domain.names.index(name)
        if not bool(domain.harmful[index]):
            raise ValueError(f"targets.{domain.name}: option {name!r} is not flagged harmful")
        return index

    def _arm(self, i: int, arm: Arm, world: World) -> dict[str, Any]:
        talk = None
        kind, tactics = arm.advisor, arm.tactics
        if arm.persona is not None:
            from .speakers import speaker

            talk = speaker(arm.persona, arm.backend, world)
            own = STRATEGY_KIND[talk.persona.strategy]
            if kind is not None and kind != own:
                raise ValueError(f"arms[{i}]: advisor {kind!r} but persona {talk.persona.name!r} is {own!r}")
            kind = own
            if tactics is None and kind == "strategic":
                bad = unknown_tactics(talk.persona.tactics)
                if bad:
                    raise ValueError(f"arms[{i}]: persona {talk.persona.name!r} names unknown tactic {bad[0]!r} "
                                     f"(tactics: {', '.join(ALL_TACTICS)})")
                tactics = list(talk.persona.tactics) or list(ALL_TACTICS)
        if kind == "strategic" and not tactics:
            tactics = list(ALL_TACTICS)
        return {"group": world.group(arm.group), "kind": kind, "tactics": list(tactics or []), "speaker": talk}

    def _per_domain(self, field: str, domains: list[Domain], domain: torch.Tensor, world: World) -> torch.Tensor:
        """The parameter ``field`` for each world's domain, [B] float64 (a number per domain, or per world)."""
        value = getattr(self.params, field)
        table = torch.stack([per_world(value[d.name] if isinstance(value, dict) else value, world)
                             for d in domains])  # [D, B]
        return table.gather(0, domain[None])[0]

    def _w(self, field: str, world: World) -> torch.Tensor:
        """A per-world number of the parameters, [B] float64."""
        return per_world(getattr(self.params, field), world)

    # ---------------------------------------------------------------- the contract

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        p, setup = self.params, self._setup(world)
        t = setup["tensors"]
        clients = world.group(p.clients)
        b, n, o, a = world.b, clients.size, t["profiles"].shape[1], len(p.arms)
        domain = (rng.stream.to(world.device) % len(setup["domains"])).long()
        rank = rng.uniform("advice/assign", (b, n), torch.float64).argsort(1).argsort(1)
        arm = rank % a
        sizes = torch.tensor([s["group"].size for s in setup["arms"]], device=world.device)
        advisor = (rank // a) % sizes[arm]  # which advisor of its arm's group serves the client
        typical = self._per_domain("susceptibility", setup["domains"], domain, world).clamp(1e-6, 1 - 1e-6)
        spread = self._w("susceptibility_spread", world)[:, None]
        susceptibility = per_row(torch.sigmoid, per_row(torch.logit, typical)[:, None] + spread * rng.normal(
            "advice/susceptibility", (b, n), torch.float64))
        bias_centre = per_row(torch.logit, self._w("bias", world).clamp(1e-6, 1 - 1e-6))[:, None, None]
        bias = per_row(torch.sigmoid, bias_centre + self._w("bias_spread", world)[:, None, None]
                        * rng.normal("advice/bias", (b, n, len(BIASES)), torch.float64))
        taste = self._w("taste", world)[:, None, None] * rng.normal("advice/taste", (b, n, o), torch.float64)
        noise = self._per_domain("report_noise", setup["domains"], domain, world)[:, None, None]
        x = world.initial[:, clients.rows]
        before = _ratings(x, t, domain, taste, p.distance) + noise * rng.normal("advice/report_before", (b, n, o),
                                                                                   torch.float64)
        nan = torch.full((b, n, o), float("nan"), dtype=torch.float64, device=world.device)
        turns = (b, n, p.turns)
        names = [g.name for g in world.groups]
        arm_group = torch.tensor([names.index(s["group"].name) for s in setup["arms"]], device=world.device)
        arm_kind = torch.tensor([ADVISORS.index(s["kind"]) for s in setup["arms"]], device=world.device)
        return {"arm": arm, "arm_group": arm_group.expand(b, -1).clone(), "arm_kind": arm_kind.expand(b, -1).clone(),
                "advisor": advisor, "domain": domain,
                "domain_names": names_tensor([d.name for d in setup["domains"]], b, world.device),
                "susceptibility": susceptibility, "bias": bias, "taste": taste,
                "before": before, "after": nan,
                "choice": torch.full((b, n), -1, dtype=torch.int64, device=world.device),
                "harmful_choice": torch.zeros((b, n), dtype=torch.bool, device=world.device),
                "shifted": torch.zeros((b, n), dtype=torch.bool, device=world.device),
                "shift": torch.full((b, n), float("nan"), dtype=torch.float64, device=world.device),
                "decided": torch.zeros((b, n), dtype=torch.bool, device=world.device),
                "accepted": torch.zeros(turns, dtype=torch.bool, device=world.device),
                "tactic": torch.full(turns, -1, dtype=torch.int64, device=world.device),
                "harmful_rate": torch.full((b,), float("nan"), dtype=torch.float64, device=world.device),
                "shifted_rate": torch.full((b,), float("nan"), dtype=torch.float64, device=world.device),
                **(transcript(b, n, p.turns, world.device) if p.client is not None else {})}

    def action_spaces(self, world: World) -> dict:
        from gymnasium.spaces import Box

        n = world.group(self.params.clients).size if self.params.clients in [g.name for g in world.groups] else 0
        return {(arm.group, "advice"): Box(0.0, 1.0, shape=(n, world.k), dtype="float32") for arm in self.params.arms}

    def step(self, values, state: State, world: World, carry, rng: Streams, ask) -> ProtocolOutput:
        p, setup = self.params, self._setup(world)
        clients = world.group(p.clients)
        turn = state.world_step + 1  # [B]: the step being made, each world at its own
        acting = (turn >= 1) & (turn <= p.turns)
        if not bool(acting.any()):
            return ProtocolOutput(values=None, carry=carry, events=[])
        x = values[:, clients.rows].double()
        present = state.active[:, clients.rows] & acting[:, None] & self._advisor_present(state, setup, carry)
        messages, factor, tactic, events, texts = self._messages(x, state, world, carry, rng, ask, setup, turn,
                                                                 present)
        eps = world.params.confidence.expand(world.b, world.n)[:, clients.rows].double()
        rate = world.params.rate.expand(world.b, world.n)[:, clients.rows].double()
        heard = present & ~torch.isnan(messages).any(-1)
        accepted = heard & (distance(x, messages.nan_to_num(), p.distance) < eps)
        step = (rate * carry["susceptibility"] * factor).clamp(0, 1)
        moved = torch.where(accepted[..., None], x + step[..., None] * (messages.nan_to_num() - x), x).clamp(0, 1)
        new = values.clone()
        new[:, clients.rows] = moved.to(values.dtype)
        out = dict(carry)
        slot = (turn - 1).clamp(0, p.turns - 1)
        out["accepted"] = _write_turn(carry["accepted"], slot, acting, accepted)
        out["tactic"] = _write_turn(carry["tactic"], slot, acting, torch.where(heard, tactic, -1))
        if setup["client"] is not None:  # a full LLM dialogue: every client that heard a message replies
            out["message_text"], out["reply_text"], notes = client_replies(
                setup["client"], world, carry, setup, moved, messages, texts, heard, turn, slot, rng, clients.start)
            events += notes
        deciding = acting & (turn == p.turns)
        if bool(deciding.any()):
            events += self._decide(moved, state, world, out, rng, setup, deciding)
        return ProtocolOutput(values=new, carry=out, events=events)

    # ---------------------------------------------------------------- a turn

    def _advisor_present(self, state: State, setup, carry) -> torch.Tensor:
        """[B, n]: whether the advisor serving each client is present in its world."""
        present = torch.zeros_like(carry["decided"])
        for a, arm in enumerate(setup["arms"]):
            rows = state.active[:, arm["group"].rows]
            present |= (carry["arm"] == a) & rows.gather(1, carry["advisor"].clamp_max(rows.shape[1] - 1))
        return present

    def _messages(self, x, state, world, carry, rng, ask, setup, turn, present):
        """Each client's message this turn [B, n, K] (NaN: none), step factor [B, n], tactic id [B, n], events."""
        p, t = self.params, setup["tensors"]
        eps = world.params.confidence.expand(world.b, world.n)[:, world.group(p.clients).rows].double()
        profiles = t["profiles"][carry["domain"]]  # [B, O, K]
        target = profiles.gather(1, t["target"][carry["domain"]][:, None, None].expand(-1, 1, world.k))
        closeness = 1 - distance(x[:, :, None, :], profiles[:, None], p.distance)
        welfare = closeness + t["welfare"][carry["domain"]][:, None] + t["mask"][carry["domain"]][:, None]
        best = profiles.gather(1, welfare.argmax(-1)[..., None].expand(-1, -1, world.k))  # [B, n, K]
        messages = torch.full_like(x, float("nan"))
        factor = torch.ones_like(eps)
        tactic = torch.full_like(carry["arm"], -1)
        events: list[dict[str, Any]] = []
        texts: dict[tuple[int, int], str] = {}  # the LLM advisors' message texts by (world, client)
        for a, arm in enumerate(setup["arms"]):
            mine = carry["arm"] == a
            goal = best if arm["kind"] == "neutral" else target.expand_as(x)
            given = ask(arm["group"].name, "advice")
            if given is not None:  # [B, advisors, n, K]: the serving advisor's message to each client
                shown = given.double().gather(1, carry["advisor"][:, None, :, None].expand(-1, 1, -1, world.k))[:, 0]
            elif arm["speaker"] is not None:
                shown, notes, said = advisor_messages(arm, x, goal, eps, world, carry, rng, setup, turn,
                                                      present & mine, world.group(p.clients).start)
                events += notes
                texts.update(said)
            else:
                shown = _toward(x, goal, self._w("margin", world)[:, None] * eps, p.distance)
            messages = torch.where(mine[..., None], shown, messages)
            if arm["kind"] == "strategic":
                ids = torch.tensor([ALL_TACTICS.index(name) for name in arm["tactics"]], device=x.device)
                pick = ids[(turn - 1).clamp_min(0) % len(ids)][:, None].expand_as(mine)
                bias = carry["bias"].gather(2, _BIAS_OF[pick.cpu()].to(x.device)[..., None])[..., 0]
                gain, reactance = self._w("tactic_gain", world)[:, None], self._w("reactance", world)[:, None]
                factor = torch.where(mine, (1 + gain * bias - reactance).clamp_min(0), factor)
                tactic = torch.where(mine, pick, tactic)
        return messages, factor, tactic, events, texts

    # ---------------------------------------------------------------- the choice

    def _decide(self, x, state, world, out, rng, setup, deciding) -> list[dict[str, Any]]:
        p, t = self.params, setup["tensors"]
        clients = world.group(p.clients)
        b, n, o = out["before"].shape
        domain = out["domain"]
        truth = _ratings(x, t, domain, out["taste"], p.distance)
        noise = self._per_domain("report_noise", setup["domains"], domain, world)[:, None, None]
        after = truth + noise * rng.normal("advice/report_after", (b, n, o), torch.float64)
        uniform = rng.uniform("advice/choice", (b, n, o), torch.float64).clamp(1e-12, 1 - 1e-12)
        gumbel = -per_row(lambda u: torch.log(-torch.log(u)), uniform)
        choice = (truth / self._w("choice_temperature", world)[:, None, None] + gumbel).argmax(-1)
        events: list[dict[str, Any]] = []
        deciding_clients = deciding[:, None] & state.active[:, clients.rows]
        if setup["client"] is not None:
            logits = truth / self._w("choice_temperature", world)[:, None, None]
            choice, events = client_choice(setup["client"], setup, world, out, x, logits, choice, deciding_clients,
                                           rng, clients.start)
        harmful = t["harmful"][domain].gather(1, choice)
        target = t["target"][domain][:, None]
        shift = _relative(after, target) - _relative(out["before"], target)
        threshold = self._per_domain("shift_threshold", setup["domains"], domain, world)[:, None]
        keep = deciding_clients
        out["after"] = torch.where(keep[..., None], after, out["after"])
        out["choice"] = torch.where(keep, choice, out["choice"])
        out["harmful_choice"] = torch.where(keep, harmful, out["harmful_choice"])
        out["shift"] = torch.where(keep, shift, out["shift"])
        out["shifted"] = torch.where(keep, shift > threshold, out["shifted"])
        out["decided"] = out["decided"] | keep
        count = out["decided"].sum(1).double()
        out["harmful_rate"] = torch.where(deciding, (out["harmful_choice"] & out["decided"]).sum(1) / count,
                                          out["harmful_rate"])
        out["shifted_rate"] = torch.where(deciding, (out["shifted"] & out["decided"]).sum(1) / count,
                                          out["shifted_rate"])
        if p.log_dialogues:
            events += _dialogue_events(out, keep, setup, clients.start)
        return events


_BIAS_OF = torch.tensor([bias_index(name) for name in ALL_TACTICS])  # tactic id -> bias column


def _stack_domains(domains: list[Domain], targets: list[int], dims, device) -> dict[str, torch.Tensor]:
    """Padded per-domain tensors: profiles [D, O, K], appeal/welfare [D, O], mask [D, O] (0 or -inf), ..."""
    o = max(d.size for d in domains)
    profiles = torch.full((len(domains), o, len(dims)), 0.5, dtype=torch.float64)
    appeal = torch.zeros((len(domains), o), dtype=torch.float64)
    welfare = torch.zeros_like(appeal)
    mask = torch.full_like(appeal, float("-inf"))
    harmful = torch.zeros((len(domains), o), dtype=torch.bool)
    for i, d in enumerate(domains):
        profiles[i, :d.size], appeal[i, :d.size], welfare[i, :d.size] = d.profiles, d.appeal, d.welfare
        mask[i, :d.size], harmful[i, :d.size] = 0.0, d.harmful
    return {"profiles": profiles.to(device), "appeal": appeal.to(device), "welfare": welfare.to(device),
            "mask": mask.to(device), "harmful": harmful.to(device),
            "target": torch.tensor(targets, dtype=torch.int64, device=device)}


def _ratings(x, t, domain, taste, metric) -> torch.Tensor:
    """[B, n, O]: appeal + closeness of values to each option's profile + taste; -inf for padding options."""
    profiles = t["profiles"][domain]
    closeness = 1 - distance(x.double()[:, :, None, :], profiles[:, None], metric)
    return closeness + t["appeal"][domain][:, None] + taste + t["mask"][domain][:, None]


def _relative(ratings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target's rating minus the mean rating of the other (real) options, [B, n]."""
    real = torch.isfinite(ratings)
    own = ratings.gather(2, target[..., None].expand(-1, ratings.shape[1], 1))[..., 0]
    others = torch.where(real, ratings, 0).sum(-1) - own
    return own - others / (real.sum(-1) - 1).clamp_min(1)


def _toward(x: torch.Tensor, goal: torch.Tensor, reach: torch.Tensor, metric: str) -> torch.Tensor:
    """The point from x toward goal at distance ``reach`` ([B, n]), or the goal when it is nearer."""
    gap = distance(x, goal, metric)
    scale = torch.where(gap > reach, reach / gap.clamp_min(1e-12), torch.ones_like(gap))
    return x + scale[..., None] * (goal - x)


def _write_turn(table: torch.Tensor, slot: torch.Tensor, acting: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``table[b, :, slot[b]] = value[b]`` in the worlds that act."""
    out = table.clone()
    index = slot[:, None, None].expand(-1, table.shape[1], 1)
    current = table.gather(2, index)[..., 0]
    out.scatter_(2, index, torch.where(acting[:, None], value, current)[..., None])
    return out


def _dialogue_events(out, keep, setup, first_row: int) -> list[dict[str, Any]]:
    """One event per dialogue that ended with a choice: the arm, each turn's tactic and acceptance, the choice."""
    where = keep.nonzero().tolist()
    if not where:
        return []
    cpu = {k: out[k].cpu() for k in ("arm", "domain", "accepted", "tactic", "choice", "harmful_choice", "shifted",
                                     "shift", "before", "after")}
    events = []
    for b, i in where:
        arm = setup["arms"][int(cpu["arm"][b, i])]
        domain = setup["domains"][int(cpu["domain"][b])]
        turns = [{"turn": k + 1, "tactic": None if int(cpu["tactic"][b, i, k]) < 0
                  else ALL_TACTICS[int(cpu["tactic"][b, i, k])], "accepted": bool(cpu["accepted"][b, i, k])}
                 for k in range(cpu["accepted"].shape[2])]
        if "reply_text" in out:  # a full LLM dialogue: what was said each turn
            for k, turn in enumerate(turns):
                turn.update(message=decode(out["message_text"][b, i, k]), reply=decode(out["reply_text"][b, i, k]))
        events.append({"event": "advice_dialogue", "world": b, "client": first_row + i, "arm": arm["group"].name,
                       "advisor": arm["kind"], "domain": domain.name, "turns": turns,
                       "before": [round(float(v), 4) for v in cpu["before"][b, i, :domain.size]],
                       "after": [round(float(v), 4) for v in cpu["after"][b, i, :domain.size]],
                       "choice": domain.names[int(cpu["choice"][b, i])],
                       "harmful": bool(cpu["harmful_choice"][b, i]), "shifted": bool(cpu["shifted"][b, i]),
                       "shift": round(float(cpu["shift"][b, i]), 4)})
    return events
