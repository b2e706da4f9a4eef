"""The README stays true: its Python examples run, and every registered plugin loads."""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest
import torch

import sim
from sim import registry
from tests.conftest import REPO, small_scenario
from tests.test_checks import PARAMS as CHECK_PARAMS

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
RUN_LOG_SECTION = README[README.index("## The run log"):README.index("\n## ", README.index("## The run log") + 1)]
RUN_LOG_BLOCKS = re.findall(r"```python\n(.*?)```", RUN_LOG_SECTION, flags=re.S)
# Parameters for plugins whose Params have required fields: the contract checks' table, plus a file path.
MINIMAL_PARAMS = {**{(kind, name): params for kind, table in CHECK_PARAMS.items() for name, params in table.items()},
                  ("networks", "file"): {"path": "x"}, ("policies", "trained"): {"path": "x"}}
CONTRACT_METHOD = {"dynamics": "apply", "networks": "build", "metrics": "observe", "policies": "express",
                   "protocols": "step", "alignment": "update"}


def test_readme_opens_with_the_two_commands():
    first = README.index("```bash")
    assert "make run" in README[first:first + 200] and "make test" in README[first:first + 200]


def test_readme_analysis_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    for name in ("quickstart", "deffuant_clusters"):
        text = (REPO / "scenarios" / f"{name}.yaml").read_text()
        (tmp_path / "scenarios" / f"{name}.yaml").write_text(text)
    (tmp_path / "agents").symlink_to(REPO / "agents")
    sim.run("scenarios/quickstart.yaml", overrides=["steps=20"])
    analysis, *research, api = RUN_LOG_BLOCKS
    # the two questions (do hubs move more? do low-epsilon agents move less?) in each of the three tools
    assert [next(tool for tool in ("pandas", "polars", "duckdb") if f"import {tool}" in b) for b in research] \
        == ["pandas", "polars", "duckdb"]
    assert all("degree" in b and "confidence" in b and "moved" in b for b in research)
    assert '"group"' in research[2], "DuckDB needs the group column quoted; the README shows how"
    for name, block in [("analysis", analysis), *zip(("pandas", "polars", "duckdb"), research), ("API", api)]:
        exec(compile(block, f"README {name}", "exec"), {})
    (tagged,) = (tmp_path / "runs").glob("deffuant_clusters__*__four-worlds")
    assert sim.open_run(tagged).manifest["tag"] == "four-worlds"


def test_readme_research_answers_agree_between_pandas_polars_and_duckdb(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "quickstart.yaml").write_text((REPO / "scenarios" / "quickstart.yaml").read_text())
    (tmp_path / "agents").symlink_to(REPO / "agents")
    path = sim.run("scenarios/quickstart.yaml", overrides=["steps=10", "population.citizens.count=400"])
    spaces = [{} for _ in range(3)]
    for block, space in zip(RUN_LOG_BLOCKS[1:4], spaces):
        exec(compile(block, "README", "exec"), space)
    people = spaces[0]["people"]
    assert len(people) == (~sim.open_run(path).changes().zealot).sum() > 0
    hubs = people["degree"].corr(people["moved"], method="spearman")
    epsilon = people["confidence"].corr(people["moved"], method="spearman")
    polars = spaces[1]["changes"].select(hubs=pl.corr("degree", "moved", method="spearman"),
                                         epsilon=pl.corr("confidence", "moved", method="spearman"))
    assert polars.row(0) == pytest.approx((hubs, epsilon))
    frame = spaces[2]["changes"]  # what the DuckDB block queried
    by_group = duckdb.sql('SELECT "group", corr(degree, moved) AS hubs FROM frame WHERE NOT zealot '
                          'GROUP BY "group" ORDER BY "group"').df()
    expected = people.groupby("group", observed=True).apply(lambda g: g.degree.corr(g.moved))
    assert by_group.hubs.tolist() == pytest.approx(expected.loc[by_group["group"]].tolist(), rel=1e-5)


def test_readme_plugin_example_works_as_a_dynamics(tmp_path, write_scenario):
    (plugin,) = [b for b in PYTHON_BLOCKS if "class DriftToCentre" in b]
    namespace: dict = {}
    exec(compile(plugin, "README plugin", "exec"), namespace)
    scenario = small_scenario(dynamics=["deffuant", {"drift_to_centre": {"strength": 0.5}}],
                              metrics=["mean_values"])
    scenario["population"][1].pop("anchoring")
    with registry.scratch():  # stand in for `pip install -e mypkg`: registered by name, then the normal lookup
        registry.register("dynamics", "drift_to_centre")(namespace["DriftToCentre"])
        path = sim.run(write_scenario(scenario), runs_dir=tmp_path / "runs")
    values = sim.open_run(path).values()
    people = values[(values.step == 12) & (values.group == "people")]
    assert (people[["a", "b"]] - 0.5).abs().max().max() < 0.01


@pytest.mark.parametrize("kind", sorted(CONTRACT_METHOD))
def test_every_registered_plugin_loads_with_its_contract(kind):
    names = registry.names(kind)
    assert names, f"no {kind} plugins registered"
    for name in names:
        plugin = registry.get(kind, name)
        assert hasattr(plugin, "Params") and callable(getattr(plugin, CONTRACT_METHOD[kind], None)), name
        plugin(plugin.Params.model_validate(MINIMAL_PARAMS.get((kind, name), {})))


def test_readme_worlds_example_runs():
    (block,) = [b for b in PYTHON_BLOCKS if "sim.build(" in b]
    namespace: dict = {}
    exec(compile(block, "README worlds", "exec"), namespace)
    assert namespace["effect"][0] > 0  # the AI pulls the economic value up in the world it is in
    assert namespace["batch"].rng.stream[:8].tolist() == list(range(64, 72))
