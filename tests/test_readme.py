"""The README stays true: its Python examples run, and every registered plugin loads."""

from __future__ import annotations

import re

import pytest
import torch

import sim
from sim import registry
from tests.conftest import REPO, small_scenario

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
MINIMAL_PARAMS = {"file": {"path": "x"}, "erdos_renyi": {"p": 0.1}, "watts_strogatz": {"k": 4, "p": 0.1},
                  "barabasi_albert": {"m": 2}, "powerlaw_cluster": {"m": 2, "p": 0.1},
                  "stochastic_block": {"p_in": 0.1, "p_out": 0.01}, "strategic_influencer": {"goal": 0.9},
                  "llm": {"persona": {"name": "p", "values": {}, "system_prompt": "", "message_prompt": ""}},
                  "broadcast": {"speakers": "ai"}, "protocol_outcome": {"protocol": "broadcast", "outcome": "reached"}}
CONTRACT_METHOD = {"dynamics": "apply", "networks": "build", "metrics": "observe", "policies": "express",
                   "protocols": "step"}


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
    analysis, api = [b for b in PYTHON_BLOCKS if "import sim" in b and "class " not in b and "sim.build(" not in b]
    exec(compile(analysis, "README analysis", "exec"), {})
    exec(compile(api, "README API", "exec"), {})


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
        plugin(plugin.Params.model_validate(MINIMAL_PARAMS.get(name, {})))


def test_readme_worlds_example_runs():
    (block,) = [b for b in PYTHON_BLOCKS if "sim.build(" in b]
    namespace: dict = {}
    exec(compile(block, "README worlds", "exec"), namespace)
    assert namespace["effect"][0] > 0  # the AI pulls the economic value up in the world it is in
    assert namespace["batch"].rng.stream[:8].tolist() == list(range(64, 72))
