"""valuesim sweep: a sweep's table equals the same points run one by one with sim.run, whichever way the
points are batched (one batch, a process pool, Ray); grids parsed and refused in one line; the phase plot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sim
from sim.analysis.sweep import parse_grid, plan, points, read_sweep, sweep
from sim.cli import main

SCENARIO = {
    "name": "tiny", "seed": 11, "steps": 8, "log_every": 3, "values": ["economic", "social"],
    "network": {"generator": "erdos_renyi", "params": {"mean_degree": 5}},
    "population": [{"name": "people", "count": 30, "confidence": 0.3, "rate": 0.3},
                   {"name": "ai", "kind": "ai", "count": 1, "policy": {"zealot": {"values": [0.9, 0.1]}}}],
    "dynamics": ["deffuant", {"noise": {"sigma": 0.002}}],
    "protocols": [{"broadcast": {"speakers": "ai", "audience": "people", "share": 0.2}}],
    "metrics": ["mean_values", "drift", "polarization", {"clusters": {"threshold": 0.05}}],
}
KEYS = ["step", "seed", "metric", "group", "dimension"]


@pytest.fixture
def scenario_file(tmp_path):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(dimension=frame["dimension"].fillna("").astype(str), group=frame["group"].astype(str))
    return frame.sort_values(KEYS).reset_index(drop=True)[[*KEYS, "value"]]


def _one_by_one(path, sweep_table, keys, seeds, tmp_path, base=()):
    """Every point of the sweep against its own sim.run with the point's --set flags."""
    for point, part in sweep_table.groupby("point"):
        flags = [f"{k}={part[k].iloc[0]:g}" if isinstance(part[k].iloc[0], float) else f"{k}={part[k].iloc[0]}"
                 for k in keys]
        run = sim.run(str(path), worlds=seeds, runs_dir=tmp_path / "single", overrides=[*base, *flags])
        single = _tidy(sim.open_run(run).metrics().rename(columns={"world": "seed"}))
        mine = _tidy(part)
        assert len(mine) == len(single), flags
        assert (mine[KEYS].to_numpy() == single[KEYS].to_numpy()).all(), flags
        assert np.array_equal(mine["value"].to_numpy(), single["value"].to_numpy(), equal_nan=True), flags


def test_sweep_equals_points_run_one_by_one(scenario_file, tmp_path):
    grid = ["population.people.confidence=0.1:0.5:3", "dynamics.noise.sigma=0,0.01"]
    path = sweep(str(scenario_file), grid, seeds=2, workers=1, out=tmp_path / "sweep")
    run = sim.open_run(path)
    assert run.status == "complete" and run.manifest["kind"] == "sweep"
    assert run.manifest["grid"]["points"] == 6 and run.manifest["grid"]["batches"] == 2  # sigma splits batches
    table, keys = read_sweep(run)
    assert keys == ["population.people.confidence", "dynamics.noise.sigma"]
    assert sorted(table["population.people.confidence"].unique()) == [0.1, 0.3, 0.5]
    assert set(table["seed"]) == {0, 1} and table["point"].nunique() == 6
    _one_by_one(scenario_file, table, keys, 2, tmp_path)


def test_process_pool_gives_the_same_table(scenario_file, tmp_path):
    grid = ["population.people.rate=0.2,0.4", "population.people.count=20,30"]
    one = pd.read_parquet(sweep(str(scenario_file), grid, seeds=2, workers=1, out=tmp_path / "one") / "sweep.parquet")
    pool = pd.read_parquet(sweep(str(scenario_file), grid, seeds=2, workers=2, out=tmp_path / "pool")
                           / "sweep.parquet")
    pd.testing.assert_frame_equal(one, pool)
    assert one["population.people.count"].dtype == np.float64 and set(one["population.people.count"]) == {20, 30}
    _one_by_one(scenario_file, one[one["population.people.rate"] == 0.4], ["population.people.rate",
                                                                         "population.people.count"], 2, tmp_path)


def test_points_stop_where_their_own_run_converges(scenario_file, tmp_path):
    """With stop: tolerance each point logs as far as its own run would (the batch goes on for the others)."""
    base = ["stop.tolerance=0.02", "steps=40", "dynamics.noise.sigma=0"]
    grid = ["population.people.confidence=0.05,0.6"]
    path = sweep(str(scenario_file), grid, seeds=2, workers=1, out=tmp_path / "stop", overrides=base)
    table, keys = read_sweep(sim.open_run(path))
    last = table.groupby("point")["step"].max()
    assert last.min() < 40  # one point converged early (the batch went on for the other)
    _one_by_one(scenario_file, table, keys, 2, tmp_path, base=base)


def test_parse_grid(scenario_file):
    scenario = sim.load_scenario(str(scenario_file))
    keys = parse_grid(["population.people.confidence=0.1:0.3:3", "dynamics.noise.sigma=0,0.01",
                       "description=first,second", "steps=5"], scenario)
    assert keys[0].values == (0.1, 0.2, 0.3) and keys[0].per_world
    assert not keys[1].per_world and keys[1].param.kind == "batch"
    assert keys[2].values == ("first", "second") and keys[2].param is None
    assert keys[3].values == (5.0,) and keys[3].flag(5.0) == "steps=5"
    grid = points(keys)
    assert len(grid) == 3 * 2 * 2 and grid[1] == (0.1, 0.0, "second", 5.0)
    batches = plan(keys, grid)
    assert len(batches) == 4 and all(len(members) == 3 for _, members in batches)


@pytest.mark.parametrize("spec, message", [
    ("population.people.confidnce=0.1,0.2", "did you mean 'confidence'"),
    ("population.people.confidence=0.1:2:3", "leaves what the scenario accepts"),
    ("population.people.confidence", "expected dotted.key=v1,v2"),
    ("population.people.confidence=0.1:0.5:x", "start:stop:count"),
    ("network.generator=nowhere", "network.generator=nowhere"),
])
def test_bad_grids_are_one_line(scenario_file, spec, message, capsys):
    assert main(["sweep", str(scenario_file), "--grid", spec, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_sweep_json_and_phase_plot(scenario_file, tmp_path, capsys):
    assert main(["sweep", str(scenario_file), "--grid", "population.people.confidence=0.1:0.5:3", "--seeds", "3",
                 "--out", str(tmp_path / "cli"), "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "complete" and out["points"] == 3 and out["batches"] == 1
    run = sim.open_run(out["run_dir"])
    fig = run.plot.sweep_phase(metric="clusters")
    line = fig.axes[0].lines[0]
    table, _ = read_sweep(run)
    final = table.query("metric == 'clusters' and group == 'all' and step == 8")
    means = final.groupby("population.people.confidence")["value"].mean()
    assert np.allclose(line.get_ydata(), means.to_numpy())
    from sim.runs.reading import list_runs

    assert [r["status"] for r in list_runs(tmp_path)[0] if r["path"] == out["run_dir"]] == ["complete"]


def test_sweep_help_has_runnable_examples(capsys):
    assert main(["sweep", "--help"]) == 0
    text = capsys.readouterr().out
    assert "valuesim sweep scenarios/deffuant_clusters.yaml --grid population.people.confidence=0.05:0.5:10" in text


def test_ray_executor_gives_the_same_table(scenario_file, tmp_path):
    pytest.importorskip("ray")
    grid = ["population.people.confidence=0.2,0.4", "dynamics.noise.sigma=0,0.01"]
    local = pd.read_parquet(sweep(str(scenario_file), grid, seeds=2, workers=1, out=tmp_path / "l") / "sweep.parquet")
    ray = pd.read_parquet(sweep(str(scenario_file), grid, seeds=2, executor="ray", out=tmp_path / "r")
                          / "sweep.parquet")
    pd.testing.assert_frame_equal(local, ray)


def test_analyze_a_sweep_summarises_each_point_over_its_seeds(scenario_file, tmp_path, capsys):
    from sim.analysis.summary import summarize

    path = sweep(str(scenario_file), ["population.people.confidence=0.1,0.5"], seeds=3, workers=1,
                 out=tmp_path / "s")
    result = summarize(path)
    rows = result["sweep"]
    table, keys = read_sweep(sim.open_run(path))
    for confidence in (0.1, 0.5):
        row = rows[(rows[keys[0]] == confidence) & (rows.metric == "clusters") & (rows.group == "all")
                   & (rows.stat == "final")].iloc[0]
        final = table.query(f"`{keys[0]}` == {confidence} and metric == 'clusters' and group == 'all' and step == 8")
        assert row["n"] == 3 and row["mean"] == pytest.approx(final.value.mean())
    assert main(["analyze", str(path)]) == 0
    assert "sweep: final readings" in capsys.readouterr().out


def test_a_sweep_does_not_write_into_a_used_directory(scenario_file, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(sim.RunDirError, match="not empty"):
        sweep(str(scenario_file), ["population.people.confidence=0.1,0.2"], seeds=1, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
