"""The run log answers research questions (issue 8): who the agents are, the network, what every column and
metric means, the joins a researcher needs, a browsable runs/ folder; and the traps around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import sim
from sim.cli import main
from sim.errors import ScenarioError
from sim.runs.tables import read_metadata
from tests.conftest import REPO, small_scenario


def _shared_scenario(**changes):
    """Nothing random per agent except the initial values: agents are the same in every world."""
    data = small_scenario(**changes)
    data["population"][1].pop("zealots")
    return data


def _varied_scenario(**changes):
    data = small_scenario(**changes)
    data["population"][0]["confidence"] = {"dist": "uniform", "low": 0.05, "high": 0.5}
    return data


def _one_line(text: str) -> str:
    assert text.strip() and "\n" not in text.strip() and "Traceback" not in text, text
    return text.strip()


# ---------------------------------------------------------------- agents.parquet


def test_agents_table_has_one_row_per_world_and_agent_when_worlds_differ(tmp_path, write_scenario):
    path = sim.run(write_scenario(_varied_scenario()), worlds=3, runs_dir=tmp_path)
    run = sim.open_run(path)
    agents = run.agents()
    assert list(agents.columns) == ["world", "stream", "agent", "group", "kind", "policy", "confidence", "rate",
                                    "anchoring", "zealot", "degree", "logged"]
    assert len(agents) == 3 * 180 and run.manifest["agents_per_world"] is True
    assert agents.groupby("world")["stream"].first().tolist() == run.manifest["streams"] == [0, 1, 2]
    simulation = sim.build(sim.load_scenario(write_scenario(_varied_scenario())), worlds=3)
    params = simulation.world.params
    for name in ("confidence", "rate", "anchoring", "zealot"):
        expected = getattr(params, name).expand(3, 180).reshape(-1).numpy()
        np.testing.assert_array_equal(agents[name].to_numpy(), expected, err_msg=name)
    first = agents[agents.world == 0]
    assert first.groupby("group", observed=True).size().to_dict() == {"people": 150, "stubborn": 30}
    assert set(first.kind) == {"human"} and set(first.policy) == {"honest"}
    assert first[first.group == "stubborn"].zealot.sum() == 15 and not first[first.group == "people"].zealot.any()
    assert not agents[agents.world == 0].confidence.equals(agents[agents.world == 1].confidence.reset_index(drop=True))


def test_agents_shared_by_all_worlds_are_one_row_each(tmp_path, write_scenario):
    path = sim.run(write_scenario(_shared_scenario()), worlds=3, runs_dir=tmp_path)
    run = sim.open_run(path)
    agents = run.agents()
    assert run.manifest["agents_per_world"] is False and len(agents) == 180
    assert "world" not in agents.columns and "stream" not in agents.columns
    assert run.manifest["tables"]["agents"]["keys"] == ["agent"]
    joined = run.values(with_agents=True)
    assert len(joined) == len(run.values()) and joined.confidence.notna().all()


def test_the_values_sample_is_recorded_in_agents_and_the_manifest(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario(log={"values_max_agents": 40})), worlds=2, runs_dir=tmp_path)
    run = sim.open_run(path)
    sample = run.manifest["values_sample"]
    assert sample["kept"] == 40 and sample["agents"] == 180 and "sample" in sample["how"]
    agents, values = run.agents(), run.values()
    for world in (0, 1):
        logged = agents[(agents.world == world) & agents.logged].agent
        assert sorted(logged) == sorted(values[(values.world == world) & (values.step == 0)].agent)
    full = sim.open_run(sim.run(write_scenario(small_scenario()), runs_dir=tmp_path / "all"))
    assert full.manifest["values_sample"] == {"kept": 180, "agents": 180, "how": "every agent"}
    assert full.agents().logged.all()


# ---------------------------------------------------------------- network.parquet


def test_the_network_is_an_edge_list_that_matches_the_degrees(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario()), runs_dir=tmp_path)
    run = sim.open_run(path)
    edges = run.network()
    assert list(edges.columns) == ["source", "target"] and (edges.source < edges.target).all()
    assert not edges.duplicated().any() and len(edges) == run.manifest["network"]["edges"] > 0
    degree = np.bincount(np.concatenate([edges.source, edges.target]), minlength=180)
    np.testing.assert_array_equal(run.agents().degree.to_numpy(), degree)
    network = sim.build(sim.load_scenario(write_scenario(small_scenario()))).world.network
    rows, col = network.rows(), network.col
    stored = {(int(a), int(b)) for a, b in zip(rows, col) if a < b}
    assert stored == set(zip(edges.source.tolist(), edges.target.tolist()))
    assert run.manifest["network"] == {"generator": "erdos_renyi", "independent": False, "shared_by_worlds": True,
                                       "graphs": 1, "edges": len(edges), "directed": False, "file": "network.parquet"}


def test_independent_networks_give_each_world_its_own_edge_list_and_degrees(tmp_path, write_scenario, capsys):
    many = small_scenario(network={"generator": "erdos_renyi", "params": {"mean_degree": 6}, "independent": True},
                          worlds=3)
    run = sim.open_run(sim.run(write_scenario(many), runs_dir=tmp_path / "many"))
    network = run.manifest["network"]
    assert network["independent"] is True and network["shared_by_worlds"] is False and network["graphs"] == 3
    edges, agents = run.network(), run.agents()
    assert list(edges.columns) == ["world", "source", "target"] and (edges.source < edges.target).all()
    assert run.manifest["tables"]["network"]["keys"] == ["world", "source", "target"]
    built = sim.build(sim.load_scenario(write_scenario(many, name="again.yaml"))).world.network
    per_world = []
    for world in range(3):
        mine = run.network(world=world)
        assert list(mine.columns) == ["source", "target"] and len(mine) == network["edges"][world]
        graph = built.of_world(world)
        stored = {(int(a), int(b)) for a, b in zip(graph.rows(), graph.col) if a < b}
        assert stored == set(zip(mine.source.tolist(), mine.target.tolist()))
        degree = np.bincount(np.concatenate([mine.source, mine.target]), minlength=180)
        np.testing.assert_array_equal(agents[agents.world == world].sort_values("agent").degree.to_numpy(), degree)
        per_world.append(set(zip(mine.source.tolist(), mine.target.tolist())))
    assert per_world[0] != per_world[1] != per_world[2], "the worlds' graphs are the same"
    # stream 0's graph is the one a shared network would be
    shared = sim.open_run(sim.run(write_scenario(small_scenario(worlds=3), name="shared.yaml"),
                                  runs_dir=tmp_path / "shared")).network()
    assert set(zip(shared.source.tolist(), shared.target.tolist())) == per_world[0]


def test_independent_networks_with_a_generator_that_is_not_random_are_refused_in_one_line(
        tmp_path, write_scenario, capsys):
    complete = small_scenario(network={"generator": "complete", "independent": True}, worlds=3)
    assert main(["validate", str(write_scenario(complete))]) == 2
    message = _one_line(capsys.readouterr().err)
    assert "network.independent" in message and "'complete' generator is not random" in message
    assert main(["run", str(write_scenario(dict(complete, worlds=1), name="one.yaml")), "--worlds", "2",
                 "--quiet", "--runs-dir", str(tmp_path / "flag")]) == 2
    assert "is not random" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "flag").exists(), "refused before anything was written"
    one = sim.open_run(sim.run(write_scenario(dict(complete, worlds=1), name="alone.yaml"), runs_dir=tmp_path))
    assert one.manifest["network"]["independent"] is True and one.manifest["network"]["shared_by_worlds"]
    with pytest.raises(ScenarioError, match="is not random"):
        sim.build(sim.load_scenario(write_scenario(dict(complete, worlds=1), name="api.yaml")), worlds=4)


# ---------------------------------------------------------------- what every column and metric means


def test_dimensions_catalogue_and_schemas_are_in_the_manifest_and_the_parquet_metadata(tmp_path, write_scenario):
    data = small_scenario(values=["zeta", "alpha", "mid"])
    data["population"][1]["init"]["value"] = [0.9, 0.1, 0.5]
    path = sim.run(write_scenario(data), runs_dir=tmp_path)
    run = sim.open_run(path)
    assert run.manifest["value_space"] == {"name": "custom", "dimensions": ["zeta", "alpha", "mid"]}
    assert run.dimensions == ["zeta", "alpha", "mid"]
    for name in ("metrics", "values", "agents", "network"):
        meta = read_metadata(pq.read_schema(path / f"{name}.parquet"))
        assert meta["table"] == name and meta["value_space"]["dimensions"] == ["zeta", "alpha", "mid"], name
        assert set(meta["columns"]) == set(pq.read_schema(path / f"{name}.parquet").names), name
        assert meta["columns"] == run.manifest["tables"][name]["columns"]
    # a pivot of the tidy rows restores the dimension order from the metadata alone
    metrics = pq.read_table(path / "metrics.parquet")
    order = read_metadata(metrics.schema)["value_space"]["dimensions"]
    means = metrics.to_pandas().query("metric == 'mean_values' and group == 'all'")
    pivot = means.pivot_table(index="step", columns="dimension", values="value")[order]
    assert list(pivot.columns) == ["zeta", "alpha", "mid"]
    # every reading of the run is in the catalogue, under the metric that wrote it
    catalogue = read_metadata(metrics.schema)["metric_catalogue"]
    assert catalogue == run.manifest["metric_catalogue"]
    assert [e["metric"] for e in catalogue] == ["mean_values", "drift", "polarization", "clusters",
                                                "consensus_time"]
    by_name = run.metric_catalogue
    assert set(run.metrics().metric.unique()) == set(by_name)
    assert by_name["variance"]["metric"] == "polarization" and "variance" in by_name["variance"]["meaning"]
    assert by_name["bimodality"]["shape"] == "[B, S, K]" and by_name["largest_cluster"]["metric"] == "clusters"
    assert all(about["meaning"] for about in by_name.values()), "each built-in reading is described"


def test_readings_of_a_metric_that_declares_none_are_still_attributed(tmp_path, write_scenario):
    data = small_scenario(protocols=[{"broadcast": {"speakers": "stubborn"}}],
                          metrics=["mean_values", {"protocol_outcome": {"protocol": "broadcast",
                                                                         "outcome": "accepted"}}])
    run = sim.open_run(sim.run(write_scenario(data), runs_dir=tmp_path))
    entry = run.manifest["metric_catalogue"][1]
    assert entry["metric"] == "protocol_outcome" and entry["writes"] is None
    assert entry["observed"] == ["broadcast.accepted"]
    assert run.metric_catalogue["broadcast.accepted"]["metric"] == "protocol_outcome"


@pytest.mark.parametrize("dims", ["[step, group]", "[a, agent]", "[world, b]", "[x, Degree]"])
def test_a_dimension_named_like_a_key_column_is_refused_in_one_line(tmp_path, write_scenario, capsys, dims):
    scenario = write_scenario(small_scenario())
    code = main(["run", str(scenario), "--set", f"values={dims}", "--quiet", "--runs-dir", str(tmp_path / "r")])
    assert code == 2
    message = _one_line(capsys.readouterr().err)
    assert message.startswith("valuesim: error: --set values: dimension '") and "is reserved" in message
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- LLM events


def test_llm_exchanges_name_their_dimensions_and_keep_the_raw_read_out(tmp_path, write_scenario, monkeypatch):
    from sim.llm.testing import FakeChatServer
    from tests.test_llm_agents import _openai_town

    monkeypatch.setenv("VALUESIM_TEST_KEY", "sk-test-research")
    with FakeChatServer(latency_s=0.001) as server:
        path = sim.run(write_scenario(_openai_town(server)), runs_dir=tmp_path)
    messages = [e for e in sim.open_run(path).events() if e["event"] == "llm_message"]
    assert messages
    for event in messages:
        assert event["dimensions"] == ["traditional_secular", "survival_self_expression"]
        assert len(event["expressed"]) == len(event["dimensions"])
        reply = json.loads(event["reader_reply"])  # the rating request's own reply, as the model gave it
        assert set(reply) == set(event["dimensions"])
        assert event["expressed"] == pytest.approx([reply[d] / 10 for d in event["dimensions"]], abs=1e-4)


def test_a_repaired_read_out_says_how_and_keeps_the_reply():
    from tests.test_llm_readers import rate

    reply = "Sure! Here you go: {'care': 7, 'fairness': '12', 'loyalty': 5} hope that helps"
    vectors, notes, _ = rate(reply)
    assert notes[0].raw == reply and "repaired: not strict JSON" in notes[0] and "clamped" in notes[0]
    assert "filled: authority" in notes[0] and vectors[0] == pytest.approx([0.7, 1.0, 0.5, 0.5])


def test_scripted_exchanges_name_their_dimensions_and_have_no_read_out_reply(tmp_path, write_scenario):
    from tests.test_llm_agents import town

    path = sim.run(write_scenario(town(steps=2)), runs_dir=tmp_path)
    messages = [e for e in sim.open_run(path).events() if e["event"] == "llm_message"]
    assert messages and all(e["dimensions"] == ["traditional_secular", "survival_self_expression"]
                            and e["reader_reply"] is None for e in messages)
    agents = sim.open_run(path).agents()
    assert agents.groupby("group", observed=True)["kind"].first().to_dict() == {
        "people": "human", "assistants": "llm", "manipulators": "llm"}
    assert set(agents[agents.group == "assistants"].policy) == {"llm"}


# ---------------------------------------------------------------- the joins


def test_changes_are_final_minus_initial_with_the_agents_attributes(tmp_path, write_scenario):
    path = sim.run(write_scenario(_varied_scenario()), worlds=2, runs_dir=tmp_path)
    run = sim.open_run(path)
    changes = run.changes()
    values = run.values()
    assert len(changes) == 2 * 180
    assert list(changes.columns) == ["world", "agent", "group", "stream", "kind", "policy", "confidence", "rate",
                                     "anchoring", "zealot", "degree", "logged", "a", "b", "moved"]
    row = changes[(changes.world == 1) & (changes.agent == 7)].iloc[0]
    start = values[(values.world == 1) & (values.agent == 7) & (values.step == 0)].iloc[0]
    end = values[(values.world == 1) & (values.agent == 7) & (values.step == 12)].iloc[0]
    assert row.a == pytest.approx(end.a - start.a) and row.b == pytest.approx(end.b - start.b)
    assert row.moved == pytest.approx(((end.a - start.a) ** 2 + (end.b - start.b) ** 2) ** 0.5, rel=1e-5)
    agents = run.agents()
    assert row.confidence == agents[(agents.world == 1) & (agents.agent == 7)].confidence.iloc[0]
    assert (changes[changes.zealot].moved == 0).all(), "zealots never move"
    middle = run.changes(start=3, end=6)
    assert not np.allclose(middle.moved, changes.moved)
    with pytest.raises(sim.RunDirError, match="no value snapshot at step 5"):
        run.changes(end=5)
    joined = run.values(with_agents=True)
    assert len(joined) == len(values) and {"degree", "confidence", "stream"} <= set(joined.columns)
    assert run.changes(as_="arrow").num_rows == 2 * 180


# ---------------------------------------------------------------- runs/ stays browsable


def test_runs_lists_every_run_with_its_settings_and_a_tag_names_the_directory(tmp_path, write_scenario, capsys):
    runs = tmp_path / "runs"
    scenario = str(write_scenario(small_scenario(steps=3)))
    assert main(["run", scenario, "--quiet", "--tag", "pilot-1", "--runs-dir", str(runs)]) == 0
    assert main(["run", scenario, "--quiet", "--seed", "9", "--worlds", "2", "--set", "log_every=1",
                 "--runs-dir", str(runs)]) == 0
    tagged = [p for p in runs.iterdir() if p.name.endswith("__s3__pilot-1")]
    assert len(tagged) == 1 and tagged[0].name.startswith("small__")
    (runs / "not-a-run").mkdir()
    capsys.readouterr()
    assert main(["runs", "--json", "--runs-dir", str(runs)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in rows] == [3, 9]
    first, second = rows
    assert first["tag"] == "pilot-1" and first["scenario"] == "small" and first["status"] == "complete"
    assert (second["worlds"], second["steps"], second["last_step"], second["overrides"]) == (2, 3, 3, ["log_every=1"])
    assert second["started"] and first["started"] <= second["started"]
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "scenario", "status", "seed", "worlds", "steps", "started", "overrides"]
    assert "pilot-1" in lines[1] and "complete" in lines[1] and lines[2].rstrip().endswith("log_every=1")


def test_a_run_killed_mid_way_is_listed_as_interrupted(tmp_path, write_scenario, capsys):
    path = sim.run(write_scenario(small_scenario(steps=3)), runs_dir=tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(status="running", pid=2**22 + 12345)
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["runs", "--json", "--runs-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "interrupted"


@pytest.mark.parametrize("tag", ["a/b", "", "-x", "x" * 65, "a b"])
def test_a_bad_tag_is_one_line_and_nothing_is_written(tmp_path, write_scenario, capsys, tag):
    code = main(["run", str(write_scenario(small_scenario())), f"--tag={tag}", "--runs-dir", str(tmp_path / "r")])
    assert code == 2 and _one_line(capsys.readouterr().err).startswith("valuesim: error: --tag must be")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the command line


def _valuesim(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", "import sys; from sim.cli import main; sys.exit(main())", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_reader_that_goes_away_ends_the_output_quietly():
    proc = _valuesim("plugins", "list", "--json")
    proc.stdout.close()  # `| head` that has read what it wanted
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


def test_help_and_bad_arguments_import_no_engine():
    code = ("import sys; from sim.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    main(['run'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pyarrow', 'numpy', 'numba', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
