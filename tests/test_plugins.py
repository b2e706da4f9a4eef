"""Discovery: drop-in plugin files, duplicates and broken plugins, `valuesim plugins list/show`."""

from __future__ import annotations

import json

import pytest

import sim
from sim import registry
from sim.cli import main
from tests.conftest import small_scenario

DROP_IN = '''
import torch
from sim.contracts import PluginParams
from sim.registry import register


@register("policies", "mirror_{tag}")
class Mirror:
    """Show the mirror image of one's values around a pivot."""

    class Params(PluginParams):
        pivot: float = 0.5
        """The point values are mirrored around."""

    expresses_own_values = False

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        return (2 * self.params.pivot - state.values[:, group.rows]).clamp(0, 1)
'''


@pytest.fixture
def clean_registry():
    with registry.scratch():
        yield


def _scenario_with(policy: str) -> dict:
    data = small_scenario(steps=4, metrics=["mean_values"])
    data["population"][1]["policy"] = {policy: {"pivot": 0.4}}
    return data


def test_a_drop_in_file_named_by_the_scenario_is_loaded_and_used(tmp_path, write_scenario, clean_registry):
    (tmp_path / "mirror.py").write_text(DROP_IN.format(tag="a"))
    data = _scenario_with("mirror_a")
    data["plugins"] = ["mirror.py"]
    path = sim.run(write_scenario(data), runs_dir=tmp_path / "runs")
    assert sim.open_run(path).scenario["plugins"] == ["mirror.py"]
    assert registry.origin("policies", "mirror_a") == f"file {tmp_path / 'mirror.py'}"
    # a resumed run reloads the same file: the resolved scenario names it
    assert sim.open_run(path).status == "complete"


def test_plugins_dir_flag_loads_only_that_folder(tmp_path, write_scenario, clean_registry, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mirror.py").write_text(DROP_IN.format(tag="b"))
    scenario = write_scenario(_scenario_with("mirror_b"))
    assert main(["run", str(scenario), "--quiet", "--plugins", str(folder), "--runs-dir", str(tmp_path / "r")]) == 0
    run_dir = capsys.readouterr().out.split("run log: ")[1].strip()
    assert sim.open_run(run_dir).scenario["plugins"] == [str(folder / "mirror.py")]


def test_a_drop_in_file_that_fails_to_import_is_a_scenario_error(tmp_path, write_scenario, clean_registry, capsys):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    data = _scenario_with("honest")
    data["population"][1]["policy"] = "honest"
    data["plugins"] = ["broken.py"]
    path = write_scenario(data)
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    line = 1 + path.read_text().splitlines().index("- broken.py")
    assert err == (f"valuesim: error: {path}:{line} plugins[0]: broken.py failed to import: "
                   "ModuleNotFoundError: No module named 'not_a_module_anywhere'\n")


def test_a_duplicate_name_warns_and_keeps_the_first(tmp_path, clean_registry):
    (tmp_path / "dup.py").write_text(DROP_IN.format(tag="c").replace('"mirror_c"', '"honest"'))
    with pytest.warns(UserWarning, match=r"policies plugin 'honest' from .*dup.py has the name of the one from "
                                         r"distribution valuesim \(plugins.policies:Honest\); keeping that one"):
        registry.load_files([tmp_path / "dup.py"])
    assert registry.get("policies", "honest").__name__ == "Honest"


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    """A real (fake) installed distribution whose policy entry point cannot be imported."""
    info = tmp_path / "site" / "broken_dist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[valuesim.policies]\nshaky = no_such_module_xyz:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with registry.scratch():
        registry.refresh()
        yield


def test_an_installed_plugin_that_fails_to_import_is_a_warning_in_listings(broken_distribution, capsys):
    assert main(["plugins", "list", "--kind", "policies"]) == 0
    out, err = capsys.readouterr()
    assert "shaky" in out and "honest" in out
    assert err == ("valuesim: warning: policies plugin 'shaky' from distribution broken-dist "
                   "(no_such_module_xyz:Thing) failed to import: ModuleNotFoundError: "
                   "No module named 'no_such_module_xyz'\n")
    data = small_scenario()
    data["population"][0]["policy"] = "shaky"
    with pytest.raises(sim.ScenarioError, match=r"population\[0\].policy: policies plugin 'shaky' from "
                                                r"distribution broken-dist"):
        sim.scenario_from_dict(data)


def test_plugins_list_json_and_show(capsys):
    assert main(["plugins", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    kinds = {r["kind"] for r in rows}
    assert {"dynamics", "networks", "metrics", "policies"} <= kinds
    deffuant = next(r for r in rows if r["name"] == "deffuant")
    assert deffuant["origin"] == "distribution valuesim (plugins.dynamics.pairwise:Deffuant)"
    assert main(["plugins", "show", "deffuant", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = {p["name"]: p for p in info["parameters"]}
    assert params["distance"]["default"] == "l2" and params["pairs_per_agent"]["constraints"] == ["> 0"]
    assert params["repulsion"]["description"].startswith("Second bound epsilon_r")
    assert info["file"].endswith("plugins/dynamics/pairwise.py") and info["doc"].startswith("Deffuant")
    assert main(["plugins", "show", "strategic_influencer"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("strategic_influencer (policies) from distribution valuesim")
    assert "  goal: " in text and "(required)" in text and "margin:" in text


def test_plugins_show_unknown_name_suggests(capsys):
    assert main(["plugins", "show", "defuant"]) == 2
    assert capsys.readouterr().err.startswith(
        "valuesim: error: unknown plugin 'defuant'; did you mean 'deffuant'")


def test_two_installed_plugins_with_one_name_warn_with_both_distributions(tmp_path, monkeypatch):
    for dist, target in (("aaa_one", "one_module:Thing"), ("bbb_two", "two_module:Other")):
        info = tmp_path / "site" / f"{dist}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[valuesim.metrics]\ntwin = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with registry.scratch():
        registry.refresh()
        with pytest.warns(UserWarning, match=r"two metrics plugins are named 'twin': distribution (aaa-one|bbb-two) "
                                             r"\(\w+_module:\w+\) and distribution (aaa-one|bbb-two)"):
            assert "twin" in registry.names("metrics")


def test_scratch_undoes_registrations_loads_and_discovery(tmp_path):
    before = registry.names("policies")
    (tmp_path / "mirror.py").write_text(DROP_IN.format(tag="s"))

    class Fake:
        """A fake metric, registered from code."""

    with registry.scratch():
        registry.register("metrics", "fake_metric")(Fake)
        registry.load_files([tmp_path / "mirror.py"])
        assert registry.origin("metrics", "fake_metric") == f"module {__name__}"
        assert "mirror_s" in registry.names("policies") and registry.get("policies", "mirror_s")
        registry.refresh()
    assert "fake_metric" not in registry.names("metrics") and registry.names("policies") == before
    with registry.scratch():  # the file was forgotten with its plugin, so it loads again
        registry.load_files([tmp_path / "mirror.py"])
        assert registry.origin("policies", "mirror_s") == f"file {tmp_path / 'mirror.py'}"
