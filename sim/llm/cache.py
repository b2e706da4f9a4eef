"""The on-disk response cache: a run replays exactly without calling the model again.

Every response is stored under :meth:`sim.llm.contract.ChatRequest.cache_key` (a hash of
backend, model, prompt, sampling parameters and seed) in one SQLite file, by
default ``runs/.llm-cache.sqlite`` shared by every run under ``runs/``.
:class:`CachedBackend` wraps any backend and answers what it can from the file.

Modes (``CacheMode``):

- ``off``: pass every request through; the file is not touched.
- ``read``: answer hits from the file, send misses to the model, never write
  (replaying someone else's cache without changing it).
- ``readwrite``: answer hits, send misses, store what comes back.

A response that carries ``error`` is never stored, so a failure is retried on
the next run rather than replayed. A reply longer than ``MAX_REPLY_CHARS`` is
cut to that length and marked (:func:`kept_text`) before anyone sees it, so
one runaway server cannot grow the file (or the run's events) without bound,
and a replay reads what the first run read. The file is safe for one writing process
(WAL mode lets readers in other processes look on); two runs writing the same
cache at once should use two files.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Literal

from ..errors import PluginError, ValuesimError
from .contract import ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse, LLMBackend, can_choose

CacheMode = Literal["off", "read", "readwrite"]
CACHE_MODES: tuple[str, ...] = ("off", "read", "readwrite")
CACHE_FILE_NAME = ".llm-cache.sqlite"
MAX_REPLY_CHARS = 64 * 1024
"""The most characters of one reply that are kept (logged, cached, read); valuesim asks for short answers."""
TRUNCATED_MARK = " [truncated by valuesim: the reply had {n} characters]"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key      TEXT PRIMARY KEY,
    backend  TEXT NOT NULL,
    model    TEXT NOT NULL,
    response TEXT NOT NULL,
    created  REAL NOT NULL
)
"""
# SQLite's historical limit on ``?`` parameters in one statement is 999.
_LOOKUP_CHUNK = 500


def kept_text(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """``text`` itself, or its start and a mark saying it was cut and how long it was, ``limit`` characters
    in all (so a kept text is kept as it is)."""
    if len(text) <= limit:
        return text
    mark = TRUNCATED_MARK.format(n=len(text))
    return text[:limit - len(mark)] + mark


def _kept(response: ChatResponse) -> ChatResponse:
    return response if len(response.text) <= MAX_REPLY_CHARS else replace(response, text=kept_text(response.text))


def default_cache_path(runs_dir: Path) -> Path:
    """Where runs under ``runs_dir`` share their cache: ``runs_dir / ".llm-cache.sqlite"``."""
    return Path(runs_dir) / CACHE_FILE_NAME


class ResponseCache:
    """Responses on disk, keyed by ``ChatRequest.cache_key(backend, model)``.

    ``get``/``get_many`` return responses marked ``cached=True``; ``put``/
    ``put_many`` store responses (those with ``error`` are skipped). Use it as
    a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: a backend may run its event loop in a worker thread;
            # there is still only one writer, and every write is one short transaction.
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except (sqlite3.DatabaseError, OSError) as exc:
            if self._db is not None:
                self._db.close()
            raise ValuesimError(f"cannot open the LLM response cache {self.path}: {exc} "
                                "(delete the file to start a fresh cache)") from None

    def get(self, key: str) -> ChatResponse | None:
        """The stored response for ``key`` (``cached=True``), or ``None``."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResponse]:
        """Stored responses for those of ``keys`` that are present, by key."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, ChatResponse] = {}
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start:start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk)
            for key, blob in rows:
                response = _decode(blob)
                if response is not None:
                    found[key] = response
        return found

    def put(self, key: str, response: ChatResponse, backend: str, model: str) -> bool:
        """Store one response; returns whether it was stored (a response with ``error`` is not)."""
        return self.put_many([(key, response)], backend, model) == 1

    def put_many(self, items: Iterable[tuple[str, ChatResponse]], backend: str, model: str) -> int:
        """Store ``(key, response)`` pairs in one transaction; returns how many were stored."""
        now = time.time()
        rows = [(key, backend, model, json.dumps(_kept(response).to_json(), sort_keys=True), now)
                for key, response in items if response.error is None]
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"


def _decode(blob: str) -> ChatResponse | ChoiceResponse | None:
    """A stored row back into a response; an unreadable row counts as a miss (it will be overwritten)."""
    try:
        data = json.loads(blob)
        return (ChoiceResponse if data.get("call") == "choice" else ChatResponse).from_json(data, cached=True)
    except (ValueError, KeyError, TypeError):
        return None


class CachedBackend:
    """Any :class:`~sim.llm.contract.LLMBackend` behind the response cache.

    ``complete(requests)`` looks every request up, sends the misses to the
    inner backend in one batch (a request repeated within the batch is sent
    once and its answer shared, so a replay gives the same answers as the
    first run), stores what came back (``readwrite``) and returns one response
    per request in order, hits marked ``cached=True``. ``choose(requests)``
    does the same for choices (keyed by ``ChoiceRequest.cache_key``); it is
    ``None`` when the inner backend has no choice call.

    Counters, for tests and logs: ``hits`` and ``misses`` (requests answered
    from the file or not), ``calls`` (batches sent to the inner backend) and
    ``sent`` (requests in those batches).
    """

    def __init__(self, inner: LLMBackend, cache: ResponseCache | None, mode: CacheMode = "readwrite"):
        if mode not in CACHE_MODES:
            raise ValuesimError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
        if mode != "off" and cache is None:
            raise ValuesimError(f"cache mode {mode!r} needs a cache file; pass a ResponseCache or use mode 'off'")
        self.inner = inner
        self.cache = cache
        self.mode = mode
        self.hits = self.misses = self.calls = self.sent = 0
        if not can_choose(inner):
            self.choose = None  # type: ignore[assignment]  # the choice call is optional: absent if inner has none

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def Params(self):  # noqa: N802 - mirrors the LLMBackend contract's class attribute
        return type(self.inner).Params

    async def complete(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        return await self._answer(requests, "complete")

    async def choose(self, requests: list[ChoiceRequest]) -> list[ChoiceResponse]:
        return await self._answer(requests, "choose")

    async def _answer(self, requests: list, call: str) -> list:
        if not requests:
            return []
        if self.mode == "off":
            self.misses += len(requests)
            return [_kept(r) for r in await self._send(requests, call)]
        name, model = self.inner.name, self.inner.model_id
        keys = [request.cache_key(name, model) for request in requests]
        found = self.cache.get_many(keys)
        missing = {key: request for key, request in zip(keys, requests) if key not in found}
        self.hits += sum(key in found for key in keys)
        self.misses += len(requests) - sum(key in found for key in keys)
        if missing:
            answers = [_kept(r) for r in await self._send(list(missing.values()), call)]
            fresh = dict(zip(missing, answers))
            if self.mode == "readwrite":
                self.cache.put_many(fresh.items(), name, model)
            found = {**found, **fresh}
        return [found[key] for key in keys]

    async def _send(self, requests: list, call: str) -> list:
        self.calls += 1
        self.sent += len(requests)
        responses = await getattr(self.inner, call)(requests)
        if len(responses) != len(requests):
            raise PluginError(f"LLM backend {self.inner.name!r} returned {len(responses)} responses "
                              f"for {len(requests)} requests; it must return one per request, in order")
        return list(responses)

    def stats(self) -> dict[str, int]:
        """The counters as a dict, for a log line."""
        return {"hits": self.hits, "misses": self.misses, "calls": self.calls, "sent": self.sent}

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner.name!r}, model={self.inner.model_id!r}, mode={self.mode!r})"


def with_run_cache(backend: LLMBackend, context: dict) -> LLMBackend:
    """``backend`` behind the run's response cache (``world.context["llm_cache"]``), or as it is when the run
    has none (``--llm-cache off``, or a world built outside a run)."""
    cache = context.get("llm_cache")
    if cache is None:
        return backend
    return CachedBackend(backend, cache, context.get("llm_cache_mode", "readwrite"))
