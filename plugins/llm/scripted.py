"""The offline, deterministic stand-in for a language model.

It reads the structured ``hints`` the LLM policy attaches to each request
(the persona's values, strategy and goal, the audience's mean values and
confidence bound) and answers as the persona would: a templated message and
the value vector that message expresses. No model, no network; the same
request always gets the same answer. It is the default for the quickstart
and the tests, and a fast stand-in at scale. Its choice call scores the
options from ``hints["scores"]`` (one number per option, read as logits;
uniform without them) and picks among them as the contract says, from the
request's seed.
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Any, ClassVar

from sim.contracts import Interval, PluginParams
from sim.llm import ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse
from sim.llm.choice import normalised, pick
from sim.llm.questionnaire import scripted_answer

OPENINGS = ("Here is how I see it.", "Let me share a thought.", "One thing worth considering:",
            "Speaking plainly:", "A quick reflection.")
TACTIC_PHRASES = {
    "reciprocity": "I have helped you before, so trust me on this.",
    "scarcity": "This chance will not come again.",
    "social_proof": "Most people like you already agree.",
    "authority": "Experts are clear about this.",
    "commitment": "You said yourself this matters to you.",
    "liking": "You and I think alike.",
}


class ScriptedBackend:
    """Offline and deterministic: answers from the persona's values and strategy, no model needed."""

    name: ClassVar[str] = "scripted"

    class Params(PluginParams):
        noise: Annotated[float, Interval(ge=0, le=0.5)] = 0.02
        """Standard deviation of the noise on the expressed vector (drawn from the request's seed)."""
        margin: Annotated[float, Interval(gt=0, le=1)] = 0.8
        """How much of the audience's confidence bound a covert manipulator uses per message."""
        tactics_margin: Annotated[float, Interval(gt=0, le=1)] = 0.9
        """The same for a manipulator with explicit tactics."""

    def __init__(self, params):
        self.params = params

    @property
    def model_id(self) -> str:
        return "scripted-v1"

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        return [self._answer(r) for r in requests]

    async def choose(self, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
        """Log-probabilities ``log_softmax(hints["scores"])`` (uniform without scores); picks as the contract says."""
        return [_choice(r) for r in requests]

    def _answer(self, request: ChatRequest) -> ChatResponse:
        hints = request.hints
        if hints.get("purpose") == "questionnaire":
            text = scripted_answer(hints)
            return ChatResponse(text=text, prompt_tokens=_tokens(request), completion_tokens=1)
        if hints.get("purpose") != "message" or "profile" not in hints:
            return ChatResponse(text="", error="scripted backend: the request carries no persona hints")
        rng = random.Random(request.seed)
        values = self._expressed(hints, rng)
        text = self._message(hints, values, rng)
        return ChatResponse(text=text, prompt_tokens=_tokens(request), completion_tokens=len(text.split()),
                            values=tuple(values))

    def _expressed(self, hints: dict[str, Any], rng: random.Random) -> list[float]:
        dims = list(hints["profile"])
        own = [hints["profile"][d] for d in dims]
        strategy = hints.get("strategy", "neutral")
        if strategy in ("covert", "tactics") and hints.get("goal") and hints.get("audience"):
            margin = self.params.tactics_margin if strategy == "tactics" else self.params.margin
            shown = _toward([hints["audience"][d] for d in dims], [hints["goal"][d] for d in dims],
                            margin * hints.get("bound", 0.2))
        else:
            shown = own
        return [min(1.0, max(0.0, v + rng.gauss(0.0, self.params.noise))) for v in shown]

    def _message(self, hints: dict[str, Any], values: list[float], rng: random.Random) -> str:
        dims = list(hints["profile"])
        ranked = sorted(zip(values, dims), reverse=True)
        top, low = [d.replace("_", " ") for _, d in ranked[:2]], ranked[-1][1].replace("_", " ")
        parts = [rng.choice(OPENINGS), f"What matters most is {top[0]} and {top[1]}; {low} matters less."]
        if hints.get("strategy") == "tactics":
            for tactic in hints.get("tactics", [])[:2]:
                parts.append(TACTIC_PHRASES.get(tactic, f"({tactic})"))
        return " ".join(parts)


def _choice(request: ChoiceRequest) -> ChoiceResponse:
    scores = request.hints.get("scores", [0.0] * len(request.options))
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError):
        scores = []
    if len(scores) != len(request.options) or any(math.isnan(s) or s == math.inf for s in scores):
        return ChoiceResponse(index=None, error=f"scripted backend: hints['scores'] must hold one number (not "
                                                f"NaN or +inf) per option, {len(request.options)} in all; "
                                                f"got {request.hints.get('scores')!r}")
    logprobs = normalised(scores)
    index = pick(logprobs, request.sampling.temperature, request.seed)
    return ChoiceResponse(index=index, option=request.options[index], logprobs=logprobs,
                          prompt_tokens=_tokens(request), completion_tokens=1)


def _toward(start: list[float], goal: list[float], reach: float) -> list[float]:
    """The point from ``start`` toward ``goal`` at distance ``reach`` (Euclidean / sqrt(K)), or the goal."""
    gap = [g - s for s, g in zip(start, goal)]
    dist = math.sqrt(sum(x * x for x in gap) / len(gap))
    scale = 1.0 if dist <= reach else reach / dist
    return [s + scale * x for s, x in zip(start, gap)]


def _tokens(request: ChatRequest | ChoiceRequest) -> int:
    return sum(len(m["content"].split()) for m in request.messages)
