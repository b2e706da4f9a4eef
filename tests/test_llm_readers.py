"""Value readers: direct values, and JSON ratings parsed forgivingly from scripted replies."""

from __future__ import annotations

import pytest

from plugins.llm.readers import Auto, Direct, JsonRatings, parse_ratings, rating_prompt
from sim.checks import check_plugin
from sim.contracts import NoParams
from sim.llm import ChatResponse, ValueReader
from sim.core.valuespace import BUILTIN_SPACES

DIMS = ("care", "fairness", "loyalty", "authority")


class ReplyBackend:
    """Answers rating requests with the given replies, in order; records what it was asked."""

    Params = NoParams
    name = "replies"
    model_id = "replies-1"

    def __init__(self, *replies: str | ChatResponse):
        self.replies = list(replies)
        self.batches = []

    async def complete(self, requests):
        self.batches.append(list(requests))
        out = [self.replies.pop(0) for _ in requests]
        return [r if isinstance(r, ChatResponse) else ChatResponse(text=r) for r in out]


def rate(*replies, dims=DIMS, **params):
    backend = ReplyBackend(*replies)
    reader = JsonRatings(JsonRatings.Params(**params))
    messages = [ChatResponse(text=f"message {i}") for i in range(len(replies))]
    vectors, notes = reader.read(messages, dims, backend)
    return vectors, notes, backend


@pytest.mark.parametrize("cls", [Direct, JsonRatings, Auto])
def test_readers_meet_the_contract(cls):
    check_plugin("value_readers", cls, name=cls.__name__, origin="test")
    assert isinstance(cls(cls.Params()), ValueReader)


def test_clean_json_in_one_batch():
    vectors, notes, backend = rate('{"care": 10, "fairness": 5, "loyalty": 0, "authority": 2.5}',
                                   '{"care": 1, "fairness": 2, "loyalty": 3, "authority": 4}')
    assert vectors == [[1.0, 0.5, 0.0, 0.25], [0.1, 0.2, 0.3, 0.4]]
    assert notes == ["", ""]
    assert len(backend.batches) == 1 and len(backend.batches[0]) == 2
    request = backend.batches[0][0]
    assert request.sampling.temperature == 0 and request.sampling.max_tokens == 120 and request.seed == 0
    assert "message 0" in request.messages[-1]["content"]


def test_json_inside_prose_and_code_fences():
    reply = 'Sure! On a scale [0, 10] here you go:\n```json\n{"care": 8, "fairness": 6, "loyalty": 4, ' \
            '"authority": 2}\n```\nHope that helps {really}.'
    vectors, notes, _ = rate(reply)
    assert vectors == [[0.8, 0.6, 0.4, 0.2]] and notes == [""]


def test_numeric_strings_and_key_spelling():
    vectors, notes, _ = rate('{"CARE": "7", "Fair ness": " 3 ", "loyalty ": "9/10", "Authority": 1}')
    assert vectors == [[0.7, 0.3, 0.9, 0.1]] and notes == [""]
    vectors, _, _ = rate('{"self direction": 6, "Self-Direction": 1, "universalism": 2}',
                         dims=("self_direction", "universalism"))
    assert vectors == [[0.6, 0.2]]


def test_out_of_range_is_clamped():
    vectors, notes, _ = rate('{"care": 14, "fairness": -2, "loyalty": 5, "authority": 10}')
    assert vectors == [[1.0, 0.0, 0.5, 1.0]] and notes == ["clamped"]


def test_missing_keys_filled_up_to_max_missing_else_failed():
    vectors, notes, _ = rate('{"care": 8, "fairness": 6}')  # 2 of 4 missing: default max_missing = 2
    assert vectors == [[0.8, 0.6, 0.5, 0.5]] and notes == ["filled: loyalty, authority"]
    vectors, notes, _ = rate('{"care": 8}')
    assert vectors == [None] and "3 of 4 dimensions missing" in notes[0] and "loyalty" in notes[0]
    vectors, notes, _ = rate('{"care": 8, "fairness": 6}', max_missing=1)
    assert vectors == [None]
    vectors, notes, _ = rate('{"care": 8, "fairness": "high", "loyalty": 2, "authority": 2}')
    assert vectors == [[0.8, 0.5, 0.2, 0.2]] and notes == ["filled: fairness"]


def test_list_reply_in_dimension_order():
    vectors, notes, _ = rate("[2, 4, 6, 8]")
    assert vectors == [[0.2, 0.4, 0.6, 0.8]] and notes == [""]
    vectors, notes, _ = rate("Ratings: [2, 4, 6]")
    assert vectors == [[0.2, 0.4, 0.6, 0.5]] and notes == ["filled: authority"]
    vectors, notes, _ = rate("[1, 2, 3, 4, 5]")
    assert vectors == [None] and "list of 5 numbers, expected 4" in notes[0]


def test_nearly_json_is_repaired():
    vectors, notes, _ = rate("{'care': 9, 'fairness': 7, loyalty: 5, 'authority': 3,}")
    assert vectors == [[0.9, 0.7, 0.5, 0.3]] and notes == ["repaired: not strict JSON"]
    vectors, notes, _ = rate('{"ratings": {"care": 9, "fairness": 7, "loyalty": 5, "authority": 3}}')
    assert vectors == [[0.9, 0.7, 0.5, 0.3]] and notes == [""]
    vectors, notes, _ = rate('{"care": 9, "fairness": 7, "loyalty": 5, "authority": 3, "mood": 2}')
    assert vectors == [[0.9, 0.7, 0.5, 0.3]] and notes == ["ignored: mood"]


@pytest.mark.parametrize("reply", ["I cannot rate that.", "", "{}", "{not json at all}", "[]", "null"])
def test_garbage_is_none_with_a_note(reply):
    vectors, notes, _ = rate(reply)
    assert vectors == [None] and notes[0]


def test_failed_requests_and_empty_messages_are_not_rated():
    backend = ReplyBackend(ChatResponse(text="", error="timed out"))
    messages = [ChatResponse(text="", error="budget"), ChatResponse(text="  "), ChatResponse(text="hello")]
    vectors, notes = JsonRatings(JsonRatings.Params()).read(messages, DIMS, backend)
    assert vectors == [None, None, None]
    assert "budget" in notes[0] and "empty" in notes[1] and "timed out" in notes[2]
    assert len(backend.batches[0]) == 1


def test_direct_reads_attached_values():
    responses = [ChatResponse(text="x", values=(0.1, 0.2)), ChatResponse(text="y"),
                 ChatResponse(text="z", values=(0.5,)), ChatResponse(text="w", values=(1.2, -0.1))]
    vectors, notes = Direct(NoParams()).read(responses, ("a", "b"), backend=None)
    assert vectors == [[0.1, 0.2], None, None, [1.0, 0.0]]
    assert notes[0] == "" and notes[1] == "no values in response" and "expected 2" in notes[2]
    assert notes[3] == "clamped"


def test_auto_uses_direct_where_it_can_and_rates_the_rest():
    backend = ReplyBackend('{"a": 3, "b": 7}')
    responses = [ChatResponse(text="x", values=(0.1, 0.2)), ChatResponse(text="y")]
    vectors, notes = Auto(Auto.Params()).read(responses, ("a", "b"), backend)
    assert vectors == [[0.1, 0.2], [0.3, 0.7]] and notes == ["", ""]
    assert len(backend.batches) == 1 and len(backend.batches[0]) == 1
    untouched = ReplyBackend()
    Auto(Auto.Params()).read(responses[:1], ("a", "b"), untouched)
    assert untouched.batches == []


@pytest.mark.parametrize("space", sorted(BUILTIN_SPACES))
def test_prompt_names_every_dimension_with_a_meaning_and_the_json_shape(space):
    dims = BUILTIN_SPACES[space]
    prompt = rating_prompt("We must protect our traditions.", dims)
    for name in dims:
        line = next(line for line in prompt.splitlines() if line.startswith(f"- {name}: "))
        assert len(line) > len(name) + 10
    assert "{" + ", ".join(f'"{d}": <0-10>' for d in dims) + "}" in prompt
    assert "JSON only" in prompt and "We must protect our traditions." in prompt


def test_parse_ratings_scales_floats():
    assert parse_ratings('{"x": 7.5}', ("x",), 0) == ([0.75], "")
