"""Silent traps a new user hit (issue 8): each is now an error, a warning or the behaviour the docs promise."""

from __future__ import annotations

import io
import json
import math
import re
import tomllib

import pytest
import yaml

import sim
from plugins.llm.readers import Auto, JsonRatings, ScaleProbabilities, degenerate, parse_ratings
from sim import registry
from sim.cli import main
from sim.contracts import NoParams
from sim.llm import ChatResponse
from sim.llm.contract import ChoiceResponse
from tests.conftest import REPO, small_scenario
from tests.test_bad_input import BASE

# ---------------------------------------------------------------- stop.tolerance


def test_hk_consensus_stops_when_nothing_moves_as_the_catalog_says(tmp_path, capsys):
    catalog = next(line for line in (REPO / "scenarios" / "README.md").read_text().splitlines()
                   if "`hk_consensus.yaml`" in line)
    assert "stops once no value moves more than 1e-4" in catalog
    spec = yaml.safe_load((REPO / "scenarios" / "hk_consensus.yaml").read_text())
    assert spec["stop"]["tolerance"] == 1e-4
    assert main(["run", str(REPO / "scenarios" / "hk_consensus.yaml"), "--quiet", "--runs-dir",
                 str(tmp_path)]) == 0
    err = capsys.readouterr().err
    (run_dir,) = tmp_path.iterdir()
    view = sim.open_run(run_dir)
    converged = [e for e in view.events() if e["event"] == "converged"]
    assert converged and view.manifest["last_step"] < spec["steps"], "it ran to the end instead of stopping"
    assert "warning" not in err


def test_a_run_that_ends_at_steps_without_reaching_its_tolerance_says_so(tmp_path, write_scenario, capsys):
    path = write_scenario(small_scenario(steps=4, stop={"tolerance": 1e-12}))
    assert main(["run", str(path), "--quiet", "--runs-dir", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"valuesim: warning: the run ended at steps \(4\) without reaching stop.tolerance 1e-12: 0 of 1 worlds "
        r"settled \(the last step still moved a value by [0-9.e-]+\)", lines[0]), err
    (run_dir,) = (tmp_path / "runs").iterdir()
    view = sim.open_run(run_dir)
    (event,) = [e for e in view.events() if e["event"] == "not_converged"]
    assert event["tolerance"] == 1e-12 and event["worlds_settled"] == 0 and event["last_move"] > 1e-12
    assert view.manifest["warnings"] == [lines[0].removeprefix("valuesim: warning: ")]
    assert main(["run", str(path), "--quiet", "--json", "--runs-dir", str(tmp_path / "again")]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == view.manifest["warnings"]


# ---------------------------------------------------------------- degenerate value read-outs


def test_degenerate_ratings_are_recognised():
    assert degenerate([0, 0, 0]) == "degenerate read-out: every rating 0"
    assert degenerate([5, 5, 5]) == "degenerate read-out: every rating 5"
    assert degenerate([80, 40, 5]) == "degenerate read-out: 2 of 3 ratings off the 0-10 scale"
    assert degenerate([0]) is None and degenerate([14, -2, 5, 10]) is None and degenerate([3, 7]) is None
    assert degenerate([7, 7]) is None  # two whole-number ratings agree by chance one time in eleven
    assert degenerate([5.0, 5.02], spread=0.05) is not None and degenerate([5.0, 5.2], spread=0.05) is None
    dims = ("self_direction", "power")
    assert parse_ratings('{"self_direction": 0, "power": 0}', dims, 1) == (None,
                                                                           "degenerate read-out: every rating 0")


class ZeroRater:
    """Speaks plain text (no values attached), and answers every rating request with all zeros, as SmolLM2 did."""

    name = "zeros"
    model_id = "zeros-1"
    Params = NoParams

    def __init__(self, params):
        self.params = params

    async def complete(self, requests):
        out = []
        for r in requests:
            dims = r.hints.get("dimensions")
            out.append(ChatResponse(text=json.dumps({d: 0 for d in dims}) if dims else "Family matters most."))
        return out


def test_degenerate_read_outs_fall_back_are_logged_and_warned_about_once_with_the_count(tmp_path, write_scenario,
                                                                                       capsys):
    data = {"name": "zeros", "seed": 1, "steps": 3, "values": "wvs2",
            "network": {"generator": "erdos_renyi", "params": {"mean_degree": 4}},
            "population": [{"name": "people", "count": 30},
                           {"name": "bots", "count": 3, "persona": "neutral_assistant", "backend": "zeros"}],
            "metrics": ["mean_values"]}
    with registry.scratch():
        registry.register("llm_backends", "zeros")(ZeroRater)
        assert main(["run", str(write_scenario(data)), "--quiet", "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert err == ("valuesim: warning: 9 of 9 value read-outs were degenerate (every rating equal, zero or off the "
                   "scale) and fell back to the speaker's own values; see 'reader' in events.jsonl\n")
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    events = sim.open_run(run_dir).events()
    messages = [e for e in events if e["event"] == "llm_message"]
    assert len(messages) == 9 and all(e["degenerate"] for e in messages)
    assert all(e["reader"] == "fell back to own values (degenerate read-out: every rating 0)" for e in messages)
    assert all(e["reader_reply"] == '{"traditional_secular": 0, "survival_self_expression": 0}' for e in messages)
    (warning,) = [e for e in events if e["event"] == "degenerate_readouts"]
    assert (warning["count"], warning["of"]) == (9, 9)


class Scorer:
    """A choice call that gives each rating request the log-probabilities in ``table[dimension]``."""

    def __init__(self, table, name="transformers"):
        self.table, self.name, self.model_id, self.asked = table, name, "scorer-1", []

    async def complete(self, requests):
        raise AssertionError("scale_probabilities parses no text")

    async def choose(self, requests):
        self.asked.extend(requests)
        return [ChoiceResponse(index=0, option="0", logprobs=self.table[r.hints["dimension"]]) for r in requests]


def _logprobs(weights):
    total = sum(weights)
    return tuple(math.log(w / total) if w else -math.inf for w in weights)


def test_scale_probabilities_reads_the_expected_rating_from_the_model_probabilities():
    table = {"care": _logprobs([0] * 8 + [1, 0, 1]), "loyalty": _logprobs([1, 1] + [0] * 9)}  # 9 and 0.5
    backend = Scorer(table)
    reader = ScaleProbabilities(ScaleProbabilities.Params())
    vectors, notes = reader.read([ChatResponse(text="Be kind.")], ("care", "loyalty"), backend)
    assert [round(v, 6) for v in vectors[0]] == [0.9, 0.05] and notes == [""]
    assert json.loads(notes[0].raw) == {"care": 9.0, "loyalty": 0.5}
    assert [r.options for r in backend.asked] == [tuple(str(i) for i in range(11))] * 2
    assert "care" in backend.asked[0].messages[-1]["content"] and "Be kind." in backend.asked[0].messages[-1]["content"]
    flat = Scorer({"care": _logprobs([1] * 11), "loyalty": _logprobs([1] * 11)})
    vectors, notes = reader.read([ChatResponse(text="Hm.")], ("care", "loyalty"), flat)
    assert vectors == [None] and notes[0] == "degenerate read-out: every rating 5" and notes[0].degenerate


def test_auto_rates_by_token_probabilities_where_the_backend_scores_options():
    auto = Auto(Auto.Params())
    assert isinstance(auto.rater(Scorer({}, name="transformers")), ScaleProbabilities)
    assert isinstance(auto.rater(Scorer({}, name="openai")), JsonRatings)
    assert isinstance(Auto(Auto.Params(scale="probabilities")).rater(Scorer({}, name="openai")), ScaleProbabilities)
    assert isinstance(Auto(Auto.Params(scale="json")).rater(Scorer({}, name="transformers")), JsonRatings)


@pytest.mark.slow
def test_smollm2_read_outs_by_token_probabilities_are_not_degenerate():
    pytest.importorskip("transformers")
    backend_cls = registry.get("llm_backends", "transformers")
    backend = backend_cls(backend_cls.Params())
    messages = [ChatResponse(text=t) for t in ("We must protect the weak and care for those who suffer.",
                                               "Obey your leaders; tradition and order keep us safe.",
                                               "Nobody should tell you what to do: freedom above all.")]
    vectors, notes = ScaleProbabilities(ScaleProbabilities.Params()).read(messages, ("care", "authority", "liberty"),
                                                                         backend)
    assert all(v is not None for v in vectors), notes
    assert len({tuple(round(x, 3) for x in v) for v in vectors}) == 3


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("word", ["policy", "policies", "Policy"])
def test_plugins_list_and_show_take_the_singular_and_the_plural(capsys, word):
    assert main(["plugins", "list", "--kind", word]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("policies ") for line in lines)
    assert main(["plugins", "show", "honest", "--kind", word]) == 0
    assert capsys.readouterr().out.startswith("honest (policies)")


def test_the_singular_words_are_the_scaffolds_and_every_kind_has_one():
    from sim.plugin.info import kind_of
    from sim.plugin.scaffold import KIND_WORDS

    assert all(kind_of(word) == kind for word, kind in KIND_WORDS.items())
    assert [kind_of(k.removesuffix("s")) for k in registry.KINDS] == list(registry.KINDS)


def test_plugins_list_lines_are_short_and_plain(capsys):
    assert main(["plugins", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 20
    assert max(len(line) for line in lines) <= 120
    assert not [line for line in lines if "``" in line or ":class:`" in line or ":func:`" in line]
    assert not [line for line in lines if "(plugins." in line], "origins name the distribution, not the module"


def test_an_unknown_key_made_by_set_is_blamed_on_set(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text(BASE)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "s.yaml", "--set", "populaton.x=1"]) == 2
    assert capsys.readouterr().err.startswith(
        "valuesim: error: --set populaton: unknown key 'populaton'; did you mean 'population'?")
    assert main(["validate", "s.yaml", "--set", "population.peple.count=5"]) == 2
    assert capsys.readouterr().err == ("valuesim: error: --set cannot set population.peple.count: no entry named "
                                       "'peple'; did you mean 'people'? (entries: people)\n")
    assert main(["validate", "s.yaml", "--set", "steps=[1"]) == 2
    assert capsys.readouterr().err == ("valuesim: error: --set value of steps: malformed YAML: expected ',' or ']', "
                                       "but got '<stream end>'\n")


def test_validate_counts_in_words(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text(BASE)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "s.yaml"]) == 0
    assert capsys.readouterr().out == "s.yaml: ok (50 agents, 1 group, 5 steps)\n"
    assert main(["validate", "s.yaml", "--set", "population.people.count=1", "--set", "steps=1"]) == 0
    assert capsys.readouterr().out == "s.yaml: ok (1 agent, 1 group, 1 step)\n"


# ---------------------------------------------------------------- progress before the first step


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, step, total):
        self.calls.append(("step", step, total))

    def phase(self, text, step=0, total=0):
        self.calls.append(("phase", text, step, total))


def test_progress_shows_building_and_the_first_step_before_it_completes(tmp_path, write_scenario):
    recorder = Recorder()
    sim.run(write_scenario(small_scenario(steps=3)), runs_dir=tmp_path, progress=recorder)
    assert recorder.calls[:3] == [("phase", "building the world (180 agents)", 0, 0),
                                  ("phase", "step 1 of 3", 0, 3), ("step", 1, 3)]
    assert recorder.calls[-1] == ("step", 3, 3)


def test_progress_names_the_model_it_loads():
    from sim.config.scenario import scenario_from_dict
    from sim.runs.runner import _building

    data = small_scenario()
    data["population"].append({"name": "bots", "count": 1, "persona": "neutral_assistant",
                               "backend": "transformers"})
    scenario = scenario_from_dict(data, base_dir=REPO / "scenarios")
    assert _building(scenario) == "building the world (181 agents) and loading the language model (transformers)"


def test_the_cli_bar_shows_each_phase(monkeypatch):
    from rich.console import Console

    from sim.cli import _progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    with _progress(False, console=console) as bar:
        bar.phase("building the world (10 agents)")
        bar.phase("step 1 of 4", 0, 4)
        for step in range(1, 5):
            bar(step, 4)
    text = out.getvalue()
    assert "steps" in text and "4/4" in text
    with _progress(True) as quiet:
        assert quiet is None


# ---------------------------------------------------------------- licence and citation


def test_the_licence_and_the_citation_agree_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in licence
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["version"] == project["version"] and citation["title"].startswith("valuesim")
    assert citation["authors"] and citation["message"]
