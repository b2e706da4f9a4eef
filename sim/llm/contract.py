"""The language-model contract: a batch of chat requests in, a batch of responses out.

Backends are plugins of kind ``llm_backends`` (``scripted``, ``transformers``,
``openai``); value readers are plugins of kind ``value_readers``. Everything
a backend needs arrives in the requests; everything it did comes back in the
responses. Backends are asynchronous underneath; the engine calls them
through :func:`complete`, once per step per LLM group, with every agent that
speaks in any world in the one batch.

Decisions (the advice protocol's client picking an option) go through the
optional choice call: a batch of :class:`ChoiceRequest` in (the chat and the
options), a batch of :class:`ChoiceResponse` out (the option picked and, where
the backend can give them, its log-probability of every option), called
through :func:`choose`.

Secrets: a backend reads its API key from the environment variable named in
its parameters and never puts it in a response, an exception or a log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from ..errors import BudgetExhausted, PluginError, ValuesimError  # noqa: F401  (BudgetExhausted: re-exported)


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; part of the cache key."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 96


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make.

    ``messages`` are ``{"role": ..., "content": ...}`` dicts in order.
    ``seed`` makes sampling reproducible. ``hints`` carry structured facts
    that only an offline stand-in uses (the ``scripted`` backend: the
    persona's value vector, its strategy and goal, the audience's mean
    values); a real model sees only the messages. ``tag`` says who asks
    (agent, world, step, purpose) for the log and is not part of the cache
    key; ``hints`` are, since the scripted backend answers from them.
    """

    messages: tuple[dict[str, str], ...]
    sampling: Sampling = Sampling()
    seed: int = 0
    hints: dict[str, Any] = field(default_factory=dict)
    tag: dict[str, Any] = field(default_factory=dict)

    def cache_key(self, backend: str, model: str) -> str:
        """sha256 of everything that determines the answer: backend, model, prompt, sampling, seed."""
        blob = json.dumps({"backend": backend, "model": model, "messages": list(self.messages),
                           "sampling": vars(self.sampling), "seed": self.seed,
                           "hints": self.hints}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps(list(self.messages), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChatResponse:
    """What came back for one request.

    ``values`` is set only by backends that know the expressed value vector
    directly (``scripted``); otherwise a value reader derives it from ``text``.
    ``error`` is set (and ``text`` empty) when the backend gave up on this
    request after its retries; the run goes on and the log says so.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    values: tuple[float, ...] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "latency_s": self.latency_s,
                "values": list(self.values) if self.values is not None else None, "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool = True) -> "ChatResponse":
        values = data.get("values")
        return cls(text=data["text"], prompt_tokens=data.get("prompt_tokens", 0),
                   completion_tokens=data.get("completion_tokens", 0), latency_s=data.get("latency_s", 0.0),
                   cached=cached, values=tuple(values) if values is not None else None, error=data.get("error"))

    def as_cached(self) -> "ChatResponse":
        return replace(self, cached=True)


@dataclass(frozen=True)
class ChoiceRequest:
    """One choice to make: which of ``options`` the model answers to ``messages``.

    The fields mean what they mean in :class:`ChatRequest`. ``options`` are
    short, distinct, non-empty one-line strings (``("buy", "wait")``), at least one.
    A backend that scores options takes its log-probabilities at temperature
    1 and picks the most likely option at temperature 0, else draws one from
    ``softmax(logprobs / temperature)`` with the request's ``seed``; ``top_p``
    is not applied (the options are the nucleus). ``max_tokens`` bounds the
    reply of a backend that answers in text.
    """

    messages: tuple[dict[str, str], ...]
    options: tuple[str, ...]
    sampling: Sampling = Sampling()
    seed: int = 0
    hints: dict[str, Any] = field(default_factory=dict)
    tag: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = self.options
        if not options or not all(isinstance(o, str) and o.strip() and "\n" not in o for o in options):
            raise ValuesimError(f"a choice needs at least one option, each a non-empty one-line string; "
                                f"got {options!r}")
        if len(set(options)) != len(options):
            raise ValuesimError(f"the options of a choice must be distinct; got {options!r}")

    def cache_key(self, backend: str, model: str) -> str:
        """sha256 of everything that determines the answer, as for a chat request, plus the options."""
        blob = json.dumps({"call": "choice", "backend": backend, "model": model, "messages": list(self.messages),
                           "options": list(self.options), "sampling": vars(self.sampling), "seed": self.seed,
                           "hints": self.hints}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps([list(self.messages), list(self.options)],
                                         sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChoiceResponse:
    """What came back for one choice.

    ``index`` is the option picked (``options[index] == option``); both are
    ``None`` and ``""`` when ``error`` is set (the backend gave up, or its
    reply named no option; the run goes on and the log says so).
    ``logprobs`` holds one natural-log probability per option, normalised
    over the options (their exponentials sum to 1), or ``None`` where the
    backend cannot give them. ``text`` is the raw reply of a backend that
    answers in text (``openai``), ``""`` for one that scores the options.
    """

    index: int | None
    option: str = ""
    logprobs: tuple[float, ...] | None = None
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"call": "choice", "index": self.index, "option": self.option,
                "logprobs": list(self.logprobs) if self.logprobs is not None else None, "text": self.text,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "latency_s": self.latency_s, "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool = True) -> "ChoiceResponse":
        logprobs = data.get("logprobs")
        return cls(index=data["index"], option=data["option"],
                   logprobs=tuple(logprobs) if logprobs is not None else None, text=data.get("text", ""),
                   prompt_tokens=data.get("prompt_tokens", 0), completion_tokens=data.get("completion_tokens", 0),
                   latency_s=data.get("latency_s", 0.0), cached=cached, error=data.get("error"))

    def as_cached(self) -> "ChoiceResponse":
        return replace(self, cached=True)


@runtime_checkable
class LLMBackend(Protocol):
    """A language model behind one method.

    ``Params``: pydantic model of the backend's settings. ``name`` (class
    attribute) and ``model_id`` (property: the model actually answering) key
    the cache. ``complete`` returns one response per request, in order; it
    never raises for one bad request (that response carries ``error``), and
    raises :class:`BudgetExhausted` when its budget is spent.

    Optional: ``async def choose(requests: list[ChoiceRequest]) ->
    list[ChoiceResponse]``, the choice call, with the same rules (one
    response per request, in order; errors in the response; a spent budget
    raises). A backend without it cannot serve decision protocols;
    :func:`can_choose` says whether one has it, :func:`choose` calls it.
    """

    Params: ClassVar[type[BaseModel]]
    name: ClassVar[str]

    @property
    def model_id(self) -> str: ...

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]: ...


def complete(backend: LLMBackend, requests: list[ChatRequest]) -> list[ChatResponse]:
    """Run one batch through a backend from synchronous code."""
    if not requests:
        return []
    _no_running_loop("complete")
    return asyncio.run(backend.complete(requests))


def can_choose(backend: LLMBackend) -> bool:
    """Whether ``backend`` has the optional choice call."""
    return callable(getattr(backend, "choose", None))


def choose(backend: LLMBackend, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
    """Run one batch of choices through a backend from synchronous code."""
    if not can_choose(backend):
        raise PluginError(f"LLM backend {backend.name!r} has no choice call (choose), which decisions need; "
                          "the built-in scripted, transformers and openai backends have one")
    if not requests:
        return []
    _no_running_loop("choose")
    return asyncio.run(backend.choose(requests))  # type: ignore[attr-defined]


def _no_running_loop(call: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"sim.llm.{call}() was called from a running event loop; await backend.{call}()")


@runtime_checkable
class ValueReader(Protocol):
    """Turns messages into the value vectors they express.

    ``read(responses, dimensions, backend)`` returns, per message, a
    list of K floats in [0, 1] or ``None`` when it could not read one (the
    caller falls back and logs it), plus a note per message saying what was
    repaired or why it failed (``""`` when clean).
    """

    Params: ClassVar[type[BaseModel]]

    def read(self, responses: list[ChatResponse], dimensions: tuple[str, ...],
             backend: LLMBackend) -> tuple[list[list[float] | None], list[str]]: ...
