"""The ``openai`` backend: any OpenAI-compatible chat server over HTTP.

vLLM, the llama.cpp server, Ollama and hosted APIs all answer
``POST {base_url}/chat/completions``. The backend sends a batch with bounded
concurrency, retries what is worth retrying with exponential backoff, and
keeps a request and a token budget. The API key is read from the environment
variable named in the parameters at each call, is sent only in the
``Authorization`` header, and is scrubbed from every text it passes on (error
messages and replies alike: a server may echo the header back). A reply
longer than ``sim.llm.cache.MAX_REPLY_CHARS`` is cut to that and marked.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import ssl
import time
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import Field

from sim.contracts import Interval, PluginParams
from sim.errors import ValuesimError
from sim.llm import BudgetExhausted, ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse
from sim.llm.choice import ask_for_option, first_token_logprobs, read_choice
from sim.llm.cache import kept_text

RETRY_AFTER_CAP_S = 60.0
"""The longest wait a server's ``Retry-After`` can impose (a misconfigured server may ask for hours)."""
BACKOFF_CAP_S = 30.0
"""The longest exponential backoff between two attempts."""
# Worth another try, as OpenAI's own client judges: request timeout, conflict, rate limit, server errors.
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
TOP_LOGPROBS = 20
"""How many most likely first tokens a choice call asks for (OpenAI's maximum)."""


class OpenAIBackend:
    """An OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, hosted APIs) over HTTP.

    Bounded concurrency, a timeout per attempt, retries with exponential
    backoff on 429, 5xx, timeouts, connection errors and malformed answers
    (honouring ``Retry-After``), and budgets of requests and tokens. A request
    that still fails after its retries comes back with ``error`` set; a spent
    budget raises ``BudgetExhausted``. The key comes from the environment
    variable ``api_key_env`` names and never appears in a message.
    """

    name: ClassVar[str] = "openai"

    class Params(PluginParams):
        base_url: Annotated[str, Field(pattern=r"^https?://")]
        """The server's API root, e.g. ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended."""
        model: Annotated[str, Field(min_length=1)]
        """The model name the server knows (the ``model`` field of the request body)."""
        api_key_env: Annotated[str, Field(min_length=1)] | None = None
        """The NAME of the environment variable holding the API key (never the key); no key is sent when unset."""
        concurrency: Annotated[int, Interval(ge=1)] = 8
        """How many requests may be in flight at once."""
        timeout_s: Annotated[float, Interval(gt=0)] = 30.0
        """Seconds one attempt may take, connection included, before it counts as a timeout."""
        max_retries: Annotated[int, Interval(ge=0)] = 4
        """Retries after the first attempt, so a request is tried at most ``max_retries + 1`` times."""
        backoff_s: Annotated[float, Interval(ge=0)] = 0.5
        """Seconds before the first retry, doubling at each one, times a jitter drawn from the request's seed."""
        max_requests: Annotated[int, Interval(ge=1)] | None = None
        """HTTP requests (retries included) this backend object may send in its lifetime; ``None``: no limit."""
        max_tokens: Annotated[int, Interval(ge=1)] | None = None
        """Prompt plus completion tokens this backend object may use in its lifetime; ``None``: no limit."""
        logprobs: bool = True
        """Whether a choice call asks for ``logprobs``/``top_logprobs``; turn it off for a server that refuses them."""

    def __init__(self, params):
        self.params = params
        # The budgets are for this object's lifetime, so their counters live on it (the one piece of state).
        self.requests_sent = 0
        self.tokens_used = 0
        _api_key(params.api_key_env)  # fail when the run is built, not at its first step

    @property
    def model_id(self) -> str:
        return self.params.model

    def __repr__(self) -> str:
        p = self.params
        return (f"OpenAIBackend(base_url={p.base_url!r}, model={p.model!r}, api_key_env={p.api_key_env!r}, "
                f"concurrency={p.concurrency}, requests_sent={self.requests_sent}, tokens_used={self.tokens_used})")

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """One response per request, in order; raises ``BudgetExhausted`` before a send the budget cannot cover."""
        return [response for response, _ in await self._send(requests)]

    async def choose(self, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
        """Each request's chat with the instruction to answer with one of its options, the reply read back
        (``sim.llm.choice.read_choice``; one that names no option is an error in its response); the options'
        log-probabilities from the server's top log-probabilities of the reply's first token when it sends them.
        Retries and budgets as ``complete``."""
        chats = [ChatRequest(messages=ask_for_option(r.messages, r.options), sampling=r.sampling, seed=r.seed)
                 for r in requests]
        answers = await self._send(chats, logprobs=self.params.logprobs)
        return [_chosen(r, response, logprobs) for r, (response, logprobs) in zip(requests, answers)]

    async def _send(self, requests: list[ChatRequest], logprobs: bool = False) -> list[tuple[ChatResponse, Any]]:
        """Per request, the response and the server's ``choices[0].logprobs`` (``None`` when it sent none)."""
        if not requests:
            return []
        key = _api_key(self.params.api_key_env)
        self._check_budget(more=len(requests))
        async with _Clients(self.params, key) as clients:
            call = _Call(self, clients, asyncio.Semaphore(self.params.concurrency), key, logprobs)
            tasks = [asyncio.ensure_future(call.request(r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                # A spent budget (or a cancellation) stops the batch: no task may go on sending behind it.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _check_budget(self, more: int = 1) -> None:
        """Raise if sending ``more`` requests would go over a budget (tokens: if it is already spent)."""
        p = self.params
        if p.max_requests is not None and self.requests_sent + more > p.max_requests:
            left = p.max_requests - self.requests_sent
            asked = f"; {more} more asked, {left} left" if left > 0 else ""
            raise BudgetExhausted(f"openai backend: request budget of {p.max_requests} spent{asked}")
        if p.max_tokens is not None and self.tokens_used >= p.max_tokens:
            raise BudgetExhausted(f"openai backend: token budget of {p.max_tokens} spent "
                                  f"({self.tokens_used} used)")


@dataclass
class _Attempt:
    """What one HTTP attempt gave: a response, or why it failed and whether trying again may help."""

    response: ChatResponse | None = None
    reason: str = ""
    retry: bool = False
    retry_after: float | None = None
    logprobs: Any = None
    """The server's ``choices[0].logprobs``, as sent."""


class _Clients:
    """A few httpx clients of at most ``CONNECTIONS_PER_CLIENT`` connections each, used least busy first.

    httpx's pool rescans all its connections for every request (encode/httpx#3215), so one client's cost
    per request grows with the concurrency: at 128 a single client spent ~10 ms of CPU per request and
    served 50 requests/s against a 50 ms server. Small pools keep that cost flat.
    """

    CONNECTIONS_PER_CLIENT = 8

    def __init__(self, params: "OpenAIBackend.Params", key: str | None):
        count = -(-params.concurrency // self.CONNECTIONS_PER_CLIENT)
        # least busy first, with at most `concurrency` in flight, never puts more than this on one client
        limits = httpx.Limits(max_connections=-(-params.concurrency // count))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.clients = [httpx.AsyncClient(headers=headers, timeout=params.timeout_s, limits=limits,
                                          verify=_ssl_context()) for _ in range(count)]
        self.busy = [0] * count

    async def __aenter__(self) -> "_Clients":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))

    async def post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        index = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[index] += 1
        try:
            return await self.clients[index].post(url, json=body)
        finally:
            self.busy[index] -= 1


class _Call:
    """One ``complete()`` call: the clients, the semaphore and the key shared by its requests."""

    def __init__(self, backend: OpenAIBackend, clients: _Clients, slots: asyncio.Semaphore, key: str | None,
                 logprobs: bool = False):
        self.backend, self.clients, self.slots, self.key = backend, clients, slots, key
        self.logprobs = logprobs
        self.url = backend.params.base_url.rstrip("/") + "/chat/completions"

    async def request(self, request: ChatRequest) -> tuple[ChatResponse, Any]:
        p = self.backend.params
        rng = random.Random(f"{request.seed}:{request.prompt_hash()}")  # reproducible, yet not in lockstep
        body = _body(p.model, request, self.logprobs)
        started = None
        attempt = _Attempt()
        for number in range(p.max_retries + 1):
            if number:
                await asyncio.sleep(retry_delay(number, p.backoff_s, rng, attempt.retry_after))
            async with self.slots:  # released while backing off, so others may use the slot
                self.backend._check_budget()
                self.backend.requests_sent += 1
                started = started or time.perf_counter()
                attempt = await self._attempt(body, request)
            if attempt.response is not None or not attempt.retry:
                break
        if attempt.response is not None:
            return attempt.response, attempt.logprobs
        tries = f" after {number + 1} attempts" if number else ""
        return ChatResponse(text="", error=_scrub(attempt.reason + tries, self.key),
                            latency_s=time.perf_counter() - (started or time.perf_counter())), None

    async def _attempt(self, body: dict[str, Any], request: ChatRequest) -> _Attempt:
        sent = time.perf_counter()
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole attempt (a server trickling bytes).
            reply = await asyncio.wait_for(self.clients.post(self.url, body), self.backend.params.timeout_s)
        except (httpx.TimeoutException, asyncio.TimeoutError):
            return _Attempt(reason="timeout", retry=True)
        except httpx.TransportError as exc:
            return _Attempt(reason=f"connection error ({type(exc).__name__})", retry=True)
        latency = time.perf_counter() - sent
        if reply.status_code != 200:
            return _Attempt(reason=_status_reason(reply, self.key), retry=reply.status_code in RETRY_STATUSES,
                            retry_after=_retry_after(reply.headers.get("Retry-After")))
        return self._parse(reply, request, latency)

    def _parse(self, reply: httpx.Response, request: ChatRequest, latency: float) -> _Attempt:
        try:
            data = reply.json()
            text = data["choices"][0]["message"]["content"]
        except ValueError:
            return _Attempt(reason="malformed JSON", retry=True)
        except (KeyError, IndexError, TypeError):
            return _Attempt(reason="no choices[0].message.content in the answer", retry=True)
        if not isinstance(text, str):
            return _Attempt(reason="choices[0].message.content is not text", retry=True)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = _int(usage.get("prompt_tokens"), _estimate(" ".join(m["content"] for m in request.messages)))
        completion_tokens = _int(usage.get("completion_tokens"), _estimate(text))
        self.backend.tokens_used += prompt_tokens + completion_tokens
        text = kept_text(_scrub(text, self.key))  # scrubbed before it is cut, so no part of the key survives
        return _Attempt(response=ChatResponse(text=text, prompt_tokens=prompt_tokens,
                                              completion_tokens=completion_tokens, latency_s=latency),
                        logprobs=data["choices"][0].get("logprobs"))


def retry_delay(retry: int, backoff_s: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): the server's ``Retry-After`` when it gave
    one (capped at ``RETRY_AFTER_CAP_S``), else ``backoff_s * 2**(retry-1)`` times a jitter in [0.5, 1.5)."""
    jitter = 0.5 + rng.random()  # drawn even when unused, so the sequence of draws does not depend on the server
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP_S)
    return min(backoff_s * 2 ** (retry - 1) * jitter, BACKOFF_CAP_S)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for every client: building one loads the CA bundle (~20 ms each)."""
    return httpx.create_ssl_context()


def _body(model: str, request: ChatRequest, logprobs: bool = False) -> dict[str, Any]:
    s = request.sampling
    body = {"model": model, "messages": list(request.messages), "temperature": s.temperature,
            "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": request.seed}
    return {**body, "logprobs": True, "top_logprobs": TOP_LOGPROBS} if logprobs else body


def _chosen(request: ChoiceRequest, response: ChatResponse, logprobs: Any) -> ChoiceResponse:
    """The choice a reply names, with the options' log-probabilities where the server's tell them apart."""
    done = ChoiceResponse(index=None, text=response.text, prompt_tokens=response.prompt_tokens,
                          completion_tokens=response.completion_tokens, latency_s=response.latency_s,
                          error=response.error)
    if response.error is not None:
        return done
    index = read_choice(response.text, request.options)
    if index is None:
        shown = " ".join(response.text.split())[:80]
        return replace(done, error=f"openai backend: the reply names none of the options "
                                   f"{list(request.options)}: {shown!r}")
    return replace(done, index=index, option=request.options[index],
                   logprobs=first_token_logprobs(_first_token_top(logprobs), request.options))


def _first_token_top(logprobs: Any) -> list[tuple[str, float]]:
    """``(token, logprob)`` of the most likely tokens at the reply's first non-blank token, from the OpenAI
    chat format (``{"content": [{"token", "logprob", "top_logprobs": [...]}, ...]}``); ``[]`` if absent."""
    try:
        for entry in logprobs["content"]:
            if entry["token"].strip():
                top = entry.get("top_logprobs") or [entry]
                return [(t["token"], float(t["logprob"])) for t in top]
    except (KeyError, TypeError, ValueError):
        pass
    return []


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise ValuesimError(f"openai backend: the environment variable {variable} (api_key_env) is not set "
                            "or empty; export the API key in it, or leave api_key_env unset for a server "
                            "that needs no key")
    if not (key.isascii() and key.isprintable()) or " " in key:
        # h11 would reject the header with the value in its message: refuse it here, naming only the variable
        raise ValuesimError(f"openai backend: the environment variable {variable} (api_key_env) holds spaces, "
                            "control or non-ASCII characters, which an API key never has; check how it is set")
    return key


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date; ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_reason(reply: httpx.Response, key: str | None) -> str:
    """``HTTP 404: <the server's message, shortened>``; the message matters for the 4xx that are not retried."""
    reason = f"HTTP {reply.status_code}"
    if reply.status_code in RETRY_STATUSES:
        return reason  # the status says it all, and the text would repeat on every attempt
    try:
        error = reply.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = reply.text
    message = " ".join(str(message or "").split())[:160]
    return f"{reason}: {_scrub(message, key)}" if message else reason


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "***") if key else text


def _estimate(text: str) -> int:
    """Tokens when the server reports no ``usage``: about four characters a token."""
    return len(text) // 4


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default

