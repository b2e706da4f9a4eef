"""valuesim calibrate: recovery of known parameters, batches equal single runs, the directory, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import sim
from sim.calibrate import egonets, load_targets, parse_params
from sim.calibrate.evaluate import Evaluator
from sim.cli import main

REPO = Path(__file__).resolve().parents[1]
DIMS = ["security", "independence", "success", "kindness", "pleasure"]
TRUTH = {"confidence": 0.3, "rate": 0.25}
SEARCH = ["population.people.confidence=0.05:0.6", "population.people.rate=0.05:0.5"]


def _ego_study(folder: Path, networks: int = 36, noise: float = 0.005, extra: dict | None = None) -> Path:
    """A scenario on ``networks`` ego networks with observed trajectories of its ground truth (low noise)."""
    edges, sizes = egonets.ego_networks(count=networks, seed=11)
    np.savetxt(folder / "edges.txt", edges, fmt="%d")
    data = {"name": "egos", "seed": 3, "steps": 5, "values": DIMS,
            "network": {"generator": "file", "params": {"path": "edges.txt"}},
            "population": [{"name": "people", "count": int(sizes.sum()), "init": {"dist": "normal", "mean": 0.5,
                                                                                   "std": 0.2}, **TRUTH}],
            "dynamics": [{"deffuant": {"distance": "l2"}}], "metrics": ["mean_values", "polarization"],
            **(extra or {})}
    path = folder / "egos.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    observed = egonets.observe(sim.load_scenario(path), steps=6, noise=noise, seed=999)
    observed.to_parquet(folder / "observed.parquet", index=False)
    (folder / "targets.yaml").write_text("trajectories:\n  file: observed.parquet\n")
    return path


@pytest.mark.parametrize("method", ["pso", "cmaes"])
def test_calibration_recovers_a_known_confidence_bound_and_rate_within_10_percent(tmp_path, method):
    scenario = _ego_study(tmp_path, networks=60)
    result = sim.calibrate.fit(scenario, tmp_path / "targets.yaml", SEARCH, method=method, budget=96, swarm=12,
                               seeds=8, runs_dir=tmp_path / "runs")
    confidence = result.params["population.people.confidence"]
    rate = result.params["population.people.rate"]
    assert abs(confidence - TRUTH["confidence"]) <= 0.1 * TRUTH["confidence"], result.params
    assert abs(rate - TRUTH["rate"]) <= 0.1 * TRUTH["rate"], result.params
    base = result.baselines  # the fitted model predicts the next snapshot better than persistence and DeGroot
    for name in ("persistence", "degroot", "degroot_fitted"):
        assert base["model_mse"] < base[f"{name}_mse"]
        assert base[f"model_minus_{name}_high"] < 0, name


@pytest.mark.slow
def test_the_shipped_ego_networks_scenario_is_recovered_and_beats_the_baselines(tmp_path):
    result = sim.calibrate.fit(REPO / "scenarios" / "ego_networks.yaml",
                               REPO / "scenarios" / "ego_networks" / "targets.yaml", SEARCH, budget=160, swarm=16,
                               seeds=8, runs_dir=tmp_path)
    assert result.params["population.people.confidence"] == pytest.approx(0.3, rel=0.05)
    assert result.params["population.people.rate"] == pytest.approx(0.25, rel=0.05)
    for name in ("persistence", "degroot", "degroot_fitted"):
        assert result.baselines[f"model_minus_{name}_high"] < 0, name


def test_the_shipped_ego_network_data_are_what_the_generator_makes():
    edges, sizes = egonets.ego_networks()
    shipped = np.loadtxt(REPO / "scenarios" / "ego_networks" / "edges.txt", dtype=np.int64)
    assert np.array_equal(shipped, edges) and len(sizes) == 275
    scenario = sim.load_scenario(REPO / "scenarios" / "ego_networks.yaml")
    assert scenario.spec.num_agents == sizes.sum()
    assert len(np.unique(egonets.components(edges, int(sizes.sum())))) == 275
    observed = pd.read_parquet(REPO / "scenarios" / "ego_networks" / "observed.parquet")
    again = egonets.observe(scenario, steps=2)
    first = observed[observed.step < 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    assert sorted(observed.step.unique()) == list(range(egonets.OBSERVED_STEPS))


def test_a_batch_of_candidates_scores_each_as_it_would_alone(tmp_path):
    """An iteration is one batched run: candidate c's loss in a batch is its loss evaluated alone."""
    scenario = sim.load_scenario(_ego_study(tmp_path, networks=8, extra={"dynamics": [
        {"deffuant": {"distance": "l2"}}, {"noise": {"sigma": 0.01}}]}))
    params = parse_params(SEARCH + ["dynamics.noise.sigma=0:0.05"], scenario)
    assert [p.kind for p in params] == ["agents", "agents", "batch"]
    targets = load_targets(tmp_path / "targets.yaml", scenario)
    evaluator = Evaluator(scenario, params, targets, seeds=3)
    values = np.array([[0.2, 0.1, 0.01], [0.3, 0.25, 0.01], [0.45, 0.4, 0.02]])
    together = evaluator.evaluate(values).loss
    alone = [evaluator.evaluate(row[None]).loss[0] for row in values]
    assert together.tolist() == alone
    assert len(set(together.tolist())) == 3


def test_metric_targets_with_standard_errors_are_fitted_and_reported(tmp_path):
    scenario = _ego_study(tmp_path, networks=10)
    truth = sim.build(sim.load_scenario(scenario), streams=[50, 51, 52, 53])
    truth.advance(5)
    variance = {r.metric: r for r in truth.observe()}["variance"]
    value = float(variance.value[:, 0, 0].mean())
    (tmp_path / "metric_targets.yaml").write_text(yaml.safe_dump({"metrics": [
        {"metric": "variance", "group": "all", "value": value, "se": 0.0005}]}))
    result = sim.calibrate.fit(scenario, tmp_path / "metric_targets.yaml", ["population.people.rate=0.05:0.5"],
                               budget=40, swarm=8, seeds=4, runs_dir=tmp_path / "runs")
    (row,) = result.fit
    assert row["target_value"] == value and row["ci_low"] <= row["value"] <= row["ci_high"]
    assert row["within"], row
    assert abs(result.params["population.people.rate"] - TRUTH["rate"]) < 0.1


def test_the_cli_writes_a_calibration_directory_and_prints_the_flags_that_reproduce_it(tmp_path, capsys):
    scenario = _ego_study(tmp_path, networks=8)
    code = main(["calibrate", str(scenario), "--targets", str(tmp_path / "targets.yaml"), *(
        a for p in SEARCH for a in ("--param", p)), "--budget", "24", "--swarm", "6", "--seeds", "2",
        "--out", str(tmp_path / "cal"), "--json", "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    folder = tmp_path / "cal"
    assert {p.name for p in folder.iterdir()} >= {"manifest.json", "scenario.yaml", "fit.json", "fit.parquet",
                                                 "loss_curve.parquet", "candidates.parquet", "fit.png"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["kind"] == "calibration"
    curve = pd.read_parquet(folder / "loss_curve.parquet")
    assert len(curve) == 4 and (np.diff(curve["best"]) <= 0).all()
    assert len(pd.read_parquet(folder / "candidates.parquet")) == 24
    fitted = sim.load_scenario(scenario, summary["set_flags"])
    assert fitted.spec.population[0].rate.value == summary["params"]["population.people.rate"]
    written = yaml.safe_load((folder / "scenario.yaml").read_text())
    assert written["population"][0]["confidence"]["value"] == summary["params"]["population.people.confidence"]
    predictors = set(pd.read_parquet(folder / "fit.parquet")["predictor"])
    assert predictors == {"model", "persistence", "degroot", "degroot_fitted"}


# ---------------------------------------------------------------- bad input: one line, file and line, exit 2


def _cli_error(capsys, scenario, targets, *params, extra=()) -> str:
    code = main(["calibrate", str(scenario), "--targets", str(targets), *(a for p in params for a in ("--param", p)),
                 "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("valuesim: error: ") and err.count("\n") == 1, err
    return err


def test_a_param_on_a_key_that_does_not_exist_names_the_file_line_and_nearest_key(tmp_path, capsys):
    scenario = _ego_study(tmp_path, networks=3)
    targets = tmp_path / "targets.yaml"
    err = _cli_error(capsys, scenario, targets, "population.people.confidenc=0.1:0.5")
    assert f"{scenario}:" in err and "did you mean 'confidence'?" in err
    line = int(err.split(f"{scenario}:")[1].split()[0])
    assert "people" in scenario.read_text().splitlines()[line - 1]
    err = _cli_error(capsys, scenario, targets, "dynamics.deffuant.distance=0:1")
    assert "must name a number" in err and f"{scenario}:" in err


@pytest.mark.parametrize("spec, message", [
    ("population.people.confidence=0:0.5", "must be in (0, 1], got 0"),
    ("population.people.rate=0.4:0.2", "low < high"),
    ("population.people.rate=a:b", "must be two numbers"),
    ("population.people.rate=0.3", "expected dotted.key=low:high"),
])
def test_a_bad_range_is_one_line(tmp_path, capsys, spec, message):
    scenario = _ego_study(tmp_path, networks=3)
    err = _cli_error(capsys, scenario, tmp_path / "targets.yaml", spec)
    assert message in err and f"--param {spec}" in err


@pytest.mark.parametrize("text, where, message", [
    ("trajectories:\n  file: observed.parquet\n  loss: onestep\n", 3, "did you mean 'one_step'?"),
    ("metrics:\n  - metric: variance\n    value: 0.1\n  bad: [\n", 4, "malformed YAML"),
    ("metrics:\n  - metric: variance\n    dimension: security\n    value: 0.1\n", 2, "give exactly one of se"),
    ("metrics:\n  - metric: varience\n    dimension: security\n    value: 0.1\n    se: 0.1\n", 2,
     "did you mean 'variance'?"),
    ("trajectories:\n  file: missing.csv\n", 2, "file not found: missing.csv"),
    ("trajectorys:\n  file: observed.parquet\n", 1, "trajectorys"),
])
def test_a_malformed_targets_file_is_one_line_with_its_line(tmp_path, capsys, text, where, message):
    scenario = _ego_study(tmp_path, networks=3)
    targets = tmp_path / "bad.yaml"
    targets.write_text(text)
    err = _cli_error(capsys, scenario, targets, "population.people.rate=0.1:0.5")
    assert f"{targets}:{where} " in err and message in err, err


def test_a_bad_row_of_observed_trajectories_names_the_file_and_line(tmp_path, capsys):
    scenario = _ego_study(tmp_path, networks=3)
    (tmp_path / "obs.csv").write_text("agent,step," + ",".join(DIMS) + "\n0,0,0.1,0.2,0.3,0.4,0.5\n"
                                      "0,1,0.1,0.2,1.3,0.4,0.5\n")
    (tmp_path / "t.yaml").write_text("trajectories:\n  file: obs.csv\n")
    err = _cli_error(capsys, scenario, tmp_path / "t.yaml", "population.people.rate=0.1:0.5")
    assert f"{tmp_path / 'obs.csv'}:3 success: must be a number in [0, 1], got 1.3" in err
    (tmp_path / "obs.csv").write_text("agent,step,security\n0,0,0.1\n")
    err = _cli_error(capsys, scenario, tmp_path / "t.yaml", "population.people.rate=0.1:0.5")
    assert "missing column(s) independence" in err
    assert not (tmp_path / "runs").exists(), "bad input leaves no calibration directory behind"
