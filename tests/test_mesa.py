"""Mesa interop (``sim.mesa``): a scenario as a Mesa 3 model whose trajectory is ``sim.run``'s; ``valuesim viz``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

import sim
from tests.conftest import small_scenario

mesa = pytest.importorskip("mesa", reason="the mesa extra is not installed (pip install 'valuesim[mesa]')")


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "small.yaml"
    # values logged at every step, so the whole trajectory can be compared
    path.write_text(yaml.safe_dump(small_scenario(steps=8, log_every=1, metrics=["mean_values", "clusters"])))
    return path


def test_the_mesa_trajectory_is_the_runs(scenario, tmp_path):
    run = sim.open_run(sim.run(scenario, seed=5, runs_dir=tmp_path / "runs"))
    logged = run.values()
    dims = run.dimensions
    model = sim.mesa.ValuesimModel(scenario, seed=5)
    assert len(model.agents) == 180 and {a.group for a in model.agents} == {"people", "stubborn"}
    collector = mesa.DataCollector(model_reporters={"mean_a": lambda m: m.reading("mean_values", "people", "a")},
                                   agent_reporters={"values": "values"})
    collector.collect(model)
    while model.running:
        model.step()
        collector.collect(model)
    assert model.step_count == 8 and model.steps == 8
    agents = collector.get_agent_vars_dataframe().reset_index()
    for step in range(9):
        ours = agents[agents["Step"] == step].sort_values("AgentID")
        # Mesa numbers agents from 1 in creation order, which is row order
        assert ours["AgentID"].tolist() == list(range(1, 181))
        mirrored = np.array(ours["values"].tolist())
        theirs = logged[logged["step"] == step].sort_values("agent")[dims].to_numpy()
        assert np.array_equal(mirrored.astype(np.float32), theirs.astype(np.float32)), step
    metrics = run.metrics()
    expected = metrics[(metrics["metric"] == "mean_values") & (metrics["group"] == "people")
                       & (metrics["dimension"] == "a")].sort_values("step")["value"].to_numpy()
    assert np.array_equal(collector.get_model_vars_dataframe()["mean_a"].to_numpy(), expected)
    assert not np.array_equal(expected[0], expected[-1])  # the values did move


def test_another_seed_gives_another_trajectory(scenario):
    a, b = sim.mesa.ValuesimModel(scenario, seed=5), sim.mesa.ValuesimModel(scenario, seed=6)
    for _ in range(3):
        a.step()
        b.step()
    assert not np.array_equal(a.values, b.values)
    assert a.agent(7).values == tuple(a.values[7].tolist())


def test_batch_run(scenario):
    rows = mesa.batch_run(sim.mesa.ValuesimModel, {"scenario": str(scenario), "seed": [5, 6]}, iterations=1,
                          max_steps=8, data_collection_period=-1, number_processes=1, display_progress=False)
    frame = pd.DataFrame(rows)
    assert sorted(frame["seed"].unique()) == [5, 6]
    # batch_run reports the collector's row model.steps - 1; row i is the state after i steps (the model
    # collects at the start too, as Mesa's examples do)
    assert set(frame["Step"]) == {7} and len(frame) == 2 * 180
    assert {"clusters", "group", "a", "b"} <= set(frame.columns)
    direct = sim.mesa.ValuesimModel(scenario, seed=6)
    for _ in range(7):
        direct.step()
    six = frame[frame["seed"] == 6].sort_values("AgentID")
    assert np.array_equal(six[["a", "b"]].to_numpy(), direct.values.astype(np.float64))
    assert six["clusters"].iloc[0] == direct.reading("clusters")


def test_bad_reading_names_the_metric(scenario):
    model = sim.mesa.ValuesimModel(scenario)
    with pytest.raises(sim.ScenarioError, match="no reading 'drift'"):
        model.reading("drift")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, server, seconds: float) -> bool:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


STEP_BUTTON = "[...document.querySelectorAll('button')].find(b => b.innerText.trim().toUpperCase() == 'STEP').click()"
FIGURES_DRAWN = "[...document.images].filter(i => i.complete && i.naturalWidth > 200).length >= 2"


def test_viz_serves_a_page_that_steps(scenario, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("solara", reason="valuesim viz needs solara (the mesa extra)")
    from sim.analysis.report import find_browser
    from sim.analysis.viz import watch_page

    if find_browser() is None:
        pytest.skip("no Chromium on this machine (make test installs Debian's chromium when it runs as root)")
    port = _free_port()
    valuesim = Path(sys.executable).with_name("valuesim")
    server = subprocess.Popen([str(valuesim), "viz", str(scenario), "--port", str(port)], start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert _wait_for_http(url, server, 120), "the viz server did not answer"
        seen = watch_page(url, f"{FIGURES_DRAWN} && document.body.innerText.includes('Step: 0')",
                          then=[(STEP_BUTTON, f"{FIGURES_DRAWN} && document.body.innerText.includes('Step: 1')")],
                          timeout=90, screenshot=tmp_path / "viz.png")
        assert seen.ready, "the page did not draw its figures, or did not step"
        assert [c for c in seen.console if c["level"] in ("error", "exception")] == []
        assert "valuesim: small" in seen.dom
        if os.environ.get("VALUESIM_SCREENSHOT_VIZ"):
            import shutil

            shutil.copyfile(tmp_path / "viz.png", os.environ["VALUESIM_SCREENSHOT_VIZ"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group: valuesim and the Solara server it started
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output[-2000:]
    import socket

    with socket.socket() as probe:  # nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_viz_refuses_a_large_population(tmp_path, capsys):
    from sim.cli import main

    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(small_scenario()))
    assert main(["viz", str(path), "--set", "population.people.count=5000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5,030 agents is too many to watch (at most 2,000" in err[0]


def test_the_readme_mesa_example_runs(monkeypatch):
    import re

    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "sim.mesa.ValuesimModel" in b]
    namespace: dict = {}
    exec(compile(block, "README Mesa", "exec"), namespace)
    assert namespace["model"].step_count == 20
    frame = pd.DataFrame(namespace["rows"])
    assert sorted(frame["seed"].unique()) == [1, 2] and len(frame) == 2 * 200
