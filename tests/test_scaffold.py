"""`valuesim new plugin`: the scaffolded package of every kind works, and one really installs and runs."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest
import yaml

from sim import checks, registry
from sim.cli import main
from sim.errors import ValuesimError
from sim.plugin.scaffold import scaffold_plugin

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

KINDS = {"policies": "policy", "dynamics": "dynamics", "metrics": "metric", "networks": "network",
         "protocols": "protocol", "alignment": "alignment"}
CHECKS = {"policies": checks.check_policy, "dynamics": checks.check_dynamics, "metrics": checks.check_metric,
          "networks": checks.check_network, "protocols": checks.check_protocol, "alignment": checks.check_alignment}


def load_module(name: str, path: Path, monkeypatch):
    """Import a file as module ``name`` (registered in sys.modules, as pydantic needs, until the test ends)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scaffolded_package_keeps_its_contract_and_runs(kind, tmp_path, monkeypatch):
    name = f"my_{KINDS[kind]}_plugin"
    package = f"valuesim_{name}"
    root = scaffold_plugin(KINDS[kind], name, tmp_path)  # the singular word, as typed on the command line
    assert root == tmp_path / f"valuesim-{name.replace('_', '-')}"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == {"README.md", "pyproject.toml", f"{package}/__init__.py", f"{package}/plugin.py",
                     "tests/test_plugin.py"}

    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"valuesim-{name.replace('_', '-')}"
    assert project["project"]["dependencies"] == ["valuesim"]
    (entry,) = project["project"]["entry-points"][f"valuesim.{kind}"].items()
    module_name, class_name = entry[1].split(":")
    assert entry[0] == name and module_name == f"{package}.plugin"
    readme = (root / "README.md").read_text()
    assert "pip install -e ." in readme and f"valuesim plugins list --kind {kind}" in readme and name in readme

    # Import the generated module from its path, as the entry point would once installed.
    monkeypatch.syspath_prepend(str(root))
    load_module(package, root / package / "__init__.py", monkeypatch)
    plugin = load_module(module_name, root / package / "plugin.py", monkeypatch).__dict__[class_name]
    assert plugin.__doc__ and plugin.Params.model_fields
    assert all(field.description for field in plugin.Params.model_fields.values())
    CHECKS[kind](plugin)
    if kind == "dynamics":
        assert plugin.uses == ()
    if kind == "policies":
        assert plugin.expresses_own_values is False

    # The generated tests, with the plugin registered as if its package were installed.
    with registry.scratch():
        registry.register(kind, name)(plugin)
        tests = load_module(f"test_plugin_{name}", root / "tests" / "test_plugin.py", monkeypatch)
        test_functions = [f for n, f in vars(tests).items() if n.startswith("test_")]
        assert len(test_functions) == 2
        tests.__dict__[f"test_keeps_the_{KINDS[kind]}_contract"]()
        tests.test_runs_in_a_scenario(tmp_path / "runs")


def test_a_name_that_would_shadow_an_import_gets_a_suffix(tmp_path, monkeypatch):
    root = scaffold_plugin("metric", "reading", tmp_path)  # `class Reading` would hide sim.contracts.Reading
    plugin = load_module("valuesim_reading.plugin", root / "valuesim_reading" / "plugin.py", monkeypatch)
    checks.check_metric(plugin.ReadingPlugin)
    assert '"valuesim_reading.plugin:ReadingPlugin"' in (root / "pyproject.toml").read_text()


def test_kind_words_and_bad_input(tmp_path):
    assert scaffold_plugin("Policies", "first", tmp_path).name == "valuesim-first"
    with pytest.raises(ValuesimError, match=re.escape(f"{tmp_path / 'valuesim-first'} already exists")):
        scaffold_plugin("policy", "first", tmp_path)
    with pytest.raises(ValuesimError, match=r"kind 'trainer' \(kinds: policy, dynamics, metric, network, protocol, "
                                               r"alignment\)"):
        scaffold_plugin("trainer", "second", tmp_path)
    with pytest.raises(ValuesimError, match="did you mean 'metric'"):
        scaffold_plugin("metrc", "second", tmp_path)
    for bad in ("my-policy", "2nd", "trailing_", "", "über"):
        with pytest.raises(ValuesimError, match="must be a Python identifier"):
            scaffold_plugin("policy", bad, tmp_path)
    with pytest.raises(ValuesimError, match="already named 'deffuant'"):
        scaffold_plugin("dynamics", "deffuant", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["valuesim-first"]  # nothing half-written left behind


def test_cli_new_plugin(tmp_path, capsys):
    assert main(["new", "plugin", "network", "my_net", "--dir", str(tmp_path / "code")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "code" / "valuesim-my-net") and "pip install -e ." in err
    assert (tmp_path / "code" / "valuesim-my-net" / "valuesim_my_net" / "plugin.py").is_file()
    assert main(["new", "plugin", "network", "my_net", "--dir", str(tmp_path / "code")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("valuesim: error: ") and "already exists" in err and err.count("\n") == 1
    assert main(["new"]) == 2 and "valuesim new plugin KIND NAME" in capsys.readouterr().err


def test_cli_new_plugin_defaults_to_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["new", "plugin", "policy", "here"]) == 0
    assert Path(capsys.readouterr().out.strip()) == Path("valuesim-here")
    assert (tmp_path / "valuesim-here" / "pyproject.toml").is_file()


def layered_venv(where: Path) -> Path:
    """A throwaway venv that sees this one's packages, for installing into without touching this one.

    Installing into the project's own venv would show a half-installed plugin
    to any other test run in that venv at the same time (its metadata is on
    disk, its import hook only in processes started after the install).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # addsitedir (not a plain path line) so that this venv's own .pth files, editable installs included, apply.
    parent = sysconfig.get_paths()["purelib"]
    Path(site_dir, "_valuesim_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def test_scaffolded_policy_installs_lists_and_runs(tmp_path):
    """The real thing: pip install -e the package, list it, run a scenario with it, run its own tests."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not in this venv (the Makefile installs it); cannot build without isolation")
    python = str(layered_venv(tmp_path / "venv"))
    name = f"scaffold_probe_{uuid.uuid4().hex[:8]}"
    dist = f"valuesim-{name.replace('_', '-')}"
    root = scaffold_plugin("policy", name, tmp_path)
    run = dict(capture_output=True, text=True, timeout=300)
    valuesim = [python, "-m", "sim.cli"]
    _check(subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e",
                           str(root)], **run), "pip install -e")

    listed = _check(subprocess.run([*valuesim, "plugins", "list", "--kind", "policies", "--json"], **run),
                    "valuesim plugins list")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert name in rows and "honest" in rows and dist in json.dumps(rows[name]), rows.get(name)

    scenario = tmp_path / "probe.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "probe", "seed": 2, "steps": 5, "log_every": 5, "values": ["a", "b"],
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 4}},
        "population": [{"name": "people", "count": 60},
                       {"name": "probes", "count": 6, "policy": {name: {"strength": 0.9}}}],
        "dynamics": ["deffuant"], "metrics": ["mean_values"]}))
    ran = _check(subprocess.run([*valuesim, "run", str(scenario), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                                 "--json"], **run), "valuesim run")
    assert json.loads(ran.stdout)["status"] == "complete"

    _check(subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root, **run),
           "the generated package's own tests")
    installed_here = importlib.metadata.entry_points(group="valuesim.policies").names
    assert name not in installed_here  # the project's venv was left alone
