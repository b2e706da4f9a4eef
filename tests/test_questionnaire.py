"""Questionnaires: the shipped files load and cover their spaces; scoring; the scripted round trip."""

from __future__ import annotations

import pytest
import yaml

from sim.errors import ScenarioError
from sim.llm import ChatResponse
from sim.llm.questionnaire import QUESTIONNAIRE_DIR, Item, Questionnaire, load_questionnaire, scripted_answer
from sim.core.valuespace import BUILTIN_SPACES

from tests.conftest import REPO


@pytest.mark.parametrize("space", sorted(BUILTIN_SPACES))
def test_every_shipped_questionnaire_loads_and_covers_its_space(space):
    q = load_questionnaire(space, BUILTIN_SPACES[space])
    assert QUESTIONNAIRE_DIR.resolve() == REPO / "agents" / "questionnaires"
    assert (q.space, q.dimensions, q.scale_min, q.scale_max, len(q.labels)) == (space, BUILTIN_SPACES[space], 1, 6, 6)
    for dim in BUILTIN_SPACES[space]:
        assert sum(item.dimension == dim for item in q.items) == 2
    assert any(item.reverse for item in q.items) and not all(item.reverse for item in q.items)
    assert len({item.text for item in q.items}) == len(q.items)


def test_no_other_files_ship():
    assert sorted(p.stem for p in QUESTIONNAIRE_DIR.glob("*.yaml")) == sorted(BUILTIN_SPACES)


def test_requests_carry_persona_item_tag_and_hints():
    q = load_questionnaire("wvs2", BUILTIN_SPACES["wvs2"])
    requests = q.requests("You are Ana, a farmer.", seed=5, tag={"agent": 3}, hints={"profile": {"x": 1}})
    assert len(requests) == len(q.items)
    first = requests[1]
    assert first.messages[0] == {"role": "system", "content": "You are Ana, a farmer."}
    user = first.messages[1]["content"]
    assert user.startswith("Rate how much you agree") and q.items[1].text in user
    assert "one number from 1 to 6" in user and "6 = strongly agree" in user
    assert first.seed == 5 and first.sampling.temperature == 0
    assert first.tag == {"agent": 3, "purpose": "questionnaire", "dimension": "traditional_secular", "item": 1}
    assert first.hints == {"profile": {"x": 1}, "purpose": "questionnaire", "dimension": "traditional_secular",
                           "reverse": True, "scale": [1, 6]}


def small() -> Questionnaire:
    return Questionnaire(space="t", dimensions=("a", "b", "c"), items=(
        Item("a", "A1"), Item("a", "A2", reverse=True), Item("b", "B1"), Item("c", "C1")))


def answers(*texts):
    return [ChatResponse(text=t) for t in texts]


def test_score_handcrafted_answers():
    values, notes = small().score(answers("6", "2", "1", "I'd say 4, really."))
    # a: 6 -> 1.0, reverse 2 -> 5 -> 0.8; b: 1 -> 0.0; c: 4 -> 0.6
    assert values == pytest.approx([0.9, 0.0, 0.6]) and notes == []


def test_unusable_answers_are_noted_and_skipped():
    replies = answers("Strongly agree!", "3", "9", "")
    values, notes = small().score(replies[:3] + [ChatResponse(text="", error="timed out")])
    assert values[0] == pytest.approx(0.6) and values[1] is None  # reverse-keyed 3 -> 4 and values[2] is None
    assert any("item 0 (a): no number" in n for n in notes)
    assert any("item 2 (b): 9 is off the scale 1..6" in n for n in notes)
    assert any("item 3 (c)" in n and "timed out" in n for n in notes)
    assert "b: no usable answer" in notes and "c: no usable answer" in notes
    with pytest.raises(ValueError, match="3 answers for the 4 items"):
        small().score(replies[:3])


@pytest.mark.parametrize("space", sorted(BUILTIN_SPACES))
def test_scripted_answers_recover_the_profile(space):
    dims = BUILTIN_SPACES[space]
    q = load_questionnaire(space, dims)
    for profile_values in ([0.0] * len(dims), [1.0] * len(dims), [(i * 0.37) % 1 for i in range(len(dims))]):
        profile = dict(zip(dims, profile_values))
        requests = q.requests("persona", seed=0, tag={}, hints={"profile": profile})
        values, notes = q.score(answers(*(scripted_answer(r.hints) for r in requests)))
        assert notes == []
        assert values == pytest.approx(profile_values, abs=1 / 5)


def test_scripted_answer_contract():
    hints = {"purpose": "questionnaire", "dimension": "a", "reverse": False, "profile": {"a": 0.8}}
    assert scripted_answer(hints) == "5"
    assert scripted_answer({**hints, "reverse": True}) == "2"
    assert scripted_answer({**hints, "profile": {"a": 1.7}}) == "6"
    assert scripted_answer({**hints, "scale": [1, 7]}) == "6"
    with pytest.raises(ValueError, match="profile"):
        scripted_answer({"dimension": "a"})


def write(tmp_path, data, name="space1"):
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


GOOD = {"space": "space1", "scale": {"min": 1, "max": 6, "labels": []},
        "items": [{"dimension": "a", "text": "I like a.", "reverse": False},
                  {"dimension": "b", "text": "I like b.", "reverse": True}]}


def test_load_from_another_directory(tmp_path):
    q = load_questionnaire("space1", ("a", "b"), directory=write(tmp_path, GOOD))
    assert [i.reverse for i in q.items] == [False, True] and q.source.endswith("space1.yaml")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ScenarioError, match=r"no questionnaire for value space 'nope'.*nope\.yaml.*schwartz10"):
        load_questionnaire("nope", ("a",))
    folder = write(tmp_path, GOOD)
    with pytest.raises(ScenarioError, match=r"space1\.yaml.*no item measures c"):
        load_questionnaire("space1", ("a", "b", "c"), directory=folder)
    with pytest.raises(ScenarioError, match=r"space1\.yaml:\d+ items\[1\]\.dimension: 'b' is not a dimension"):
        load_questionnaire("space1", ("a",), directory=folder)
    bad = {**GOOD, "items": [{**GOOD["items"][0], "reversed": True}]}
    with pytest.raises(ScenarioError, match=r"space1\.yaml:\d+ .*unknown key 'reversed'; did you mean 'reverse'"):
        load_questionnaire("space1", ("a",), directory=write(tmp_path, bad))
    bad = {**GOOD, "scale": {"min": 1, "max": 6, "labels": ["no", "yes"]}}
    with pytest.raises(ScenarioError, match=r"space1\.yaml:\d+ scale: .*labels must name every point"):
        load_questionnaire("space1", ("a", "b"), directory=write(tmp_path, bad))
    with pytest.raises(ScenarioError, match=r"for space 'space1', expected 'other'"):
        load_questionnaire("other", ("a", "b"), directory=write(tmp_path, GOOD, name="other"))
