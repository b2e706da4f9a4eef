"""The ``openai`` backend over real HTTP against the fake chat server (127.0.0.1 only, no network)."""

from __future__ import annotations

import logging
import random
import socket
import time

import pytest
from pydantic import ValidationError

from plugins.llm.openai_backend import OpenAIBackend, retry_delay
from sim.checks import check_plugin
from sim.errors import ValuesimError
from sim.llm import BudgetExhausted, ChatRequest, Sampling, complete
from sim.llm.testing import FakeChatServer, count_tokens, fake_reply

KEY = "sk-test-SECRET-123"
KEY_ENV = "VALUESIM_TEST_OPENAI_KEY"


def backend(server_or_url, **params) -> OpenAIBackend:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.base_url
    params = {"model": "fake-model", "backoff_s": 0.01, "timeout_s": 5.0, **params}
    return OpenAIBackend(OpenAIBackend.Params(base_url=url, **params))


def ask(prompt: str, seed: int = 0, **sampling) -> ChatRequest:
    messages = ({"role": "system", "content": "You are a person."}, {"role": "user", "content": prompt})
    return ChatRequest(messages=messages, sampling=Sampling(**sampling), seed=seed)


def test_registers_as_a_plugin_and_rejects_bad_params():
    check_plugin("llm_backends", OpenAIBackend, name="openai", origin="test")
    with pytest.raises(ValidationError, match="concurrency"):
        OpenAIBackend.Params(base_url="http://127.0.0.1:1/v1", model="m", concurrency=0)
    with pytest.raises(ValidationError, match="did you mean 'api_key_env'"):
        OpenAIBackend.Params(base_url="http://127.0.0.1:1/v1", model="m", api_key_en="X")


def test_happy_path_keeps_order_and_sends_the_request_as_openai_does(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    requests = [ask(f"prompt number {i}", seed=100 + i, temperature=0.3, top_p=0.9, max_tokens=12)
                for i in range(6)]
    with FakeChatServer(latency_s=0.02) as server:
        model = backend(server, api_key_env=KEY_ENV)
        responses = complete(model, requests)
    assert model.model_id == "fake-model"
    for request, response, i in zip(requests, responses, range(6)):
        body = {"messages": list(request.messages), "seed": 100 + i, "max_tokens": 12}
        assert response.text == fake_reply(body) and response.error is None
        assert response.completion_tokens == count_tokens(response.text)
        assert response.prompt_tokens == count_tokens(f"You are a person. prompt number {i}")
        assert response.latency_s >= 0.02
    seen = {r["prompt"]: r for r in server.requests}
    assert len(server.requests) == 6
    first = seen["prompt number 0"]
    assert first["path"] == "/v1/chat/completions"
    assert first["body"] == {"model": "fake-model", "messages": list(requests[0].messages), "temperature": 0.3,
                             "top_p": 0.9, "max_tokens": 12, "seed": 100}
    assert first["headers"]["Authorization"] == f"Bearer {KEY}"
    assert model.requests_sent == 6
    assert model.tokens_used == sum(r.prompt_tokens + r.completion_tokens for r in responses)


def test_no_key_variable_sends_no_authorization_header():
    with FakeChatServer() as server:
        complete(backend(server), [ask("hello")])
    assert "Authorization" not in server.requests[0]["headers"]


def test_a_missing_key_variable_is_named_without_a_value(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValuesimError, match=KEY_ENV):
        backend("http://127.0.0.1:1/v1", api_key_env=KEY_ENV)


@pytest.mark.parametrize("fault", ["429", "500", "503", "hang", "malformed", "no_choices"])
def test_each_fault_is_recovered_by_a_retry(fault):
    with FakeChatServer(per_prompt={"flaky": [fault, fault]}) as server:
        responses = complete(backend(server, timeout_s=0.3), [ask("fine"), ask("flaky"), ask("also fine")])
    assert [r.error for r in responses] == [None, None, None]
    assert responses[1].text == fake_reply({"messages": [{"role": "user", "content": "flaky"}], "seed": 0,
                                            "max_tokens": 96})
    assert server.attempts("flaky") == 3 and server.attempts("fine") == 1


def test_a_request_that_keeps_failing_comes_back_with_an_error_while_the_others_succeed():
    with FakeChatServer(per_prompt={"doomed": ["500"] * 10}) as server:
        responses = complete(backend(server, max_retries=2), [ask("a"), ask("doomed"), ask("b")])
    assert responses[1].text == "" and responses[1].error == "HTTP 500 after 3 attempts"
    assert responses[0].error is None and responses[2].error is None and responses[0].text
    assert server.attempts("doomed") == 3


def test_a_client_error_is_not_retried_and_keeps_the_servers_message():
    with FakeChatServer(per_prompt={"p": ["404"]}) as server:
        [response] = complete(backend(server), [ask("p")])
    assert response.error == "HTTP 404: fake fault 404" and server.attempts("p") == 1


def test_timeouts_give_up_after_the_retries():
    start = time.perf_counter()
    with FakeChatServer(script=["hang"] * 4) as server:
        [response] = complete(backend(server, timeout_s=0.2, max_retries=1), [ask("slow")])
    assert response.error == "timeout after 2 attempts"
    assert server.attempts("slow") == 2 and time.perf_counter() - start < 5


def test_a_refused_connection_is_retried_then_reported():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    [response] = complete(backend(url, max_retries=2), [ask("anyone?")])
    assert response.error.startswith("connection error") and response.error.endswith("after 3 attempts")


def test_retry_after_is_honoured_and_capped(monkeypatch):
    with FakeChatServer(per_prompt={"p": ["429"]}, retry_after="0.3") as server:
        start = time.perf_counter()
        [response] = complete(backend(server, backoff_s=0), [ask("p")])
        assert response.error is None and time.perf_counter() - start >= 0.3
    monkeypatch.setattr("plugins.llm.openai_backend.RETRY_AFTER_CAP_S", 0.05)
    with FakeChatServer(per_prompt={"p": ["429"]}, retry_after="3600") as server:
        start = time.perf_counter()
        [response] = complete(backend(server), [ask("p")])
        assert response.error is None and time.perf_counter() - start < 5


def test_backoff_doubles_with_jitter_drawn_from_the_seed():
    def delays(seed):
        rng = random.Random(seed)
        return [retry_delay(n, 0.5, rng) for n in range(1, 5)]

    assert delays(3) == delays(3) != delays(4)
    for n, delay in enumerate(delays(3)):
        assert 0.5 * 2 ** n * 0.5 <= delay < 0.5 * 2 ** n * 1.5


def test_concurrency_is_bounded():
    with FakeChatServer(latency_s=0.05) as server:
        start = time.perf_counter()
        responses = complete(backend(server, concurrency=4), [ask(f"p{i}") for i in range(16)])
        elapsed = time.perf_counter() - start
    assert all(r.error is None for r in responses)
    assert 2 <= server.max_in_flight <= 4
    assert 0.2 <= elapsed < 3.0  # 16 / 4 = 4 rounds of 50 ms; loose above for a busy machine


def test_the_request_budget_raises_before_sending_more():
    with FakeChatServer() as server:
        model = backend(server, max_requests=5)
        complete(model, [ask(f"p{i}") for i in range(3)])
        with pytest.raises(BudgetExhausted, match="openai backend: request budget of 5 spent"):
            complete(model, [ask(f"q{i}") for i in range(3)])
        assert len(server.requests) == 3
        server.per_prompt = {"r": ["500"] * 5}  # retries count: the third attempt would be the sixth request
        with pytest.raises(BudgetExhausted, match="request budget of 5 spent"):
            complete(model, [ask("r")])
        assert len(server.requests) == 5 and model.requests_sent == 5


def test_the_token_budget_raises_once_spent():
    with FakeChatServer() as server:
        model = backend(server, max_tokens=20)
        [response] = complete(model, [ask("a fairly long prompt with many words in it")])
        assert model.tokens_used == response.prompt_tokens + response.completion_tokens > 20
        with pytest.raises(BudgetExhausted, match=r"token budget of 20 spent \(\d+ used\)"):
            complete(model, [ask("more")])
        assert len(server.requests) == 1


def test_tokens_are_estimated_when_the_server_reports_no_usage():
    with FakeChatServer(usage=False) as server:
        model = backend(server)
        [response] = complete(model, [ask("hello there")])
    assert response.completion_tokens == len(response.text) // 4
    assert response.prompt_tokens == len("You are a person. hello there") // 4
    assert model.tokens_used == response.prompt_tokens + response.completion_tokens


def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY + "\n")
    with pytest.raises(ValuesimError, match=KEY_ENV) as refused:
        backend("http://127.0.0.1:1/v1", api_key_env=KEY_ENV)
    assert KEY not in str(refused.value)


def test_the_key_appears_in_no_message_repr_response_or_log(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeChatServer(per_prompt={"echo": ["401"]}) as server:
        model = backend(server, api_key_env=KEY_ENV, max_requests=3)
        responses = complete(model, [ask("echo"), ask("fine")])
        with pytest.raises(BudgetExhausted) as spent:
            complete(model, [ask("x"), ask("y")])
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # the fake does echo it back
    assert responses[0].error.startswith("HTTP 401: Incorrect API key provided: Bearer ***")
    texts = [repr(model), repr(model.params), str(model.params), str(spent.value),
             *(repr(r) for r in responses), *(str(r.to_json()) for r in responses)]
    assert not [t for t in texts if KEY in t]
    assert "HTTP Request: POST" in caplog.text and KEY not in caplog.text  # httpx logs requests, not headers
