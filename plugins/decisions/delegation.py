"""The ``delegation`` protocol: principals' shopping agents, who may serve themselves (principal-agent).

Principal i (a row of the ``principals`` group) is served by agent i (the same position in the ``agents``
group). Every step is one purchase: each world draws a catalogue of ``items`` with a price and the
``attributes`` (quality and value-laden ones such as sustainability or origin), each in [0, 1]. The principal
has utility weights w_P over the attributes (drawn once), a budget, and sees only some attributes: each
(principal, attribute) is hidden with probability ``asymmetry`` (the information asymmetry). The agent has its
own weights w_A = (1 - conflict) w_P + conflict w_own (w_own drawn once per agent: ``conflict`` is how far
its prior alignment departs from the principal). Utilities are ``w . attributes - price_weight * price``;
items over the budget cannot be bought.

The agent buys ``argmax beta U_P + (1 - beta) U_A`` (plus Gumbel noise of scale ``noise``) where

- a ``rigid`` agent keeps its prior weight on the principal, ``beta = prior``;
- a ``nuanced`` agent weighs the principal more under monitoring and less when the principal sees less:
  ``beta = clip(prior + monitoring_gain * audit * penalty - asymmetry_gain * hidden, 0, 1)``, with
  ``hidden`` the share of attributes its principal cannot see.

With ``persona:`` the agent shops through a language model (``agents/shopping_agent.yaml``): one batch of
choice calls per step for every pair of every world, the item list as options, the agent's parametric scores
as the ``scripted`` backend's logits. The agent's pick may also be written in from outside (the action
``(agents, "pick")``, an item index per agent), as RL would.

An *override* is a pick other than the one the principal would make with full information; the *loss* is
the principal's utility of its full-information pick minus that of the agent's. Each purchase is audited
with probability ``audit``; an audit, or the principal's own view of what it can see, catches an override
that costs the principal utility, and each catch costs the agent ``penalty``.

Outcomes in the carry: per pair ``hidden``, and counts so far ``purchases``, ``overrides``, ``loss``,
``audits``, ``caught``, ``penalties``; per world this step's ``override_rate``, ``loss_mean``,
``audit_rate``, ``penalty_rate``. The ``delegation_trial`` metric logs them with 95% intervals, two-way
cluster-robust by pair and by step, from the running sums kept per world for each of the :data:`OUTCOMES`
(``[B, 6]``, in that order): ``step_sq`` (the sum over steps of the square of the step's world total),
``step_cross`` (of the step's total times its purchases), ``purchase_sq`` (the sum over purchases of each
outcome squared), and ``steps`` ([B], steps with a purchase). A pair's totals are the per-pair counts above.

Every number of the parameters but ``items`` (the catalogue's size, a shape) may differ between the worlds
of one batch (``per_world``: a sweep over asymmetry or a calibration swarm is one batch,
``Simulation.vary_protocol``); world b then computes what the single-world run with its values computes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from sim.contracts import Interval, PluginParams, ProtocolOutput, State, Streams, World, per_world
from sim.core.perworld import per_row

Unit = Annotated[float, Interval(ge=0, le=1)]

OUTCOMES = ("purchases", "overrides", "loss", "audits", "caught", "penalties")
"""Each purchase's outcomes, in the order of the running sums' last axis (purchases first: the denominator)."""


class Delegation:
    """Shopping agents buying for principals under information asymmetry, audits and penalties (see module)."""

    class Params(PluginParams):
        principals: str
        """The group of principals."""
        agents: str
        """The group of their agents (as many as principals: agent i serves principal i)."""
        agent: Literal["nuanced", "rigid"] = "nuanced"
        """How the agent weighs its principal: with monitoring and asymmetry (nuanced) or fixed (rigid)."""
        items: Annotated[int, Interval(ge=2)] = 12
        """Items in each catalogue."""
        attributes: list[str] = Field(default_factory=lambda: ["quality", "sustainability", "origin", "durability"],
                                      min_length=1)
        """The items' attributes besides price, each in [0, 1]."""
        asymmetry: Unit = 0.0
        """Chance that each attribute is hidden from the principal (the share it cannot see)."""
        conflict: Unit = 0.5
        """How far the agent's own weights depart from its principal's (0: the same utility)."""
        prior: Unit = 0.5
        """The agent's prior weight on its principal's utility (its alignment)."""
        audit: Unit = 0.1
        """Chance that a purchase is audited (all attributes revealed)."""
        penalty: Annotated[float, Interval(ge=0)] = 1.0
        """Cost to the agent of a caught override."""
        monitoring_gain: Annotated[float, Interval(ge=0)] = 1.0
        """A nuanced agent's extra weight on the principal per unit of expected penalty (audit x penalty)."""
        asymmetry_gain: Annotated[float, Interval(ge=0)] = 0.8
        """A nuanced agent's lost weight on the principal per unit of hidden share."""
        price_weight: Annotated[float, Interval(ge=0)] = 0.5
        """Weight of price in both utilities."""
        budget: Annotated[float, Interval(gt=0, le=1)] = 0.7
        """Each principal's budget (a price in [0, 1]); items above it cannot be bought."""
        noise: Annotated[float, Interval(ge=0)] = 0.0
        """Scale of the Gumbel noise on the agent's scores (0: it buys the best for itself)."""
        persona: str | dict[str, Any] | None = None
        """Shop through this LLM persona (``shopping_agent``)."""
        backend: str | dict[str, Any] | None = None
        """The persona's backend, overriding its file's."""
        temperature: Annotated[float, Interval(gt=0)] = 0.05
        """How the agent's scores are turned into a language model's logits (score / temperature)."""
        log_events: bool = True
        """One event per step and world with its counts."""

    uses: ClassVar[tuple[str, ...]] = ()
    # The numbers a sweep or a calibration may vary across the worlds of one batch (sim.core.perworld); each
    # is read through per_world() as [B] float64, never as a plain float. items stays fixed: it is a shape.
    per_world: ClassVar[tuple[str, ...]] = ("asymmetry", "conflict", "prior", "audit", "penalty", "monitoring_gain",
                                            "asymmetry_gain", "price_weight", "budget", "noise", "temperature")

    def __init__(self, params: Params):
        self.params = params
        self._speakers: dict[Any, Any] = {}  # the persona's backend, built once (a service, not run state)

    def _pairs(self, world: World):
        p = self.params
        names = [g.name for g in world.groups]
        for field in ("principals", "agents"):
            if getattr(p, field) not in names:
                raise ValueError(f"{field} must name a group ({', '.join(names)}), got {getattr(p, field)!r}")
        principals, agents = world.group(p.principals), world.group(p.agents)
        if principals.name == agents.name or principals.size != agents.size:
            raise ValueError(f"principals and agents must be two groups of one size, got {principals.size} "
                             f"{principals.name!r} and {agents.size} {agents.name!r}")
        return principals, agents

    def _speaker(self, world: World):
        if self.params.persona is None:
            return None
        key = world.space.name
        if key not in self._speakers:
            from .speakers import speaker

            self._speakers[key] = speaker(self.params.persona, self.params.backend, world, needs_choice=True)
        return self._speakers[key]

    def start(self, world: World, rng: Streams) -> dict[str, torch.Tensor]:
        p = self.params
        principals, _ = self._pairs(world)
        self._speaker(world)
        b, n, a = world.b, principals.size, len(p.attributes)
        w_p = _simplex(rng.uniform("delegation/principal_weights", (b, n, a), torch.float64))
        w_own = _simplex(rng.uniform("delegation/agent_weights", (b, n, a), torch.float64))
        hidden = rng.uniform("delegation/hidden", (b, n, a), torch.float64) < self._w("asymmetry", world)[:, None, None]
        conflict = self._w("conflict", world)[:, None, None]
        zeros = torch.zeros((b, n), dtype=torch.float64, device=world.device)
        nan = torch.full((b,), float("nan"), dtype=torch.float64, device=world.device)
        return {"principal_weights": w_p, "agent_weights": (1 - conflict) * w_p + conflict * w_own,
                "visible": ~hidden, "hidden": hidden.double().mean(-1), "purchases": zeros.clone(),
                "overrides": zeros.clone(), "loss": zeros.clone(), "audits": zeros.clone(), "caught": zeros.clone(),
                "penalties": zeros.clone(), "override_rate": nan, "loss_mean": nan.clone(),
                "audit_rate": nan.clone(), "penalty_rate": nan.clone(), **no_moments(b, world.device)}

    def action_spaces(self, world: World) -> dict:
        from gymnasium.spaces import Discrete

        return {(self.params.agents, "pick"): Discrete(self.params.items)}

    def _w(self, field: str, world: World) -> torch.Tensor:
        """A per-world number of the parameters, [B] float64."""
        return per_world(getattr(self.params, field), world)

    def weight_on_principal(self, hidden: torch.Tensor, world: World) -> torch.Tensor:
        """beta for each pair, from its principal's hidden share [B, n] (see the module docstring)."""
        prior = self._w("prior", world)[:, None]
        if self.params.agent == "rigid":
            return prior.expand_as(hidden)
        # the order of the operations of the formula, so a [B] tensor rounds as the plain numbers did
        expected_penalty = self._w("monitoring_gain", world) * self._w("audit", world) * self._w("penalty", world)
        return (prior + expected_penalty[:, None] - self._w("asymmetry_gain", world)[:, None] * hidden).clamp(0, 1)

    def step(self, values, state: State, world: World, carry, rng: Streams, ask) -> ProtocolOutput:
        p = self.params
        principals, agents = self._pairs(world)
        b, n, m, a = world.b, principals.size, p.items, len(p.attributes)
        attrs = rng.uniform("delegation/catalogue", (b, m, a), torch.float64)[:, None]  # [B, 1, M, A]
        price = rng.uniform("delegation/price", (b, m), torch.float64)[:, None]  # [B, 1, M]
        blocked = torch.where(price > self._w("budget", world)[:, None, None], float("-inf"), 0.0)
        cheapest = price.argmin(-1, keepdim=True)  # always affordable: a catalogue has something one can buy
        blocked = blocked.scatter(2, cheapest, 0.0)

        price_weight = self._w("price_weight", world)[:, None, None]

        def utility(weights, visible=None):
            seen = attrs if visible is None else attrs * visible[:, :, None, :]
            return (weights[:, :, None, :] * seen).sum(-1) - price_weight * price  # [B, n, M]

        u_p, u_a = utility(carry["principal_weights"]), utility(carry["agent_weights"])
        beta = self.weight_on_principal(carry["hidden"], world)[..., None]
        score = beta * u_p + (1 - beta) * u_a + blocked
        noise = self._w("noise", world)
        if bool((noise > 0).any()):
            g = rng.uniform("delegation/noise", (b, n, m), torch.float64).clamp(1e-12, 1 - 1e-12)
            # the logs world by world: torch's CPU log may differ in the last bit with an element's place in
            # the batch (sim.core.perworld), and a world without noise keeps its score as it is alone
            gumbel = -per_row(lambda u: torch.log(-torch.log(u)), g)
            score = torch.where((noise > 0)[:, None, None], score + noise[:, None, None] * gumbel, score)
        pick = score.argmax(-1)
        events: list[dict[str, Any]] = []
        given = ask(agents.name, "pick")
        if given is not None:
            pick = given.long().clamp(0, m - 1).to(pick.device)
        elif self._speaker(world) is not None:
            pick, events = self._llm_picks(world, principals, carry, attrs, price, score, pick, state, rng)
        present = state.active[:, principals.rows] & state.active[:, agents.rows]
        best = (u_p + blocked).argmax(-1)
        got = u_p.gather(2, pick[..., None])[..., 0]
        loss = (u_p.gather(2, best[..., None])[..., 0] - got).clamp_min(0)
        override = present & (pick != best) & (loss > 1e-12)
        u_seen = utility(carry["principal_weights"], carry["visible"].double())
        noticed = u_seen.gather(2, pick[..., None])[..., 0] < (u_seen + blocked).max(-1).values - 1e-12
        audited = present & (rng.uniform("delegation/audit", (b, n), torch.float64) < self._w("audit", world)[:, None])
        caught = override & (audited | noticed)
        out = dict(carry)
        f = present.double()
        penalty = self._w("penalty", world)
        outcome = {"purchases": f, "overrides": override.double(), "loss": loss * f, "audits": audited.double(),
                   "caught": caught.double(), "penalties": penalty[:, None] * caught.double()}
        for key, add in outcome.items():
            out[key] = carry[key] + add
        out.update(_moments(carry, torch.stack([outcome[k] for k in OUTCOMES], -1)))
        count = f.sum(1).clamp_min(1)
        out["override_rate"] = override.double().sum(1) / count
        out["loss_mean"] = (loss * f).sum(1) / count
        out["audit_rate"] = audited.double().sum(1) / count
        out["penalty_rate"] = caught.double().sum(1) * penalty / count
        if p.log_events:
            events.append({"event": "delegation", "agent": p.agent, "override_rate": out["override_rate"].tolist(),
                           "loss_mean": [round(v, 6) for v in out["loss_mean"].tolist()],
                           "audits": audited.sum(1).tolist(), "caught": caught.sum(1).tolist()})
        return ProtocolOutput(values=None, carry=out, events=events)

    def _llm_picks(self, world, principals, carry, attrs, price, score, pick, state, rng):
        """The agents' picks through the persona's choice call: one batch for every present pair of every world."""
        from sim.llm import ChoiceRequest, choose

        from .speakers import describe

        p, talk = self.params, self._speaker(world)
        present = (state.active[:, principals.rows] & state.active[:, world.group(p.agents).rows]).cpu()
        where = present.nonzero().tolist()
        seeds = rng.integers("delegation/llm/seed", 2**31 - 1, tuple(present.shape)).cpu()
        logits = (score / self._w("temperature", world)[:, None, None]).cpu()
        attrs, price, budget = attrs[:, 0].cpu(), price[:, 0].cpu(), self._w("budget", world).cpu()
        weights = carry["principal_weights"].cpu()
        requests = []
        for b, i in where:
            options = tuple(f"item {j + 1}: price {price[b, j]:.2f}, " + ", ".join(
                f"{name} {attrs[b, j, k]:.2f}" for k, name in enumerate(p.attributes)) for j in range(p.items))
            cares = describe({name: float(weights[b, i, k]) for k, name in enumerate(p.attributes)})
            user = f"Your client's budget is {float(budget[b]):.2f}; they care about {cares}. Buy one item for them."
            finite = [float(v) if torch.isfinite(v) else -1e9 for v in logits[b, i]]
            requests.append(ChoiceRequest(messages=({"role": "system", "content": talk.system(world.space.name, None)},
                                                    {"role": "user", "content": user}),
                                          options=options, sampling=talk.sampling, seed=int(seeds[b, i]),
                                          hints={"purpose": "choice", "scores": [round(v, 6) for v in finite]},
                                          tag={"world": b, "agent": i}))
        responses = choose(talk.backend, requests)
        picked, events = pick.clone(), []
        for (b, i), response in zip(where, responses):
            if response.index is not None:
                picked[b, i] = response.index
            events.append({"event": "delegation_choice", "persona": talk.persona.name, "world": b,
                           "principal": principals.start + i, "option": response.option, "error": response.error,
                           "cached": response.cached})
        return picked, events


def _simplex(u: torch.Tensor) -> torch.Tensor:
    """Weights summing to 1 along the last axis (uniform on the simplex, from uniforms: -log u normalised).

    The log runs world by world, so each world's weights are those it draws alone (see ``per_row``)."""
    e = -per_row(torch.log, u.clamp_min(1e-12))
    return e / e.sum(-1, keepdim=True)


def no_moments(b: int, device, fill: float = 0.0) -> dict[str, torch.Tensor]:
    """The running sums of a world that has made no purchase yet (see the module docstring)."""
    sums = torch.full((b, len(OUTCOMES)), fill, dtype=torch.float64, device=device)
    return {"step_sq": sums, "step_cross": sums.clone(), "purchase_sq": sums.clone(),
            "steps": torch.full((b,), fill, dtype=torch.float64, device=device)}


def _moments(carry, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """The running sums after this step's purchases z [B, n, outcomes] (0 for an absent pair).

    They are what a two-way cluster-robust variance of a ratio (outcome per purchase) needs and nothing
    that grows with the run: a step's cluster enters only through its world totals, a purchase through its
    squares, and a pair's totals are already the per-pair counts."""
    if "step_sq" not in carry:  # a checkpoint from before the sums: the earlier steps are lost, so NaN
        carry = {**carry, **no_moments(z.shape[0], z.device, math.nan)}
    total = z.sum(1)  # [B, outcomes]: this step's cluster
    return {"step_sq": carry["step_sq"] + total * total,
            "step_cross": carry["step_cross"] + total * total[:, :1],
            "purchase_sq": carry["purchase_sq"] + (z * z).sum(1),
            "steps": carry["steps"] + (total[:, 0] > 0).double()}
