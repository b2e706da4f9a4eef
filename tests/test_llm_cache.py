"""The on-disk response cache: replay without calls, modes, keys, errors, persistence."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.contracts import NoParams
from sim.errors import ValuesimError
from sim.llm import ChatRequest, ChatResponse, LLMBackend, Sampling, complete
from sim.llm.cache import CachedBackend, ResponseCache, default_cache_path


class FakeBackend:
    """Answers every request with a counter, so a second call is visible; ``fail`` marks prompts it errors on."""

    Params = NoParams
    name = "fake"

    def __init__(self, model: str = "fake-1", fail: tuple[str, ...] = ()):
        self.model = model
        self.fail = fail
        self.batches: list[list[ChatRequest]] = []

    @property
    def model_id(self) -> str:
        return self.model

    async def complete(self, requests):
        self.batches.append(list(requests))
        out = []
        for request in requests:
            prompt = request.messages[-1]["content"]
            if prompt in self.fail:
                out.append(ChatResponse(text="", error="timed out"))
            else:
                out.append(ChatResponse(text=f"{prompt}#{sum(map(len, self.batches))}", prompt_tokens=3,
                                        completion_tokens=2, latency_s=0.5))
        return out


def ask(prompt: str, **changes) -> ChatRequest:
    return ChatRequest(messages=({"role": "system", "content": "persona"}, {"role": "user", "content": prompt}),
                       **changes)


BATCH = [ask("a"), ask("b"), ask("c", seed=4)]


@pytest.fixture
def cache(tmp_path):
    with ResponseCache(default_cache_path(tmp_path)) as c:
        yield c


def test_second_run_makes_no_inner_calls_and_replays_identically(cache):
    inner = FakeBackend()
    backend = CachedBackend(inner, cache, "readwrite")
    assert isinstance(backend, LLMBackend) and backend.name == "fake" and backend.model_id == "fake-1"
    first = complete(backend, BATCH)
    assert (backend.hits, backend.misses, backend.calls) == (0, 3, 1)
    assert not any(r.cached for r in first)
    second = complete(backend, BATCH)
    assert (backend.hits, backend.misses, backend.calls) == (3, 3, 1)
    assert len(inner.batches) == 1
    assert all(r.cached for r in second)
    assert [r.to_json() for r in second] == [r.to_json() for r in first]


def test_only_misses_are_sent_in_one_batch_and_order_is_kept(cache):
    inner = FakeBackend()
    backend = CachedBackend(inner, cache, "readwrite")
    complete(backend, [BATCH[1]])
    out = complete(backend, [BATCH[0], BATCH[1], BATCH[2], BATCH[0]])
    assert [r.text.split("#")[0] for r in out] == ["a", "b", "c", "a"]
    assert [r.cached for r in out] == [False, True, False, False]
    # the repeated request is sent once and its answer shared
    assert [[q.messages[-1]["content"] for q in batch] for batch in inner.batches] == [["b"], ["a", "c"]]
    assert out[0] == out[3]
    assert backend.stats() == {"hits": 1, "misses": 4, "calls": 2, "sent": 3}


def test_read_mode_uses_hits_but_never_writes(cache):
    complete(CachedBackend(FakeBackend(), cache, "readwrite"), [BATCH[0]])
    inner = FakeBackend()
    reader = CachedBackend(inner, cache, "read")
    out = complete(reader, BATCH)
    assert [r.cached for r in out] == [True, False, False]
    assert len(cache) == 1
    complete(reader, BATCH)
    assert len(inner.batches) == 2 and reader.hits == 2


def test_off_mode_always_calls(cache):
    inner = FakeBackend()
    backend = CachedBackend(inner, cache, "off")
    complete(backend, BATCH)
    complete(backend, BATCH)
    assert backend.calls == 2 and backend.hits == 0 and len(cache) == 0
    no_file = CachedBackend(FakeBackend(), None, "off")  # no file needed when off
    assert [r.text for r in complete(no_file, BATCH[:1])] == ["a#1"]


def test_keys_differ_with_model_prompt_sampling_and_seed():
    base = ask("a")
    keys = {
        base.cache_key("fake", "m1"),
        base.cache_key("fake", "m2"),
        base.cache_key("other", "m1"),
        ask("b").cache_key("fake", "m1"),
        replace(base, messages=({"role": "system", "content": "other"}, base.messages[1])).cache_key("fake", "m1"),
        replace(base, sampling=Sampling(temperature=0.0)).cache_key("fake", "m1"),
        replace(base, sampling=Sampling(max_tokens=7)).cache_key("fake", "m1"),
        replace(base, seed=1).cache_key("fake", "m1"),
    }
    assert len(keys) == 8
    assert replace(base, tag={"agent": 9}).cache_key("fake", "m1") == base.cache_key("fake", "m1")


def test_a_different_model_misses(cache):
    complete(CachedBackend(FakeBackend("m1"), cache), BATCH)
    other = CachedBackend(FakeBackend("m2"), cache)
    complete(other, BATCH)
    assert other.hits == 0 and other.calls == 1 and len(cache) == 6


def test_errors_are_returned_but_not_cached(cache):
    inner = FakeBackend(fail=("b",))
    backend = CachedBackend(inner, cache)
    out = complete(backend, BATCH)
    assert out[1].error == "timed out" and out[0].error is None
    assert len(cache) == 2
    assert not cache.put("k", ChatResponse(text="", error="boom"), "fake", "m")
    complete(backend, BATCH)
    assert [q.messages[-1]["content"] for q in inner.batches[1]] == ["b"]


def test_the_file_survives_reopening(tmp_path):
    path = default_cache_path(tmp_path / "runs")
    assert path == tmp_path / "runs" / ".llm-cache.sqlite"
    with ResponseCache(path) as cache:
        first = complete(CachedBackend(FakeBackend(), cache), BATCH)
    inner = FakeBackend()
    with ResponseCache(path) as cache:
        backend = CachedBackend(inner, cache, "read")
        again = complete(backend, BATCH)
        key = BATCH[0].cache_key("fake", "fake-1")
        assert key in cache and cache.get(key).text == first[0].text and cache.get("nope") is None
    assert inner.batches == [] and [r.text for r in again] == [r.text for r in first]


def test_values_round_trip(cache):
    response = ChatResponse(text="hi", values=(0.25, 0.5), prompt_tokens=4)
    assert cache.put("k", response, "scripted", "scripted")
    assert cache.get("k") == replace(response, cached=True)


def test_bad_mode_and_missing_cache_are_errors(cache, tmp_path):
    with pytest.raises(ValuesimError, match="one of off, read, readwrite"):
        CachedBackend(FakeBackend(), cache, "write")
    with pytest.raises(ValuesimError, match="needs a cache file"):
        CachedBackend(FakeBackend(), None, "read")
    not_a_db = tmp_path / "junk.sqlite"
    not_a_db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValuesimError, match="junk.sqlite"):
        ResponseCache(not_a_db)
