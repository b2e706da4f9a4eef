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
SHOPPING = REPO / "scenarios" / "principal_agent_shopping.yaml"
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


def _shop(flags=(), count=60):
    return sim.load_scenario(SHOPPING, [f"population.principals.count={count}", f"population.agents.count={count}",
                                        "protocols.delegation.log_events=false", *flags])


DELEGATION_POINTS = [{"asymmetry": 0.0}, {"asymmetry": 1.0, "audit": 0.4, "noise": 0.05, "conflict": 0.9},
                     {"asymmetry": 0.25, "prior": 0.8, "penalty": 2.0, "budget": 0.4, "price_weight": 1.2}, {},
                     {"asymmetry": 0.75, "monitoring_gain": 0.3, "asymmetry_gain": 1.5, "noise": 0.2,
                      "temperature": 0.5}]


@pytest.mark.parametrize("agent", ["nuanced", "rigid", "scripted"])
def test_a_batch_of_delegation_parameters_per_world_equals_each_world_run_alone(agent, monkeypatch):
    """Every per-world field, noise (Gumbel logs) in some worlds only, a world of the same stream as another."""
    import sim.llm

    flags = [f"protocols.delegation.agent={agent}"] if agent != "scripted" else [
        "protocols.delegation.persona={name: shopping_agent, sampling: {temperature: 0}}"]
    asked, choose = [], sim.llm.choose
    monkeypatch.setattr(sim.llm, "choose",
                        lambda backend, requests: asked.extend(requests) or choose(backend, requests))
    streams = [0, 1, 1, 3, 2]
    batch = sim.build(_shop(flags), streams=streams)
    batch.vary_protocol("delegation", DELEGATION_POINTS)
    batch.advance(4)
    varied = batch.protocols[0][1].params
    assert varied.asymmetry.shape == (5,) and isinstance(varied.items, int)
    if agent == "scripted":  # each world's own budget reaches its agents' prompts
        budgets = {(r.tag["world"], r.messages[1]["content"].split(";")[0]) for r in asked}
        assert budgets == {(b, f"Your client's budget is {0.4 if b == 2 else 0.7:.2f}") for b in range(5)}
    carry = batch.state.protocols["delegation"]
    for world, (stream, point) in enumerate(zip(streams, DELEGATION_POINTS)):
        alone = sim.build(_shop(flags + [f"protocols.delegation.{k}={v}" for k, v in point.items()]),
                          streams=[stream])
        alone.advance(4)
        for key, want in alone.state.protocols["delegation"].items():
            assert torch.equal(carry[key][world].nan_to_num(-9), want[0].nan_to_num(-9)), (world, key)
    assert not torch.equal(carry["overrides"][1], carry["overrides"][2])  # same stream, other parameters


def test_bad_per_world_delegation_parameters_name_the_world_and_field():
    batch = sim.build(_shop(), worlds=2)
    with pytest.raises(ValueError, match=r"protocol 'delegation' parameters of world 1: asymmetry: "
                                         r"must be in \[0, 1\], got 1.5"):
        batch.vary_protocol("delegation", [{}, {"asymmetry": 1.5}])
    with pytest.raises(ValueError, match=r"protocol 'delegation': items cannot vary per world"):
        batch.vary_protocol("delegation", [{"items": 4}, {}])


@pytest.mark.parametrize("agent", ["nuanced", "rigid"])
def test_a_sweep_over_asymmetry_is_one_batch_and_each_point_is_its_own_run(agent, tmp_path):
    """``valuesim sweep ... --grid protocols.delegation.asymmetry=0:1:5``: one batch of 5 x 2 worlds; each point's
    readings are those of ``valuesim run --worlds 2 --set protocols.delegation.asymmetry=...``."""
    scenario, grid = _shop([f"protocols.delegation.agent={agent}"]), ["protocols.delegation.asymmetry=0:1:5"]
    keys = parse_grid(grid, scenario)
    assert keys[0].per_world and keys[0].values == (0.0, 0.25, 0.5, 0.75, 1.0) and len(plan(keys, points(keys))) == 1
    table, _ = read_sweep(sim.open_run(sweep(scenario, grid, seeds=2, out=tmp_path / "sw")))
    final = table[table.step == scenario.spec.steps]
    override = []
    for asymmetry in keys[0].values:
        alone = sim.build(_shop([f"protocols.delegation.agent={agent}",
                                 f"protocols.delegation.asymmetry={asymmetry}"]), worlds=2)
        alone.advance(scenario.spec.steps)
        mine = final[final["protocols.delegation.asymmetry"] == asymmetry]
        for reading in alone.observe():
            got = mine[mine.metric == reading.metric].sort_values("seed")["value"].to_numpy()
            np.testing.assert_array_equal(got, reading.value[:, 0, 0].double().numpy(), err_msg=reading.metric)
        override.append(mine[mine.metric == "delegation.override"]["value"].mean())
    if agent == "nuanced":
        assert override == sorted(override) and override[-1] > override[0] + 0.08
    else:
        assert len(set(override)) == 1


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
