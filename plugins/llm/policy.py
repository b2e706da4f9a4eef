"""The policy that makes population rows speak through a language model.

Each step, the agents of the group that are due to speak (by the persona's
schedule) in every world are gathered into one batch: their prompts are
built from the persona and from what their audience currently values, the
batch goes to the backend (through the run's response cache), and a value
reader turns each reply into the value vector it expresses. An agent keeps
showing its last message until it speaks again. Every exchange is logged.

The persona's own value profile is measured by a short questionnaire when the
world is built (and every ``questionnaire.every`` steps, if set): the
measured profile becomes the agent's values.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from sim.contracts import Group, Interval, PluginParams, PolicyOutput, State, Streams, World
from sim.llm import ChatRequest, Sampling, complete
from sim.llm.cache import with_run_cache
from sim.llm.questionnaire import load_questionnaire
from sim.config.scenario import instantiate
from sim.config.schema import PluginRef

from ..policies import _group_view, _neighbour_view


class Schedule(PluginParams):
    """When an agent speaks: every ``every`` steps, and then with ``probability``."""

    every: Annotated[int, Interval(ge=1)] = 1
    """Steps between chances to speak."""
    probability: Annotated[float, Interval(gt=0, le=1)] = 1.0
    """Chance of speaking at each chance, drawn per agent and world."""


class SamplingSpec(PluginParams):
    """Sampling parameters sent with every request."""

    temperature: Annotated[float, Interval(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Interval(gt=0, le=1)] = 0.95
    max_tokens: Annotated[int, Interval(ge=1, le=4096)] = 96


class QuestionnaireSpec(PluginParams):
    """When the persona's own values are measured."""

    at_start: bool = True
    """Measure when the world is built (the measured profile is where the agent starts)."""
    every: Annotated[int, Interval(ge=1)] | None = None
    """Measure again every this many steps (None: only at the start)."""


class Persona(PluginParams):
    """An LLM persona, as written in ``agents/<name>.yaml`` (a scenario may override any field)."""

    name: str
    kind: Literal["llm", "ai"] = "llm"
    description: str = ""
    strategy: Literal["neutral", "covert", "tactics"] = "neutral"
    """How it speaks: honestly, with a hidden goal, or with a hidden goal and named tactics."""
    values: dict[str, dict[str, float]]
    """Its value profile, per value space."""
    goal: dict[str, dict[str, float]] | None = None
    """A manipulator's hidden objective, per value space."""
    tactics: list[str] = Field(default_factory=list)
    system_prompt: str
    """Template; may use {values_text}, {goal_text}, {tactics_text}."""
    message_prompt: str
    """Template; may use {audience_text} and {step}."""
    schedule: Schedule = Schedule()
    audience: str = "neighbours"
    """Whom it addresses, whose values the prompt describes: ``neighbours``, a group name, or ``broadcast``
    (everyone). Who actually hears a message is the network's business, as for any agent."""
    backend: PluginRef = PluginRef(name="scripted")
    sampling: SamplingSpec = SamplingSpec()
    reader: PluginRef = PluginRef(name="auto")
    questionnaire: QuestionnaireSpec = QuestionnaireSpec()
    adapts: bool = False
    """Whether its own values change under the dynamics (False: fixed, like a zealot)."""


class LLMPolicy:
    """Agents that speak through a language model, with the persona's values, strategy and prompts."""

    class Params(PluginParams):
        persona: Persona
        """The resolved persona (the scenario loader fills it from ``agents/<name>.yaml``)."""

    expresses_own_values: ClassVar[bool] = False

    def __init__(self, params):
        self.params = params
        self._backend = None  # a service, built in prepare: the model behind the cache

    # ---------------------------------------------------------------- set-up

    def prepare(self, world: World, group: Group) -> None:
        persona = self.params.persona
        space = world.space.name
        for field_name, table in (("values", persona.values), ("goal", persona.goal)):
            if table is not None and space not in table:
                raise ValueError(f"persona {persona.name!r} has no {field_name} in value space {space!r} "
                                 f"(it has: {', '.join(table)})")
        if persona.audience not in ("neighbours", "broadcast", *[g.name for g in world.groups]):
            raise ValueError(f"persona {persona.name!r}: audience must be 'neighbours', 'broadcast' or a group "
                             f"name, got {persona.audience!r}")
        self._backend = with_run_cache(instantiate("llm_backends", persona.backend), world.context)
        self._reader = instantiate("value_readers", persona.reader)
        self._questionnaire = load_questionnaire(space, world.space.dimensions) if (
            persona.questionnaire.at_start or persona.questionnaire.every) else None

    # ---------------------------------------------------------------- speaking

    def express(self, state: State, world: World, group: Group, rng: Streams):
        persona = self.params.persona
        own = state.values[:, group.rows]
        shown = own.clone() if state.expressed is None else state.expressed[:, group.rows].clone()
        step = state.step + 1
        # absent agents speak to no model
        speaking = self._speakers(world, group, step, rng) & state.active[:, group.rows].cpu()
        where = speaking.nonzero().tolist()
        if not where:
            return PolicyOutput(shown, [])
        centre, bound = self._audience(state, world, group)
        # one seed per agent and world whether or not it speaks (a fixed-shape draw), read back on the CPU
        every_seed = rng.integers(f"llm/{group.name}/seed", 2**31 - 1, (world.b, group.size)).cpu()
        seeds = [int(every_seed[b, a]) for b, a in where]
        requests = [self._message_request(world, group, b, a, step, centre[b, a if centre.shape[1] > 1 else 0],
                                          float(bound[b, a if bound.shape[1] > 1 else 0]), seed, own[b, a])
                    for (b, a), seed in zip(where, seeds)]
        responses = complete(self._backend, requests)
        vectors, notes = self._reader.read(responses, world.space.dimensions, self._backend)
        events = []
        for (b, a), request, response, vector, note in zip(where, requests, responses, vectors, notes):
            raw = getattr(note, "raw", None)  # the value read-out's own reply (plugins.llm.readers.ReadNote)
            degenerate = bool(getattr(note, "degenerate", False))  # counted, and warned about once, by the runner
            if vector is None:  # unreadable or failed: the agent shows its own values, and the log says so
                vector = own[b, a].tolist()
                note = f"fell back to own values ({note or response.error})"
            shown[b, a] = torch.tensor(vector, dtype=shown.dtype)
            events.append(_exchange_event("llm_message", persona.name, group, b, a, request, response, vector,
                                          note, world.space.dimensions, raw, degenerate))
        return PolicyOutput(shown, events)

    def _speakers(self, world: World, group: Group, step: int, rng: Streams) -> torch.Tensor:
        schedule = self.params.persona.schedule
        if step % schedule.every:
            return torch.zeros((world.b, group.size), dtype=torch.bool)
        if schedule.probability >= 1.0:
            return torch.ones((world.b, group.size), dtype=torch.bool)
        draw = rng.uniform(f"llm/{group.name}/speak", (world.b, group.size))
        return (draw < schedule.probability).cpu()

    def _audience(self, state: State, world: World, group: Group) -> tuple[torch.Tensor, torch.Tensor]:
        """The audience's mean values [B, n or 1, K] and mean confidence bound [B, n or 1], on the CPU."""
        audience = self.params.persona.audience
        if audience == "neighbours":
            centre, bound, _ = _neighbour_view(state, world, group, "mean")
        else:
            target = Group("everyone", "all", 0, world.n) if audience == "broadcast" else world.group(audience)
            centre, bound, _ = _group_view(state, world, target, "mean")
        return centre.cpu(), bound.cpu()

    def _message_request(self, world: World, group: Group, b: int, a: int, step: int, centre: torch.Tensor,
                         bound: float, seed: int, current: torch.Tensor) -> ChatRequest:
        persona, dims = self.params.persona, world.space.dimensions
        # a persona that adapts speaks from where its values are now, not from where its file started it
        profile = ({d: round(float(v), 3) for d, v in zip(dims, current.tolist())} if persona.adapts
                   else persona.values[world.space.name])
        goal = (persona.goal or {}).get(world.space.name)
        audience = {d: round(float(v), 3) for d, v in zip(dims, centre.tolist())}
        system = _system_prompt(persona, profile, goal)
        user = persona.message_prompt.format(audience_text=_describe(audience, top=3), step=step)
        hints = {"purpose": "message", "profile": {d: profile[d] for d in dims}, "strategy": persona.strategy,
                 "goal": {d: goal[d] for d in dims} if goal else None, "audience": audience,
                 "bound": round(bound, 4), "tactics": list(persona.tactics)}
        return ChatRequest(messages=({"role": "system", "content": system}, {"role": "user", "content": user}),
                           sampling=_sampling(persona), seed=seed, hints=hints,
                           tag={"world": b, "agent": group.start + a, "step": step})

    # ---------------------------------------------------------------- measuring

    def measure(self, state: State, world: World, group: Group, rng: Streams):
        spec = self.params.persona.questionnaire
        due = (state.step == 0 and spec.at_start) or (state.step > 0 and spec.every and state.step % spec.every == 0)
        if not due or self._questionnaire is None:
            return None
        persona, dims = self.params.persona, world.space.dimensions
        profile = persona.values[world.space.name]
        system = _system_prompt(persona, profile, (persona.goal or {}).get(world.space.name))
        measured = state.values[:, group.rows].clone()
        events, batches = [], []
        every_seed = rng.integers(f"llm/{group.name}/questionnaire", 2**31 - 1, (world.b, group.size)).cpu()
        present = state.active[:, group.rows].cpu()
        for b in range(world.b):
            for a in range(group.size):
                if not present[b, a]:  # an absent agent is asked nothing
                    continue
                seed = int(every_seed[b, a])
                batches.append((b, a, self._questionnaire.requests(
                    system, seed=seed, tag={"world": b, "agent": group.start + a, "step": state.step},
                    hints={"profile": {d: profile[d] for d in dims}})))
        responses = complete(self._backend, [r for _, _, rs in batches for r in rs])
        cursor = 0
        for b, a, requests in batches:
            answers = responses[cursor:cursor + len(requests)]
            cursor += len(requests)
            scores, notes = self._questionnaire.score(answers)
            for k, score in enumerate(scores):
                if score is not None:
                    measured[b, a, k] = score
            events.append({"event": "llm_questionnaire", "persona": persona.name, "world": b,
                           "agent": group.start + a, "values": [round(float(v), 4) for v in measured[b, a]],
                           "cached": sum(r.cached for r in answers), "notes": [n for n in notes if n]})
        return PolicyOutput(measured, events)


def _system_prompt(persona: Persona, profile: dict[str, float], goal: dict[str, float] | None) -> str:
    return persona.system_prompt.format(values_text=_describe(profile), goal_text=_describe(goal or {}),
                                        tactics_text=", ".join(persona.tactics) or "none")


def _sampling(persona: Persona) -> Sampling:
    s = persona.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)


def _describe(values: dict[str, float], top: int | None = None) -> str:
    """'benevolence (0.80), universalism (0.75), ...', highest first."""
    ranked = sorted(values.items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{name.replace('_', ' ')} ({value:.2f})" for name, value in ranked) or "nothing in particular"


def _exchange_event(kind, persona, group, b, a, request, response, vector, note, dimensions,
                    raw=None, degenerate=False) -> dict[str, Any]:
    # ``expressed`` is in the order of ``dimensions``; ``reader`` says what the value read-out repaired (None
    # when clean) and ``reader_reply`` is the read-out's raw reply, for a reader that asks a model (json_ratings)
    return {"event": kind, "persona": persona, "world": b, "agent": group.start + a,
            "prompt_hash": request.prompt_hash(), "response": response.text,
            "expressed": [round(float(v), 4) for v in vector], "dimensions": list(dimensions),
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens, "latency_s": round(response.latency_s, 4),
            "cached": response.cached, "error": response.error, "reader": str(note) or None,
            "reader_reply": raw, "degenerate": degenerate}
