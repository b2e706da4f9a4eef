"""The manipulation trial calibrated: protocol parameters per world, the targets file, the shipped fit.

A calibration candidate or a sweep point that changes an ``advice`` parameter is a world of one batch
(``Simulation.vary_protocol``); world b of such a batch is the single-world run of its stream with
world b's parameters. The shipped scenario's parameters came from ``valuesim calibrate`` on
``scenarios/targets/manipulation_trial.yaml`` (the command is in the scenario's comment) and reproduce the
published table over twenty seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sim
from plugins.decisions.metrics import PUBLISHED_SHIFT, advice_table, published_gap
from sim.analysis.sweep import parse_grid, plan, points, read_sweep, sweep
from sim.calibrate import load_targets, parse_params
from sim.calibrate.evaluate import Evaluator
from tests.conftest import REPO

TRIAL = REPO / "scenarios" / "manipulation_trial.yaml"
TARGETS = REPO / "scenarios" / "targets" / "manipulation_trial.yaml"
QUIET = ["protocols.advice.log_dialogues=false", "population.clients.count=60"]
OUTCOMES = ("arm", "susceptibility", "before", "after", "choice", "shifted", "shift", "accepted")


def _scenario(flags=()):
    return sim.load_scenario(TRIAL, QUIET + list(flags))


def test_a_batch_of_advice_parameters_per_world_equals_each_world_run_alone():
    points = [{"tactic_gain": 1.4, "susceptibility.financial": 0.8, "choice_temperature": 0.2},
              {"tactic_gain": 0.1, "susceptibility.emotional": 0.15, "shift_threshold.emotional": 0.0},
              {}, {"reactance": 0.5, "report_noise": 0.01, "margin": 0.3, "bias": 0.9, "taste": 0.3}]
    batch = sim.build(_scenario(), streams=[0, 1, 1, 0])
    batch.vary_protocol("advice", points)
    batch.advance(3)
    varied = batch.protocols[0][1].params
    assert varied.tactic_gain.shape == (4,) and varied.tactic_gain[:2].tolist() == [1.4, 0.1]  # one [B] tensor
    assert torch.is_tensor(varied.susceptibility["emotional"]) and isinstance(varied.turns, int)
    for world, (stream, point) in enumerate(zip([0, 1, 1, 0], points)):
        alone = sim.build(_scenario([f"protocols.advice.{k}={v}" for k, v in point.items()]), streams=[stream])
        alone.advance(3)
        assert torch.equal(batch.state.values[world], alone.state.values[0]), world
        for key in OUTCOMES:
            got, want = batch.state.protocols["advice"][key][world], alone.state.protocols["advice"][key][0]
            assert torch.equal(got.nan_to_num(-9), want.nan_to_num(-9)), (world, key)
    shifted = batch.state.protocols["advice"]["shifted"]
    assert not torch.equal(shifted[1], shifted[2])  # same stream, other parameters: something moved


def test_bad_per_world_advice_parameters_name_the_world_and_field():
    batch = sim.build(_scenario(), worlds=2)
    with pytest.raises(ValueError, match=r"protocol 'advice' parameters of world 1: tactic_gain: "
                                         r"must be >= 0, got -1"):
        batch.vary_protocol("advice", [{}, {"tactic_gain": -1.0}])
    with pytest.raises(ValueError, match=r"protocol 'advice': turns cannot vary per world"):
        batch.vary_protocol("advice", [{"turns": 2}, {}])
    with pytest.raises(ValueError, match=r"protocol 'advice': no parameter 'susceptibility.leisure'"):
        batch.vary_protocol("advice", [{"susceptibility.leisure": 0.2}, {}])


def test_calibration_batches_advice_parameters_and_scores_each_candidate_as_alone():
    scenario = _scenario()
    params = parse_params(["protocols.advice.tactic_gain=0:1.5", "protocols.advice.susceptibility.financial=0.1:0.9",
                           "protocols.advice.shift_threshold.emotional=0:0.3", "protocols.advice.turns=1:3"], scenario)
    assert [p.kind for p in params] == ["protocol", "protocol", "protocol", "batch"]
    assert [p.field for p in params[:3]] == ["tactic_gain", "susceptibility.financial", "shift_threshold.emotional"]
    evaluator = Evaluator(scenario, params, load_targets(TARGETS, scenario), seeds=4)
    values = np.array([[0.2, 0.3, 0.05, 3], [1.2, 0.7, 0.2, 3], [0.6, 0.5, 0.1, 3]])
    together = evaluator.evaluate(values)
    assert together.loss.tolist() == [evaluator.evaluate(row[None]).loss[0] for row in values]
    assert len(set(together.loss.tolist())) == 3
    assert together.metric_count.tolist() == [[2] * 6] * 3  # each domain's target: the two seeds deciding in it


def test_a_sweep_over_an_advice_parameter_is_one_batch_and_each_point_is_its_own_run(tmp_path):
    scenario = _scenario()
    keys = parse_grid(["protocols.advice.tactic_gain=0.1,1.2"], scenario)
    assert keys[0].per_world and len(plan(keys, points(keys))) == 1
    run = sim.open_run(sweep(scenario, ["protocols.advice.tactic_gain=0.1,1.2"], seeds=2, out=tmp_path / "sw"))
    table, _ = read_sweep(run)
    shifted = table[(table.metric == "advice.shifted") & (table.step == 3)]
    for gain in (0.1, 1.2):
        alone = sim.build(_scenario([f"protocols.advice.tactic_gain={gain}"]), worlds=2)
        alone.advance(3)
        want = {r.metric: r for r in alone.observe()}["advice.shifted"].value[:, :, 0].double().numpy()
        got = shifted[shifted["protocols.advice.tactic_gain"] == gain].sort_values(["seed", "group"])
        order = [g.name for g in alone.world.groups[1:]]
        got = got.set_index(["seed", "group"])["value"].unstack()[order].to_numpy()
        np.testing.assert_array_equal(got, want)


def test_a_per_domain_target_reads_only_the_worlds_of_its_domain():
    simulation = sim.build(_scenario(), worlds=2)
    simulation.advance(3)
    readings = {r.metric: r for r in simulation.observe()}
    by_domain = readings["advice.shifted.by_domain"]
    assert by_domain.dimensions == ("financial", "emotional")
    plain = readings["advice.shifted"].value[:, :, 0]
    assert torch.equal(by_domain.value[0, :, 0], plain[0]) and bool(by_domain.value[0, :, 1].isnan().all())
    assert torch.equal(by_domain.value[1, :, 1], plain[1]) and bool(by_domain.value[1, :, 0].isnan().all())
    targets = load_targets(TARGETS, _scenario())
    assert [(t.group, t.dimension, t.value) for t in targets.metrics] == [
        (f"{arm}_advisor", domain, PUBLISHED_SHIFT[(domain, arm)])
        for domain in ("financial", "emotional") for arm in ("neutral", "covert", "strategic")]
    assert all(abs(t.se - (t.value * (1 - t.value) / 78) ** 0.5) < 1e-4 for t in targets.metrics)


def _shipped_tables(seeds: range) -> pd.DataFrame:
    tables = []
    for seed in seeds:
        simulation = sim.build(sim.load_scenario(TRIAL, ["protocols.advice.log_dialogues=false"]), worlds=2,
                               seed=seed)
        simulation.advance(3)
        tables.append(advice_table(simulation).assign(seed=seed))
    return pd.concat(tables, ignore_index=True)


def test_the_shipped_trial_reproduces_the_published_table_over_twenty_seeds():
    """Over twenty seeds (run seeds 0..19, none of them the calibration's), each cell's mean shifted share
    is within 5 points of the published one, and so is every seed's table on average over its cells.

    The calibrated fit is tighter than the issue asks: 0.9 points per cell on average (the hand-picked
    parameters it replaced were 2.8 points off), which the 2-point bound holds it to.
    """
    tables = _shipped_tables(range(20))
    pooled = tables.groupby(["domain", "advisor"])[["shifted", "published"]].mean()
    error = 100 * (pooled["shifted"] - pooled["published"]).abs()
    assert bool((error < 5).all()), error
    assert error.mean() < 2.0, error
    per_seed = [published_gap(part) for _, part in tables.groupby("seed")]
    assert np.mean(per_seed) < 5, per_seed
