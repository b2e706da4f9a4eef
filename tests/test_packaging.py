"""The built wheel ships ``agents/``, and a scenario copied alone runs from an installed wheel.

The wheel is built from a copy of the sources (so the checkout gets no
``build/`` or stale ``valuesim.egg-info``) and installed, without dependencies,
into a throwaway venv layered on this one; the run then imports ``sim`` from
that venv, not from the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_scaffold import layered_venv

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "sim", "plugins", "agents")


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not in this venv (the Makefile installs it); cannot build without isolation")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():  # symlinks=True: sim/data/agents stays a link, as in a checkout
            shutil.copytree(REPO / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300), "pip wheel")
    (built,) = out.glob("valuesim-*.whl")
    return built


def test_the_wheel_holds_every_agent_definition(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    definitions = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "agents").rglob("*.yaml"))
    assert definitions and any("/questionnaires/" in d for d in definitions)
    missing = [d for d in definitions if f"sim/data/{d}" not in shipped]
    assert not missing, f"not in {wheel.name}: {missing}"
    templates = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "sim" / "plugin" / "templates").rglob("*.tmpl"))
    assert len(templates) >= 4 + 5 * 4  # the shared files and four per kind
    assert not [t for t in templates if t not in shipped], "`valuesim new plugin` needs its templates in the wheel"


def test_a_scenario_copied_alone_runs_from_the_installed_wheel(wheel, tmp_path):
    """``pip install valuesim`` outside a checkout: llm_town's personas and questionnaires come from the wheel."""
    python = str(layered_venv(tmp_path / "venv"))
    run = dict(capture_output=True, text=True, timeout=300, cwd=tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy2(REPO / "scenarios" / "llm_town.yaml", tmp_path / "elsewhere" / "town.yaml")
    _check(subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                          **run), "pip install the wheel")

    where = _check(subprocess.run([python, "-c", "import sim; print(sim.__file__)"], **run), "import sim")
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), where.stdout  # not the checkout's sim

    ran = _check(subprocess.run([python, "-m", "sim.cli", "run", "town.yaml", "--set", "steps=2",
                                 "--set", "population.people.count=200", "--runs-dir", "runs", "--quiet", "--json"],
                                **run), "valuesim run town.yaml")
    assert json.loads(ran.stdout)["status"] == "complete"
    made = _check(subprocess.run([python, "-m", "sim.cli", "new", "plugin", "protocol", "town_hall", "--dir", "code"],
                                 **run), "valuesim new plugin protocol")
    assert (tmp_path / "elsewhere" / made.stdout.strip() / "valuesim_town_hall" / "plugin.py").is_file()


def test_the_project_agents_folder_comes_first_and_the_installed_one_fills_in(tmp_path):
    from sim.config.persona import INSTALLED_AGENTS, read_agent

    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "neutral_assistant.yaml").write_text("system_prompt: mine\n")
    (tmp_path / "scenarios").mkdir()
    data, path = read_agent("neutral_assistant", tmp_path / "scenarios")
    assert data == {"system_prompt": "mine"} and path == tmp_path / "agents" / "neutral_assistant.yaml"
    _, path = read_agent("caregiver", tmp_path / "scenarios")
    assert path == INSTALLED_AGENTS / "caregiver.yaml"
    with pytest.raises(ValueError, match=r"did you mean 'caregiver'"):
        read_agent("caregivr", tmp_path / "scenarios")
