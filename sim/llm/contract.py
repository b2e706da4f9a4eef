"""The language-model contract: a batch of chat requests in, a batch of responses out.

Backends are plugins of kind ``llm_backends`` (``scripted``, ``transformers``,
``openai``); value readers are plugins of kind ``value_readers``. Everything
a backend needs arrives in the requests; everything it did comes back in the
responses. Backends are asynchronous underneath; the engine calls them
through :func:`complete`, once per step per LLM group, with every agent that
speaks in any world in the one batch.

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

from ..errors import BudgetExhausted, ValuesimError  # noqa: F401  (BudgetExhausted: re-exported for backends)


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


@runtime_checkable
class LLMBackend(Protocol):
    """A language model behind one method.

    ``Params``: pydantic model of the backend's settings. ``name`` (class
    attribute) and ``model_id`` (property: the model actually answering) key
    the cache. ``complete`` returns one response per request, in order; it
    never raises for one bad request (that response carries ``error``), and
    raises :class:`BudgetExhausted` when its budget is spent.
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
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(backend.complete(requests))
    raise RuntimeError("sim.llm.complete() was called from a running event loop; await backend.complete()")


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
