"""Bad input: one line naming file, line, field, what was given and what is allowed; exit 2; no run directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
from pydantic.fields import FieldInfo

from sim.cli import main
from sim.contracts import Interval
from sim.plugin.kinds import KINDS

BASE = """\
name: bad
steps: 5
values: [a, b]
network:
  generator: erdos_renyi
  params: {mean_degree: 4}
population:
  - name: people
    count: 50
    confidence: 0.3
dynamics:
  - deffuant: {distance: l2}
metrics: [mean_values]
"""

CASES = [
    ("confidence: 0.3", "confidence: 1.5",
     "s.yaml:10 population[0].confidence: must be in (0, 1], got 1.5"),
    ("confidence: 0.3", "confidence: {dist: uniform, low: 0, high: 0.3}",
     "s.yaml:10 population[0].confidence: must be in (0, 1], got uniform on [0, 0.3)"),
    ("confidence: 0.3", "cofidence: 0.3",
     "s.yaml:10 population[0].cofidence: unknown key 'cofidence'; did you mean 'confidence'? "
     "(allowed: {group_keys})"),
    ("count: 50", "count: many", "s.yaml:9 population[0].count: must be an integer, got 'many'"),
    ("count: 50", "count: 0", "s.yaml:9 population[0].count: must be >= 1, got 0"),
    ("deffuant:", "defuant:",
     "s.yaml:12 dynamics[0]: unknown dynamics 'defuant'; did you mean {defuant_hint}? (installed: {dynamics})"),
    ("distance: l2", "distance: l3",
     "s.yaml:12 dynamics[0].deffuant.distance: must be one of l2, linf, per_dimension, got 'l3'; did you mean 'l2'?"),
    ("generator: erdos_renyi", "generator: erdos_reny",
     "s.yaml:5 network.generator: unknown network generator 'erdos_reny'; did you mean 'erdos_renyi'? (installed: "
     "barabasi_albert, complete, erdos_renyi, file, powerlaw_cluster, stochastic_block, watts_strogatz)"),
    ("mean_degree: 4", "mean_degre: 4",
     "s.yaml:6 network.params.mean_degre: unknown key 'mean_degre'; did you mean 'mean_degree'? "
     "(allowed: p, mean_degree)"),
    ("metrics: [mean_values]", "metrics: [deffuant]",
     "s.yaml:13 metrics[0]: unknown metric 'deffuant' (installed: {metrics}) ('deffuant' is a dynamics plugin)"),
    ("confidence: 0.3", "confidence: {dist: gauss, mean: 0.3}",
     "s.yaml:10 population[0].confidence: unknown distribution 'gauss' (allowed: constant, uniform, normal, beta)"),
    ("    count: 50", "    count: 50\n    kind: humna",
     "s.yaml:10 population[0].kind: must be one of human, llm, ai, rl, got 'humna'; did you mean 'human'?"),
    ("values: [a, b]", "values: schwarz10",
     "s.yaml:3 values: unknown value space 'schwarz10'; did you mean 'schwartz10'? "
     "(built-in: schwartz10, mft6, wvs2; or a list of dimension names)"),
    ("steps: 5", "steps: [5", "s.yaml:3 malformed YAML: expected ',' or ']', but got ':'"),
    ("steps: 5", "steps: 5\nsteps: 6", "s.yaml:3 steps: duplicate key 'steps'"),
    ("metrics: [mean_values]", "metrics: [mean_valuez]",
     "s.yaml:13 metrics[0]: unknown metric 'mean_valuez'; did you mean 'mean_values'? (installed: {metrics})"),
    ("confidence: 0.3", "init: {file: nope.csv}",
     "s.yaml:10 population[0].init.file: file not found: nope.csv (resolved to {dir}/nope.csv)"),
    ("mean_degree: 4", "mean_degree: 4, p: 0.1", "s.yaml:6 network.params: give exactly one of p or mean_degree"),
    ("generator: erdos_renyi\n  params: {mean_degree: 4}", "generator: file\n  params: {path: gone.edgelist}",
     "s.yaml:6 network.params.path: file not found: gone.edgelist (resolved to {dir}/gone.edgelist)"),
    ("confidence: 0.3", "init: {dist: constant, value: [0.2, 0.3, 0.4]}",
     "s.yaml:10 population[0].init: needs 2 numbers (one per dimension), got 3"),
    ("deffuant: {distance: l2}", "noise: {sigma: 0.1}",
     "s.yaml:10 population[0].confidence: is set, but no listed dynamics uses it "
     "(add one of: algorithmic_bias, deffuant, hegselmann_krause)"),
    ("  - name: people", "  - name: people\n    zealots: 2",
     "s.yaml:9 population[0].zealots: must be in [0, 1], got 2"),
    # a plugin's parameter range reads as the scenario's (one Interval type), and so does pydantic's own bound
    ("distance: l2", "repulsion: 1.5", "s.yaml:12 dynamics[0].deffuant.repulsion: must be in (0, 1], got 1.5"),
    ("distance: l2", "repulsion: 0", "s.yaml:12 dynamics[0].deffuant.repulsion: must be in (0, 1], got 0"),
    ("mean_degree: 4", "mean_degree: -1", "s.yaml:6 network.params.mean_degree: must be >= 0, got -1"),
]


def _installed(message: str) -> str:
    """The lists that grow with every plugin and field, filled from what is installed now."""
    import difflib

    from sim import registry
    from sim.config.schema import GroupSpec

    close = difflib.get_close_matches("defuant", registry.names("dynamics"), n=3, cutoff=0.5)
    return message.replace("{dynamics}", ", ".join(registry.names("dynamics"))).replace(
        "{metrics}", ", ".join(registry.names("metrics"))).replace(
        "{group_keys}", ", ".join(GroupSpec.model_fields)).replace(
        "{defuant_hint}", " or ".join(repr(c) for c in close))


@pytest.mark.parametrize("old,new,message", CASES, ids=[c[2].split(" ", 2)[1].rstrip(":") + "|" + c[1][:20]
                                                        for c in CASES])
def test_bad_scenario_gets_one_exact_line_and_exit_2(tmp_path, monkeypatch, capsys, old, new, message):
    assert old in BASE
    (tmp_path / "s.yaml").write_text(BASE.replace(old, new, 1))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "s.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"valuesim: error: {_installed(message).format(dir=tmp_path)}\n"
    assert not (tmp_path / "runs").exists(), "a run directory was left behind"


@pytest.mark.parametrize("argv,message", [
    (["run", "s.yaml", "--set", "population.peeple.count=3"],
     "--set cannot set population.peeple.count: no entry named 'peeple'; did you mean 'people'? (entries: people)"),
    (["run", "s.yaml", "--set", "steps=-1"], "--set steps: must be >= 0, got -1"),
    (["run", "s.yaml", "--set", "population.people.confidence=2"],
     "--set population[0].confidence: must be in (0, 1], got 2"),
    (["run", "s.yaml", "--seed", "-3"], "--seed must be >= 0, got -3"),
    (["run", "s.yaml", "--device", "gpu"], "--device must be cpu, cuda or cuda:<index>, got 'gpu'"),
    (["run", "missing.yaml"], "scenario file not found: missing.yaml"),
    (["resume", "nowhere"], "nowhere: not a run directory (no manifest.json)"),
])
def test_bad_flags(tmp_path, monkeypatch, capsys, argv, message):
    (tmp_path / "s.yaml").write_text(BASE)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--quiet"] if argv[0] == "run" else argv) == 2
    assert capsys.readouterr().err == f"valuesim: error: {message}\n"


def test_the_console_script_prints_no_traceback(tmp_path):
    (tmp_path / "s.yaml").write_text(BASE.replace("confidence: 0.3", "confidence: 1.5"))
    exe = Path(sys.executable).with_name("valuesim")
    proc = subprocess.run([str(exe), "validate", "s.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "valuesim: error: s.yaml:10 population[0].confidence: must be in (0, 1], got 1.5\n"
    assert proc.stdout == ""


def test_out_dir_that_is_not_empty_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text(BASE)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "s.yaml", "--quiet", "--out", "taken"]) == 2
    assert capsys.readouterr().err == "valuesim: error: --out taken: the directory exists and is not empty\n"


def test_a_network_too_large_to_hold_is_refused_before_building(tmp_path, monkeypatch, capsys):
    (tmp_path / "s.yaml").write_text(BASE.replace("count: 50", "count: 60000").replace(
        "generator: erdos_renyi\n  params: {mean_degree: 4}", "generator: complete"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "s.yaml", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "valuesim: error: s.yaml:5 network.generator: this network would have about 1,799,970,000 edges on 60,000 "
        "agents, more than the 100,000,000 valuesim holds; use a sparser generator (erdos_renyi with a mean_degree, "
        "watts_strogatz, barabasi_albert) or fewer agents\n")


def test_one_interval_type_writes_every_range():
    assert str(Interval(gt=0, le=1)) == "in (0, 1]" and str(Interval(ge=0, lt=0.5)) == "in [0, 0.5)"
    assert str(Interval(ge=1)) == ">= 1" and str(Interval(lt=2.5)) == "< 2.5"
    assert Interval(gt=0, le=1).message(1.5) == "must be in (0, 1], got 1.5"
    assert 1 in Interval(gt=0, le=1) and 0 not in Interval(gt=0, le=1) and float("nan") not in Interval(ge=0)
    with pytest.raises(TypeError, match="at most one lower bound"):
        Interval(gt=0, ge=0)


def _field_bounds(annotation, metadata=()):
    """The bound objects (anything with gt/ge/lt/le) on a field, its Annotated parts and its union members."""
    metadata = [part for m in metadata for part in (m.metadata if isinstance(m, FieldInfo) else [m])]
    found = [m for m in metadata if any(getattr(m, b, None) is not None for b in ("gt", "ge", "lt", "le"))]
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return found + _field_bounds(base, extra)
    return found + [b for arg in get_args(annotation) for b in _field_bounds(arg)]


def test_first_party_plugin_ranges_are_intervals():
    """A pydantic Field(gt=0, le=1) would report only the bound it broke: "must be <= 1", not "in (0, 1]"."""
    from sim import registry

    checked = 0
    for kind in KINDS:
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            if not cls.__module__.startswith("plugins."):
                continue
            for field_name, field in cls.Params.model_fields.items():
                bounds = _field_bounds(field.annotation, field.metadata)
                checked += len(bounds)
                assert all(isinstance(b, Interval) for b in bounds), (kind, name, field_name, bounds)
    assert checked > 20


def test_the_per_agent_parameters_and_their_ranges_are_written_once():
    from dataclasses import fields

    from sim.config.schema import GroupSpec
    from sim.core.state import AGENT_PARAMETERS, AgentParams

    assert [f.name for f in fields(AgentParams)] == [*AGENT_PARAMETERS, "zealot"]
    for name, interval in AGENT_PARAMETERS.items():
        with pytest.raises(ValueError, match=re.escape(f"{name}\n  {interval.message(interval.high + 1)}")):
            GroupSpec.model_validate({"name": "g", "count": 1, name: interval.high + 1})
