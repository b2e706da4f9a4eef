"""Hostile and malformed input (issue 8): each is one line, exit code 2, before anything is written.

Non-finite numbers, values off [0, 1], a count of ``true``; sizes that cannot fit (refused up front with what
they would need); broken or tagged YAML in the files a scenario refers to; integers of thousands of digits;
names too long for a directory; persona prompts and model paths that would fail at step 1; a group named like
the metrics' whole-population scope; bad flag values; and a run killed before its first checkpoint, which
resumes from the beginning. ``--out`` that cannot be written is issue 14's (tests/test_rundir_safety.py).
"""

from __future__ import annotations

import json
import os

import pytest

import sim
from sim.cli import main
from sim.config import budget
from tests.test_bad_input import BASE

GB = 10**9
LLM_BASE = """\
name: bad
steps: 3
network: {generator: erdos_renyi, params: {mean_degree: 4}}
population:
  - name: people
    count: 20
  - name: bots
    count: 2
    persona: neutral_assistant
metrics: [mean_values]
"""
DIGITS = "9" * 5000

# (scenario, old, new, extra flags, message); {dir} is the test's folder
CASES = [
    # NaN and infinities anywhere, and values off [0, 1]
    (BASE, "confidence: 0.3", "confidence: 0.3\n    init: {dist: uniform, low: .nan, high: 1}", [],
     "s.yaml:11 population[0].init.low: must be a finite number, got .nan"),
    (BASE, "confidence: 0.3", "confidence: 0.3\n    init: {dist: constant, value: [.inf, 0.5]}", [],
     "s.yaml:11 population[0].init.value[0]: must be a finite number, got .inf"),
    (BASE, "confidence: 0.3", "confidence: 0.3\n    init: {dist: normal, mean: 0.5, std: .inf}", [],
     "s.yaml:11 population[0].init.std: must be a finite number, got .inf"),
    (BASE, "confidence: 0.3", "confidence: .nan", [],
     "s.yaml:10 population[0].confidence: must be a finite number, got .nan"),
    (BASE, "confidence: 0.3", "confidence: 0.3\n    anchoring: {dist: normal, mean: -.inf, std: 0.1}", [],
     "s.yaml:11 population[0].anchoring.mean: must be a finite number, got -.inf"),
    (BASE, "deffuant: {distance: l2}", "algorithmic_bias: {gamma: .inf}", [],
     "s.yaml:12 dynamics[0].algorithmic_bias.gamma: must be a finite number, got .inf"),
    (LLM_BASE, "persona: neutral_assistant", "persona: {name: neutral_assistant, values: {mft6: {care: .nan}}}", [],
     "s.yaml:9 population[1].persona.values.mft6.care: must be a finite number, got .nan"),
    (LLM_BASE, "persona: neutral_assistant", "persona: {name: neutral_assistant, values: {mft6: {care: 1.5}}}", [],
     "s.yaml:9 population[1].persona: persona 'neutral_assistant' values.mft6.care: must be in [0, 1], got 1.5"),
    (LLM_BASE, "persona: neutral_assistant", "persona: offscale", [],
     "s.yaml:9 population[1].persona: persona 'offscale' values.schwartz10.power: must be in [0, 1], got -0.2"),
    (BASE, "count: 50", "count: true", [], "s.yaml:9 population[0].count: must be an integer, got true"),
    # sizes that cannot fit, refused before anything is allocated
    (BASE, "count: 50", "count: 1000000000", [],
     "s.yaml:9 population[0].count: 1,000,000,000 agents in all, too many to build a network for (fewer than 100,000,000); "
     "use fewer agents"),
    (BASE, "generator: erdos_renyi\n  params: {mean_degree: 4}", "generator: watts_strogatz\n  params: {k: 4, p: 0.1}",
     ["--set", "population.people.count=100000000"],
     "--set population[0].count: 100,000,000 agents in all, too many to build a network for (fewer than 100,000,000); "
     "use fewer agents"),
    (BASE, "steps: 5", "steps: 5", ["--worlds", "100000000"],
     "s.yaml: this scenario would need about 480.0 GB of memory (100,000,000 worlds x 50 agents x 2 values; most of "
     "it for the values), more than the 16.0 GB available; use fewer worlds or agents"),
    (BASE, "steps: 5", "steps: 5\nworlds: 100000000", [],
     "s.yaml: this scenario would need about 480.0 GB of memory (100,000,000 worlds x 50 agents x 2 values; most of "
     "it for the values), more than the 16.0 GB available; use fewer worlds or agents"),
    (BASE, "distance: l2", "distance: l2, pairs_per_agent: 1.0e+9", [],
     "s.yaml: this scenario would need about 1.2 TB of memory (1 world x 50 agents x 2 values; most of it for the "
     "pairwise draws), more than the 16.0 GB available; use fewer worlds or agents, or a smaller pairs_per_agent"),
    (BASE, "generator: erdos_renyi\n  params: {mean_degree: 4}", "generator: file\n  params: {path: big.edgelist}",
     [], "s.yaml:6 network.params.path: big.edgelist is 5.0 GB, larger than any network valuesim holds (a network "
         "file may be 4.3 GB)"),
    (BASE, "confidence: 0.3", "confidence: 0.3\n    init: {file: big.csv}", [],
     "s.yaml:11 population[0].init.file: big.csv is 100.0 MB, too large for a table of 50 rows x 2 values "
     "(at most 1.1 MB)"),
    # YAML that would end in a traceback, in the scenario or in a file it refers to
    (LLM_BASE, "persona: neutral_assistant", "persona: tagged", [],
     "s.yaml:9 population[1].persona: {dir}/agents/tagged.yaml:1 malformed YAML: could not determine a constructor "
     "for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    (LLM_BASE, "persona: neutral_assistant", "persona: broken", [],
     "s.yaml:9 population[1].persona: {dir}/agents/broken.yaml:3 malformed YAML: expected ',' or ']', but got "
     "'<stream end>'"),
    (BASE, "confidence: 0.3", "confidence: 0.3\n    init: {profile: tagged}", [],
     "s.yaml:11 population[0].init.profile: {dir}/agents/tagged.yaml:1 malformed YAML: could not determine a "
     "constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    (BASE, "count: 50", f"count: {DIGITS}", [], "s.yaml:9 an integer of 5,000 digits is too large (at most 20)"),
    (BASE, "steps: 5", "steps: 5", ["--set", f"steps={DIGITS}"],
     "--set value of steps: an integer of 5,000 digits is too large (at most 20)"),
    (BASE, "steps: 5", "steps: 5", ["--seed", DIGITS],
     "--seed must be an integer >= 0 and at most 2**64 - 1, got a number of 5,000 digits"),
    (BASE, "steps: 5", "steps: 5\nseed: 99999999999999999999", [],
     "s.yaml:3 seed: must be at most 2**64 - 1, got 99999999999999999999"),
    (BASE, "steps: 5", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]", [],
     "s.yaml the document expands to more than 200,000 nodes (through YAML aliases); write it out plainly"),
    (BASE, "name: bad", "name: " + "n" * 300, [],
     "s.yaml:1 name: must be at most 100 characters (it names the run directory), got 300"),
    # what would fail at step 1 of the run fails at validation
    (LLM_BASE, "persona: neutral_assistant", "persona: {name: neutral_assistant, message_prompt: 'Hi {audience}'}",
     [], "s.yaml:9 population[1].persona: persona 'neutral_assistant' message_prompt: unknown placeholder "
         "{audience} (allowed: {audience_text}, {step})"),
    (LLM_BASE, "persona: neutral_assistant", "persona: {name: neutral_assistant, system_prompt: 'I value {0}'}",
     [], "s.yaml:9 population[1].persona: persona 'neutral_assistant' system_prompt: positional placeholder {0} "
         "(allowed: {values_text}, {goal_text}, {tactics_text})"),
    (LLM_BASE, "persona: neutral_assistant", "persona: neutral_assistant\n    backend: {transformers: {model: "
                                             "./models/gone.gguf}}", [],
     "s.yaml:10 population[1].backend: transformers backend: model file './models/gone.gguf' does not exist"),
    # the metrics' whole-population scope, and a world refused while it is built (no LLM cache is left)
    (BASE, "name: people", "name: all", [],
     "s.yaml:8 population[0].name: group name 'all' is reserved: the metrics' readings for the whole population "
     "have scope 'all'; rename the group"),
    (LLM_BASE, "persona: neutral_assistant", "persona: {name: neutral_assistant, audience: nobody}", [],
     "s.yaml:7 population[1].policy: llm: persona 'neutral_assistant': audience must be 'neighbours', 'broadcast' "
     "or a group name, got 'nobody'"),
    # bad flag values: one line naming the flag and what it takes, no usage block
    (BASE, "steps: 5", "steps: 5", ["--seed", "x"], "--seed must be an integer >= 0 and at most 2**64 - 1, got 'x'"),
    (BASE, "steps: 5", "steps: 5", ["--worlds", "2.5"], "--worlds must be an integer >= 1, got '2.5'"),
    (BASE, "steps: 5", "steps: 5", ["--worlds", "0"], "--worlds must be >= 1, got 0"),
    (BASE, "steps: 5", "steps: 5", ["--llm-cache", "on"],
     "--llm-cache: invalid choice: 'on' (choose from 'off', 'read', 'readwrite')"),
]


def _files(folder):
    (folder / "agents").mkdir()
    (folder / "agents" / "tagged.yaml").write_text('values: !!python/object/apply:os.system ["echo owned"]\n')
    (folder / "agents" / "broken.yaml").write_text("name: broken\nvalues: {schwartz10: [1, 2\n")
    (folder / "agents" / "offscale.yaml").write_text(
        (sim.config.persona.INSTALLED_AGENTS / "neutral_assistant.yaml").read_text()
        .replace("name: neutral_assistant", "name: offscale").replace("power: 0.25", "power: -0.2"))
    with open(folder / "big.edgelist", "wb") as fh:  # sparse: sizes, not disk
        fh.truncate(5 * GB)
    with open(folder / "big.csv", "wb") as fh:
        fh.truncate(100 * 10**6)


@pytest.mark.parametrize("scenario,old,new,flags,message", CASES, ids=[f"{i}:{c[4][:50]}" for i, c in enumerate(CASES)])
def test_hostile_input_is_one_line_exit_2_and_nothing_is_written(tmp_path, monkeypatch, capsys, scenario, old, new,
                                                                 flags, message):
    assert old in scenario
    _files(tmp_path)
    (tmp_path / "s.yaml").write_text(scenario.replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(budget, "available_memory", lambda: 16 * GB)  # the same message on any machine
    before = sorted(os.listdir(tmp_path))
    code = main(["run", "s.yaml", "--quiet", *flags])
    assert capsys.readouterr().err == f"valuesim: error: {message.replace('{dir}', str(tmp_path))}\n"
    assert code == 2
    assert sorted(os.listdir(tmp_path)) == before, "something was written (a run directory, an LLM cache)"


def test_a_yaml_merge_key_in_a_group_is_read_as_yaml_means_it(tmp_path, monkeypatch, capsys):
    text = BASE.replace("population:\n  - name: people\n    count: 50\n    confidence: 0.3\n",
                        "population:\n  - &people {name: people, count: 50, confidence: 0.3}\n"
                        "  - <<: *people\n    name: others\n    count: 7\n")
    (tmp_path / "s.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "s.yaml", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["population"]
    assert [(g["name"], g["count"], g["confidence"]["value"]) for g in groups] == [("people", 50, 0.3),
                                                                                    ("others", 7, 0.3)]
    # an error inside the merged group points at the line it was written on
    (tmp_path / "s.yaml").write_text(text.replace("count: 7", "count: 0"))
    assert main(["validate", "s.yaml"]) == 2
    assert capsys.readouterr().err == "valuesim: error: s.yaml:11 population[1].count: must be >= 1, got 0\n"


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_beginning(tmp_path, write_scenario,
                                                                             monkeypatch):
    from sim.runs import runlog
    from tests.conftest import small_scenario

    path = write_scenario(small_scenario(steps=6, log_every=3))
    whole = sim.run(path, runs_dir=tmp_path / "whole")

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(runlog, "save_checkpoint", killed)
        with pytest.raises(Killed):
            sim.run(path, runs_dir=tmp_path / "cut")
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert not (run_dir / "checkpoint").exists()
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    view = sim.open_run(run_dir)
    assert view.status == "complete"
    resumed = [e for e in view.events() if e["event"] == "resumed"]
    assert resumed and resumed[0]["from_the_beginning"] == "it stopped before its first checkpoint"
    for table in ("metrics", "values"):
        assert view.table(table).equals(sim.open_run(whole).table(table))
