"""Run logs: twin runs, other seeds, kill-and-resume, failures, the Python API, the scenario catalog."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import sim
from sim import registry
from sim.contracts import NoParams
from tests.conftest import REPO, small_scenario


@pytest.fixture
def clean_registry():
    with registry.scratch():
        yield


def _tables(run_dir):
    view = sim.open_run(run_dir)
    return view.metrics(), view.values(), view.agents(), view.network()


def _assert_same_tables(a, b):
    for left, right in zip(_tables(a), _tables(b)):
        pd.testing.assert_frame_equal(left, right, check_exact=True)


def test_run_writes_the_whole_log(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario()), runs_dir=tmp_path / "runs")
    assert path.parent == tmp_path / "runs" and path.name.startswith("small__") and path.name.endswith("__s3")
    assert sorted(p.name for p in path.iterdir()) == [
        ".lock", "agents.parquet", "checkpoint", "events.jsonl", "manifest.json", "metrics.parquet",
        "network.parquet", "scenario.yaml", "values.parquet"]
    assert sorted(p.name for p in (path / "checkpoint").iterdir()) == ["state.json", "state.safetensors", "step"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 3 and manifest["last_step"] == 12
    assert {"torch", "numpy", "valuesim"} <= set(manifest["versions"]) and manifest["device"] == "cpu"
    view = sim.open_run(path)
    metrics, values = view.metrics(), view.values()
    assert sorted(metrics["step"].unique()) == [0, 3, 6, 9, 12]
    assert set(metrics["metric"]) >= {"mean_values", "drift", "variance", "clusters", "consensus_time"}
    assert set(metrics["group"]) == {"people", "stubborn", "all"}
    assert list(values.columns) == ["world", "step", "agent", "group", "a", "b"]
    assert len(values) == 5 * 180 and values["a"].between(0, 1).all()
    assert view.scenario["dynamics"][0] == {"deffuant": {"distance": "l2", "pairs_per_agent": 1.0,
                                                          "repulsion": None, "kernel": "auto",
                                                          "absence": "aligned"}}
    assert [e["event"] for e in view.events()] == ["started", "complete"]
    assert isinstance(view.metrics(as_="arrow"), __import__("pyarrow").Table)


def test_twin_runs_are_identical_and_another_seed_differs(tmp_path, write_scenario):
    path = write_scenario(small_scenario())
    a = sim.run(path, runs_dir=tmp_path / "a")
    b = sim.run(path, runs_dir=tmp_path / "b")
    _assert_same_tables(a, b)
    c = sim.run(path, seed=4, runs_dir=tmp_path / "c")
    assert not _tables(a)[1].equals(_tables(c)[1])


def test_worlds_are_independent_replicates_through_the_same_code(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario()), worlds=3, runs_dir=tmp_path)
    values = sim.open_run(path).values()
    assert sorted(values["world"].unique()) == [0, 1, 2]
    last = values[values.step == 12]
    assert not last[last.world == 0]["a"].reset_index(drop=True).equals(
        last[last.world == 1]["a"].reset_index(drop=True))


def test_values_beyond_the_limit_are_a_seeded_sample(tmp_path, write_scenario):
    scenario = small_scenario(log={"values_max_agents": 40})
    a = sim.open_run(sim.run(write_scenario(scenario), runs_dir=tmp_path / "a")).values()
    b = sim.open_run(sim.run(write_scenario(scenario), runs_dir=tmp_path / "b")).values()
    agents = a[a.step == 0]["agent"]
    assert len(agents) == 40 and agents.is_monotonic_increasing and agents.equals(b[b.step == 0]["agent"])


# An identity dynamics that sleeps when asked: the killed subprocess steps slowly enough to be stopped
# mid-run whatever the machine, while the world stays small and the uninterrupted twin runs at full speed.
PAUSE_PLUGIN = '''
import os, time
from sim.contracts import NoParams
from sim.registry import register


@register("dynamics", "pause")
class Pause:
    """Leave the values as they are, after sleeping VALUESIM_TEST_PAUSE_S seconds."""

    Params = NoParams
    uses = ()

    def __init__(self, params):
        self.seconds = float(os.environ.get("VALUESIM_TEST_PAUSE_S", "0"))

    def apply(self, values, expressed, state, world, rng):
        time.sleep(self.seconds)
        return values
'''


def _long_scenario(tmp_path, write_scenario) -> Path:
    (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)
    scenario = small_scenario(steps=200, log_every=5, log={"checkpoint_every": 10}, plugins=["pause.py"],
                              metrics=["mean_values", "drift", "consensus_time"])
    scenario["dynamics"] = [*scenario["dynamics"], "pause"]
    return write_scenario(scenario)


def _wait_for_step(run_root: Path, step: int, proc, timeout: float = 120) -> Path:
    start = time.time()
    while time.time() - start < timeout:
        for manifest in run_root.glob("*/manifest.json"):
            try:
                if json.loads(manifest.read_text()).get("step", 0) >= step:
                    return manifest.parent
            except (json.JSONDecodeError, OSError):
                pass
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the run did not reach the step in time")


def _start(path: Path, runs: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("valuesim")
    return subprocess.Popen([str(exe), "run", str(path), "--quiet", "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VALUESIM_TEST_PAUSE_S": "0.02"})


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, write_scenario, how, clean_registry):
    path = _long_scenario(tmp_path, write_scenario)
    whole = sim.run(path, runs_dir=tmp_path / "whole")
    proc = _start(path, tmp_path / "cut")
    run_dir = _wait_for_step(tmp_path / "cut", 30, proc)
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=60)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if how == "SIGTERM":
        assert proc.returncode == 1 and manifest["status"] == "interrupted"
        assert "resume with: valuesim resume" in proc.stderr.read()
    else:
        assert manifest["status"] == "running"  # the process died; resume sees its pid is gone
        assert sim.open_run(run_dir).status == "interrupted", "a dead 'running' run reads as interrupted"
    assert manifest["step"] < 200, "the run finished before it was stopped; make it longer"
    assert sim.resume(run_dir) == run_dir
    _assert_same_tables(whole, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 1
    assert not (run_dir / "parts").exists()


def test_resuming_a_complete_run_is_refused(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario()), runs_dir=tmp_path)
    with pytest.raises(sim.RunDirError, match="already complete"):
        sim.resume(path)


class _Exploding:
    """A fake dynamics plugin that raises at its third step."""

    Params = NoParams
    uses = ()

    def __init__(self, params):
        self.calls = 0

    def apply(self, values, expressed, state, world, rng):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom")
        return values


def test_a_plugin_that_raises_fails_the_run_with_its_log_intact(tmp_path, write_scenario):
    scenario = small_scenario(log_every=1, dynamics=["exploding"])
    for group in scenario["population"]:
        for key in ("confidence", "rate", "anchoring"):
            group.pop(key, None)
    with registry.scratch():
        registry.register("dynamics", "exploding")(_Exploding)
        with pytest.raises(sim.RunFailed, match="step 3: dynamics 'exploding' raised RuntimeError: boom"):
            sim.run(write_scenario(scenario), runs_dir=tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    view = sim.open_run(run_dir)
    assert view.status == "failed" and "boom" in view.manifest["error"]
    assert sorted(view.metrics()["step"].unique()) == [0, 1, 2]


def test_set_overrides_and_seed_reach_the_resolved_scenario(tmp_path, write_scenario):
    path = sim.run(write_scenario(small_scenario()), runs_dir=tmp_path, seed=9,
                   overrides=["steps=3", "population.people.count=20", "dynamics.deffuant.distance=linf"])
    scenario = sim.open_run(path).scenario
    assert scenario["steps"] == 3 and scenario["seed"] == 9
    assert scenario["population"][0]["count"] == 20
    assert scenario["dynamics"][0]["deffuant"]["distance"] == "linf"


CATALOG = sorted((REPO / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("scenario", CATALOG, ids=[p.stem for p in CATALOG])
def test_every_catalog_scenario_runs(tmp_path, scenario):
    loaded = sim.load_scenario(scenario, ["steps=3", "log_every=1"])
    big = loaded.spec.num_agents > 20_000
    path = sim.run(scenario, runs_dir=tmp_path, overrides=["steps=3", "log_every=1"] + (
        [f"population.{i}.count={max(1, g.count // 50)}" for i, g in enumerate(loaded.spec.population)] if big else []))
    view = sim.open_run(path)
    assert view.status == "complete"
    assert sorted(view.metrics()["step"].unique()) == [0, 1, 2, 3] or view.metrics().empty


def test_cli_run_json_summary_and_help_examples(tmp_path, write_scenario, capsys):
    from sim.cli import main

    path = write_scenario(small_scenario(steps=3))
    assert main(["run", str(path), "--quiet", "--json", "--runs-dir", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "complete" and summary["steps"] == 3
    assert sim.open_run(summary["run_dir"]).status == "complete"
    assert main(["--help"]) == 0
    assert "valuesim run scenarios/quickstart.yaml --seed 7 --worlds 8" in capsys.readouterr().out
