"""Shapley values of simulations: players, nulls, windows, common random numbers, batches, run directories,
the command line and its bad input. Small worlds, so that each test takes about a second."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sim
from sim.cli import main
from sim.shapley.players import parse_players, player_masks
from sim.shapley.simulation import Null, SimulationGame, Worth, apply_coalitions, evaluate_worlds
from tests.conftest import run_driver

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "scenarios" / "shapley_influencers.yaml"
SMALL = ["steps=30", "population.people.count=160"]
INFLUENCERS = "broadcasters,nudgers,contrarians,idle"
DRIFT = "drift_dimension:people:traditional_secular"


@pytest.fixture(scope="module")
def catalog_values():
    return sim.shapley(CATALOG, metric=DRIFT, players=INFLUENCERS, overrides=SMALL, write=False)


def _twins(**changes) -> sim.Scenario:
    """People on a complete graph and two identical zealot groups (and a third, weaker one)."""
    data = {
        "name": "twins", "seed": 4, "steps": 20, "log_every": 5, "values": ["a", "b"],
        "network": {"generator": "complete"},
        "population": [
            {"name": "people", "count": 60, "init": {"dist": "uniform", "low": 0.3, "high": 0.7},
             "confidence": 0.35, "rate": 0.3},
            {"name": "left", "count": 3, "zealots": 1.0, "policy": {"zealot": {"values": [0.8, 0.5]}},
             "confidence": 0.35, "rate": 0.3},
            {"name": "right", "count": 3, "zealots": 1.0, "policy": {"zealot": {"values": [0.8, 0.5]}},
             "confidence": 0.35, "rate": 0.3},
            {"name": "weak", "count": 1, "zealots": 1.0, "policy": {"zealot": {"values": [0.2, 0.5]}},
             "confidence": 0.35, "rate": 0.3},
        ],
        "dynamics": ["deffuant"],
        "metrics": ["mean_values"],
    }
    data.update(changes)
    return sim.scenario_from_dict(data)


def _value(table, player, window=None):
    rows = table[table["player"] == player]
    if window is not None:
        rows = rows[rows["window"] == window]
    (row,) = rows.itertuples()
    return row


# ------------------------------------------------------------------ what the values say


def test_an_idle_group_gets_about_zero(catalog_values):
    idle = _value(catalog_values, "idle")
    assert idle.ci_low <= 0 <= idle.ci_high


def test_the_high_reach_zealots_get_the_largest_share_of_the_drift_toward_their_values(catalog_values):
    broadcasters = _value(catalog_values, "broadcasters")
    assert broadcasters.rank == 1 and broadcasters.value > 0
    others = catalog_values[catalog_values["player"] != "broadcasters"]
    assert (broadcasters.ci_low > others["ci_high"]).all()
    assert _value(catalog_values, "contrarians").ci_high < 0  # they show the mirror image: a pull away
    assert abs(catalog_values.attrs["efficiency_residual"][0]) < 1e-9
    assert catalog_values.attrs["method"] == "exact" and catalog_values.attrs["n_evaluations"] == 16 * 8


def test_two_identical_groups_get_equal_values_within_error():
    table = sim.shapley(_twins(), metric="mean_values:people:a", players="left,right,weak", replicates=12,
                        write=False)
    left, right = _value(table, "left"), _value(table, "right")
    assert left.value > 0.02 and right.value > 0.02
    assert abs(left.value - right.value) <= 1.96 * math.hypot(left.se, right.se)


def _nudges() -> sim.Scenario:
    """Zealots that nudge 60 people a little in 5 steps: the worth's noise (where people start, who meets whom)
    is mostly common to all coalitions, which is where common random numbers pay."""
    def zealots(name: str, shown: float, count: int) -> dict:
        return {"name": name, "count": count, "zealots": 1.0, "init": {"dist": "constant", "value": 0.5},
                "policy": {"zealot": {"values": [shown, 0.5]}}, "confidence": 1.0, "rate": 0.1}

    return _twins(steps=5, log_every=5, population=[
        {"name": "people", "count": 60, "init": {"dist": "uniform", "low": 0.0, "high": 1.0}, "confidence": 1.0,
         "rate": 0.1}, zealots("left", 0.9, 3), zealots("right", 0.9, 3), zealots("weak", 0.2, 1)])


@pytest.mark.parametrize("null", ["absent", "noop"])
def test_common_random_numbers_give_a_much_smaller_standard_error_than_independent_streams(null):
    options = dict(metric="mean_values:people:a", players="left,right,weak", replicates=8, write=False, null=null)
    common = sim.shapley(_nudges(), **options)
    independent = sim.shapley(_nudges(), common_random_numbers=False, **options)
    assert common.attrs["n_evaluations"] == independent.attrs["n_evaluations"]
    assert common.attrs["common_random_numbers"] and not independent.attrs["common_random_numbers"]
    ratio = independent["se"].mean() / common["se"].mean()
    print(f"null {null}: standard error with independent streams / with common random numbers = {ratio:.1f}x")
    assert ratio >= 3


# ------------------------------------------------------------------ the game and its worlds


def _game(scenario=None, players="left,right,weak", null="absent", worth="mean_values:people:a", **options):
    scenario = scenario or _twins()
    groups = [g.name for g in scenario.spec.population]
    parsed = parse_players(players, groups, scenario.spec.num_agents, tuple(scenario.space.dimensions))
    return SimulationGame(scenario, parsed, Worth.parse(worth), Null.parse(null), **options)


def test_the_grand_coalition_in_replicate_r_is_the_plain_run_of_stream_r():
    game = _game(replicates=3)
    worths = game(np.ones((1, 3), dtype=bool), 3)[0, :, 0]
    for r in range(3):
        alone = sim.build(_twins(), streams=[r])
        alone.advance(20)
        reading = next(x for x in alone.observe() if x.metric == "mean_values")
        assert worths[r] == float(reading.value[0, 0, 0])


def test_batches_of_any_size_give_the_same_worths():
    coalitions = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0], [1, 1, 1]], dtype=bool)
    whole = _game(replicates=3)(coalitions, 3)
    chunked = _game(replicates=3, batch=5)(coalitions, 3)
    assert np.array_equal(whole, chunked)


def test_absent_players_are_not_in_the_world():
    game = _game(replicates=2)
    simulation = sim.build(game.scenario, streams=[0, 0])
    apply_coalitions(simulation, game.plan.players, game.null, torch.tensor([[True, True, True], [False, True, True]]))
    assert simulation.state.active[0].all()
    assert not simulation.state.active[1, 60:63].any() and simulation.state.active[1, 63:].all()


def test_the_noop_null_shows_initial_values_and_never_moves():
    scenario = _twins(population=[
        {"name": "people", "count": 40, "init": {"dist": "uniform", "low": 0.3, "high": 0.7}, "confidence": 0.5,
         "rate": 0.3},
        {"name": "movers", "count": 10, "init": {"dist": "uniform", "low": 0.4, "high": 0.6}, "confidence": 0.5,
         "rate": 0.3, "policy": {"contrarian": {"strength": 1.0}}}])
    game = _game(scenario, players="movers", null="noop", replicates=1)
    simulation = sim.build(game.scenario, streams=[0, 0])
    apply_coalitions(simulation, game.plan.players, game.null, torch.tensor([[True], [False]]))
    simulation.advance(10)
    values, initial = simulation.state.values, simulation.world.initial
    assert torch.equal(values[1, 40:], initial[1, 40:])  # they do not move
    assert torch.equal(simulation.state.expressed[1, 40:], initial[1, 40:])  # and show where they started
    assert not torch.equal(values[0, 40:], initial[0, 40:])  # in their own world they do


def test_a_baseline_null_is_the_world_where_the_group_acts_by_that_policy():
    game = _game(players="left", null="baseline:honest", replicates=2)
    worths = game(np.array([[False]]), 2)[0, :, 0]
    honest = _twins(population=[{**g, "policy": "honest"} if g["name"] == "left" else g
                                for g in _twins().to_dict()["population"]])
    for r in range(2):
        alone = sim.build(honest, streams=[r])
        alone.advance(20)
        reading = next(x for x in alone.observe() if x.metric == "mean_values")
        assert worths[r] == float(reading.value[0, 0, 0])


def test_windows_add_up_to_the_change_over_the_run():
    options = dict(players="left,right,weak", replicates=4, write=False)
    windows = sim.shapley(_twins(), metric="mean_values:people:a", windows=4, **options)
    assert windows["window"].unique().tolist() == ["0-5", "5-10", "10-15", "15-20"]
    final = sim.shapley(_twins(), metric="mean_values:people:a", **options)
    start = sim.shapley(_twins(), metric="mean_values:people:a", at=0, **options)
    summed = windows.groupby("player", sort=False)["value"].sum()
    change = final.set_index("player")["value"] - start.set_index("player")["value"]
    np.testing.assert_allclose(summed[change.index].to_numpy(), change.to_numpy(), atol=1e-12)
    early = windows[windows["window"] == "0-5"]["value"].abs().sum()
    late = windows[windows["window"] == "15-20"]["value"].abs().sum()
    assert early > late  # zealots pull hardest while people are still far from them


def test_the_mean_over_the_run_and_a_step_are_worths_too():
    mean = sim.shapley(_twins(), metric="mean_values:people:a", at="mean", players="left,weak", replicates=2,
                       write=False)
    assert mean["window"].unique().tolist() == ["mean"] and mean.attrs["at"] == "mean"
    at_0 = sim.shapley(_twins(), metric="mean_values:people:a", at=0, players="left,weak", replicates=2,
                       write=False)
    assert np.allclose(at_0["value"], 0.0)  # nobody has moved yet; absent zealots are not counted in people


def test_sampling_methods_run_on_a_simulation_within_their_budget():
    for method in ("permutation", "tmc", "kernel", "banzhaf", "loo"):
        table = sim.shapley(_twins(), metric="mean_values:people:a", players="left,right,weak", replicates=2,
                            method=method, budget=120, write=False)
        assert table.attrs["n_evaluations"] <= 120 and (table["method"] == method).all(), method


# ------------------------------------------------------------------ players


def test_player_selectors_choose_the_agents_they_say():
    scenario = sim.load_scenario(CATALOG, SMALL)
    groups = [g.name for g in scenario.spec.population]
    players = parse_players("hubs=degree:top:5@people,range=index:0:10,keen=value:traditional_secular>0.65@people,"
                            "nudgers", groups, scenario.spec.num_agents, tuple(scenario.space.dimensions))
    simulation = sim.build(scenario, streams=[0, 1])
    masks = torch.cat([player_masks([p], simulation.world) for p in players[:2]])
    degree = simulation.world.network.degree()[:160]
    hubs = masks[0, 0].nonzero().ravel()
    assert len(hubs) == 5 and degree[hubs].min() >= degree[[i for i in range(160) if i not in hubs]].max()
    assert masks[1, 0].nonzero().ravel().tolist() == list(range(10))
    keen = players[2].mask(simulation.world)
    initial = simulation.world.initial[..., 0]
    assert torch.equal(keen[:, :160], initial[:, :160] > 0.65) and not keen[:, 160:].any()
    assert not torch.equal(keen[0], keen[1])  # each replicate's own initial values
    assert players[3].name == "nudgers" and players[3].mask(simulation.world).sum() == 4
    agents = parse_players("agents", groups, 7, ("a",))
    assert [p.name for p in agents] == [f"agent{i}" for i in range(7)]


@pytest.mark.parametrize("players, message", [
    ("nudger", "--players unknown group 'nudger'; did you mean 'nudgers'? (groups: people, broadcasters, nudgers, "
               "contrarians, idle)"),
    ("a=index:0:10,b=index:5:20", "--players players must not share agents: agent 5 is in a, b"),
    ("a=value:traditional_secular>2", "--players player 'a' (a=value:traditional_secular>2) has no agent in world 0 "
                                      "(stream 0 of this check)"),
    ("a=colour:red", "--players player 'a': unknown selector 'colour:red' (selectors: group:G, index:START:STOP, "
                     "value:DIM>X, degree:top:K, each optionally @GROUP)"),
    ("a=value:tradition>0.5", "--players player 'a': unknown value dimension 'tradition'; did you mean "
                              "'traditional_secular'? (dimensions: "
                              "traditional_secular, survival_self_expression)"),
    ("agents", "--players 'agents' makes every agent a player, at most 1000; this population has 1438 (name sets of "
               "agents instead: NAME=SELECTOR,...)"),
])
def test_bad_players_are_one_line(players, message, tmp_path, capsys):
    overrides = ["--set", "population.people.count=1400"] if players == "agents" else ["--set", SMALL[1]]
    code = main(["shapley", str(CATALOG), "--players", players, "--metric", DRIFT, "--quiet",
                 "--runs-dir", str(tmp_path), *overrides])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"valuesim: error: {message}"
    assert not any(tmp_path.iterdir())  # bad input leaves no run directory


@pytest.mark.parametrize("flags, message", [
    (["--metric", "drfit"], "--metric no metric writes 'drfit'; did you mean 'drift'? (readings: "),
    (["--metric", "mean_values:people"], "--metric mean_values has one value per dimension; name one: "
                                         "mean_values:people:DIMENSION (dimensions: traditional_secular, "
                                         "survival_self_expression)"),
    (["--metric", "drift:crowd"], "--metric drift: unknown scope 'crowd' (scopes: people, broadcasters, nudgers, "
                                  "contrarians, idle, all)"),
    (["--metric", "drift:idle"], "--metric drift:idle: every agent of scope 'idle' belongs to a player, so with "
                                 "--null absent a coalition without them has no one to measure"),
    (["--metric", DRIFT, "--null", "baseline:honset"], "--null unknown policy 'honset'; did you mean 'honest'?"),
    (["--metric", DRIFT, "--null", "nothing"], "--null must be absent, noop, baseline or baseline:POLICY, got "
                                              "'nothing'"),
    (["--metric", DRIFT, "--method", "permutation", "--budget", "10"], "--budget budget of 10 evaluations is too "
                                                                       "small for permutation with 4 players"),
    (["--metric", DRIFT, "--at", "99"], "--at must be final, mean or a step in [0, 60], got 99"),
    (["--metric", DRIFT, "--windows", "2", "--at", "mean"], "--windows windows measure the change within each "
                                                            "window up to the last step; --at mean does not combine"),
    (["--metric", DRIFT, "--replicates", "0"], "--replicates must be >= 1, got 0"),
])
def test_bad_options_are_one_line(flags, message, tmp_path, capsys):
    code = main(["shapley", str(CATALOG), "--players", INFLUENCERS, "--quiet", "--runs-dir", str(tmp_path), *flags])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"valuesim: error: {message}") and "\n" not in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ run directories and the command line


def test_the_command_line_prints_the_table_and_writes_a_run_directory(tmp_path, capsys):
    out = tmp_path / "sh"
    code = main(["shapley", str(CATALOG), "--players", INFLUENCERS, "--metric", DRIFT, "--replicates", "2",
                 "--quiet", "--out", str(out), "--set", SMALL[0], "--set", SMALL[1]])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"broadcasters\s+[0-9.]+\s+[0-9.e-]+\s+\[", printed) and "efficiency residual" in printed
    view = sim.open_run(out)
    assert view.status == "complete" and view.manifest["kind"] == "shapley"
    assert view.manifest["shapley"]["null"] == "absent" and view.manifest["shapley"]["replicates"] == 2
    assert (out / "scenario.yaml").is_file() and not (out / "parts").exists()
    table = sim.shapley.read_shapley(out)
    assert {"player", "metric", "window", "value", "se", "n_evaluations", "method", "null"} <= set(table.columns)
    assert table["metric"].unique().tolist() == [DRIFT] and len(table) == 4


def test_given_a_run_directory_it_analyses_that_runs_scenario_and_names_it(tmp_path, capsys):
    run = sim.run(CATALOG, runs_dir=tmp_path, overrides=SMALL + ["seed=5"])
    code = main(["shapley", str(run), "--players", "broadcasters,idle", "--metric", DRIFT, "--replicates", "2",
                 "--quiet", "--json", "--runs-dir", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = sim.open_run(summary["run_dir"]).manifest
    assert manifest["source_run"] == str(run) and manifest["seed"] == 5
    assert Path(summary["run_dir"]).name.endswith("__shapley")
    assert summary["diagnostics"]["players"] == ["broadcasters", "idle"] and len(summary["rows"]) == 2
    # v(N) of replicate 0 is the source run's own final reading (the source run is stream 0)
    metrics = sim.open_run(run).metrics()
    final = metrics.query("metric == 'drift_dimension' and group == 'people' and dimension == 'traditional_secular'"
                          " and step == 30")["value"].item()
    game = _game(sim.load_scenario(CATALOG, SMALL + ["seed=5"]), players="broadcasters,idle", worth=DRIFT,
                 replicates=1)
    assert game(np.ones((1, 2), bool), 1)[0, 0, 0] == final


def test_a_failure_while_estimating_marks_the_run_directory_failed(tmp_path, monkeypatch):
    import sim.shapley.simulation as simulation_module

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(simulation_module, "evaluate_worlds", broken)
    with pytest.raises(RuntimeError, match="boom"):
        sim.shapley(_twins(), metric="mean_values:people:a", players="left,weak", replicates=1, out=tmp_path / "x")
    manifest = sim.open_run(tmp_path / "x").manifest
    assert manifest["status"] == "failed" and "boom" in manifest["error"]


def test_the_readme_shapley_example_runs(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Shapley"):]
    (block,) = re.findall(r"```python\n(.*?)```", section[:section.find("\n## ", 3) if "\n## " in section[3:]
                                                           else len(section)], flags=re.S)
    monkeypatch.chdir(REPO)
    block = block.replace('runs_dir="runs"', f'runs_dir="{tmp_path}"')
    namespace: dict = {}
    exec(compile(block, "README shapley", "exec"), namespace)
    assert namespace["table"]["rank"].min() == 1


# ------------------------------------------------------------------ executors


def test_the_ray_executor_names_the_extra_when_ray_is_missing(monkeypatch):
    from sim.shapley.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(sim.ValuesimError, match=r"pip install 'valuesim\[ray\]'"):
        RayExecutor()


def test_chunks_on_ray_workers_give_the_worths_of_the_local_executor():
    ray = pytest.importorskip("ray")
    from sim.shapley.executors import RayExecutor

    coalitions = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=bool)
    local = _game(replicates=2, batch=2)(coalitions, 2)
    try:
        remote = _game(replicates=2, batch=2, executor=RayExecutor(num_cpus=2))(coalitions, 2)
    finally:
        ray.shutdown()
    assert np.array_equal(local, remote)


def test_evaluate_worlds_is_a_plain_function_of_plain_data():
    import pickle

    game = _game(replicates=2)
    plan = pickle.loads(pickle.dumps(game.plan))  # what a Ray worker receives
    worths = evaluate_worlds(plan, np.array([[True, False, True]]), np.array([1]))
    assert worths.shape == (1, 1)
    assert worths[0, 0] == game(np.array([[True, False, True]]), 2)[0, 1, 0]


def test_valuesim_shapley_on_the_ray_cluster_of_ray_address_gives_the_local_table(ray_head, tmp_path):
    """What a cluster user runs (README, Shapley): the chunks go to the cluster's workers, not to an instance
    of the driver's own, and the values are those of the local executor bit for bit."""
    import pandas as pd

    options = ["--players", INFLUENCERS, "--metric", DRIFT, "--replicates", "2", "--batch", "8",
               *[flag for item in SMALL for flag in ("--set", item)]]
    local = tmp_path / "local"
    assert main(["shapley", str(CATALOG), *options, "--out", str(local)]) == 0
    remote = tmp_path / "remote"
    command = [str(Path(sys.executable).with_name("valuesim")), "shapley", str(CATALOG), *options,
               "--executor", "ray", "--out", str(remote)]
    pid, returncode, output = run_driver(command, ray_head)
    assert returncode == 0, output[-4000:]
    manifest = json.loads((remote / "manifest.json").read_text())
    cluster = manifest["shapley"]["ray"]
    assert manifest["shapley"]["executor"] == "ray" and manifest["shapley"]["batch"] == 8
    assert cluster["address"].endswith(f":{ray_head['port']}") and not cluster["local"], cluster
    # the chunks ran in the head's workers: a worker's log names the task
    logs = ray_head["temp"] / "session_latest" / "logs"
    ran = [p for p in logs.glob("worker-*.out") if "evaluate_worlds" in p.read_text(errors="replace")]
    assert ran, sorted(p.name for p in logs.iterdir())
    mine, theirs = (pd.read_parquet(path / "shapley.parquet") for path in (local, remote))
    pd.testing.assert_frame_equal(mine, theirs)
