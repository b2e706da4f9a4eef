"""Built-in policies: what each shows, and what that does to a population."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import sim
from plugins.policies import Contrarian, Honest, Random, StrategicInfluencer, Zealot
from sim import build
from sim.contracts import Streams
from sim.config.scenario import scenario_from_dict
from tests.conftest import make_world


def _world(n=40, k=2, b=2, seed=0):
    values = torch.rand((b, n, k), generator=torch.Generator().manual_seed(seed))
    world, state = make_world(values, nx.cycle_graph(n), confidence=0.3)
    state.values = (values * 0.5 + 0.25).clone()  # moved away from the initial values
    return world, state


def test_honest_zealot_random_contrarian_show_what_they_say():
    world, state = _world()
    group = world.groups[0]
    g = Streams.of(1, state.values.shape[0])
    assert torch.equal(Honest(Honest.Params()).express(state, world, group, g), state.values)
    assert torch.equal(Zealot(Zealot.Params()).express(state, world, group, g), world.initial)
    fixed = Zealot(Zealot.Params(values={"d0": 0.9, "d1": 0.1})).express(state, world, group, g)
    assert torch.equal(fixed, torch.tensor([0.9, 0.1]).expand(2, 40, 2))
    assert torch.allclose(Contrarian(Contrarian.Params()).express(state, world, group, g), 1 - state.values)
    half = Contrarian(Contrarian.Params(strength=0.5)).express(state, world, group, g)
    assert torch.allclose(half, torch.full_like(half, 0.5))
    noise = Random(Random.Params()).express(state, world, group, g)
    assert noise.shape == (2, 40, 2) and noise.min() >= 0 and noise.max() <= 1 and noise.std() > 0.2
    jitter = Random(Random.Params(mode="jitter", sigma=0.01)).express(state, world, group, g)
    assert (jitter - state.values).abs().max() < 0.06


def _slow_influencer(state, world, goal, margin):
    """Per influencer, its neighbours' mean and mean bound, then the capped step toward the goal (loops)."""
    out = torch.empty_like(state.values)
    rowptr, col = world.network.rowptr.tolist(), world.network.col.tolist()
    for b in range(world.b):
        for i in range(world.n):
            nbrs = col[rowptr[i]:rowptr[i + 1]]
            centre = state.values[b, nbrs].double().mean(0)
            bound = world.params.confidence.expand(world.b, -1)[b, nbrs].double().mean()
            gap = goal.double() - centre
            dist = gap.norm() / world.k ** 0.5
            reach = margin * bound
            out[b, i] = (centre + gap * (reach / dist if dist > reach else 1.0)).clamp(0, 1).float()
    return out


def test_strategic_influencer_against_a_slow_loop_and_inside_the_bound():
    world, state = _world()
    goal = torch.tensor([1.0, 0.0])
    policy = StrategicInfluencer(StrategicInfluencer.Params(goal=[1.0, 0.0], margin=0.8))
    shown = policy.express(state, world, world.groups[0], Streams.of(0, state.values.shape[0]))
    assert torch.allclose(shown, _slow_influencer(state, world, goal, 0.8), atol=1e-6)


def _influenced_mean(policy):
    data = {"name": "pull", "seed": 3, "values": ["x", "y"],
            "network": {"generator": "erdos_renyi", "params": {"mean_degree": 8}},
            "population": [
                {"name": "people", "count": 300, "init": {"dist": "uniform", "low": 0.3, "high": 0.7},
                 "confidence": 0.2, "rate": 0.3},
                {"name": "agents", "count": 30, "init": {"dist": "constant", "value": 0.5}, "zealots": 1.0,
                 "policy": policy, "confidence": 0.2, "rate": 0.3}],
            "dynamics": ["deffuant"], "metrics": []}
    simulation = build(scenario_from_dict(data), worlds=4)
    simulation.advance(60)
    return simulation.state.values[:, :300].double().mean(dim=(0, 1))


def test_a_strategic_influencer_drags_people_to_its_goal_and_a_blunt_zealot_does_not():
    honest = _influenced_mean("honest")
    strategic = _influenced_mean({"strategic_influencer": {"goal": [0.95, 0.95]}})
    blunt = _influenced_mean({"zealot": {"values": [0.95, 0.95]}})
    assert strategic.min() > honest.max() + 0.1, (strategic, honest)
    assert (blunt - honest).abs().max() < 0.05, "outside everyone's bound, a blunt zealot is ignored"


def test_policy_that_cannot_serve_the_world_is_a_scenario_error(tmp_path):
    data = {"name": "bad", "values": ["x"], "population": [
        {"name": "people", "count": 10},
        {"name": "agents", "count": 2, "policy": {"strategic_influencer": {"goal": 0.9, "targets": "peeple"}}}]}
    with pytest.raises(sim.ScenarioError, match=r"population\[1\].policy: strategic_influencer: targets must be "
                                                r"'neighbours' or a group name \(people, agents\), got 'peeple'"):
        build(scenario_from_dict(data))
