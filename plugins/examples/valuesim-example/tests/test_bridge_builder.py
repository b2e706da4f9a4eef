"""The bridge_builder policy: valuesim's contract check, a worked example, and a scenario.

Run with ``pytest`` here after ``pip install -e .`` (the scenario finds the
policy through the package's entry point).
"""

import numpy as np
import pytest
import torch

import sim
from sim.checks import check_policy
from sim.core.network import edges_to_network
from sim.contracts import AgentParams, Group, State, World
from sim.core.valuespace import ValueSpace

from valuesim_example import BridgeBuilder


def line_world(values: list[float], edges: list[tuple[int, int]]) -> tuple[World, State]:
    """One world, one value dimension, agents linked by ``edges``."""
    n = len(values)
    x = torch.tensor(values, dtype=torch.float32).reshape(1, n, 1)
    params = AgentParams(*(torch.full((1, n), 0.5) for _ in range(3)), zealot=torch.zeros((1, n), dtype=torch.bool))
    world = World(space=ValueSpace("one", ("v",)), groups=(Group("all", "human", 0, n),),
                  network=edges_to_network(n, np.array(edges, dtype=np.int64).reshape(-1, 2)), params=params,
                  initial=x.clone(), group_index=torch.zeros(n, dtype=torch.int64),
                  honest=torch.zeros(n, dtype=torch.bool))
    return world, State(values=x.clone(), active=torch.ones((1, n), dtype=torch.bool))


def test_keeps_the_policy_contract():
    check_policy(BridgeBuilder)
    check_policy(BridgeBuilder, {"weight": 1.0})


def test_a_worked_example():
    # 0 - 1 - 2 in a line, and 3 alone.
    world, state = line_world([0.0, 0.6, 1.0, 0.2], [(0, 1), (1, 2)])
    policy = BridgeBuilder(BridgeBuilder.Params(weight=0.5))
    shown = policy.express(state, world, world.groups[0], torch.Generator())
    # 0 meets the midpoint with 1's 0.6; 1 with the mean 0.5 of 0 and 2; 2 with 0.6; 3 has no one.
    assert shown.flatten().tolist() == pytest.approx([0.3, 0.55, 0.8, 0.2])


def test_inactive_neighbours_do_not_count():
    world, state = line_world([0.0, 0.6, 1.0, 0.2], [(0, 1), (1, 2)])
    state.active[0, 2] = False
    shown = BridgeBuilder(BridgeBuilder.Params(weight=1.0)).express(state, world, world.groups[0], torch.Generator())
    assert shown.flatten().tolist() == pytest.approx([0.6, 0.0, 0.6, 0.2])


def test_weight_is_a_share():
    with pytest.raises(ValueError):
        BridgeBuilder.Params(weight=1.5)


def test_runs_in_a_scenario(tmp_path):
    scenario = sim.scenario_from_dict({
        "name": "bridge_demo", "seed": 1, "steps": 10, "log_every": 5, "values": ["economic", "social"],
        "network": {"generator": "watts_strogatz", "params": {"k": 6, "p": 0.2}},
        "population": [
            {"name": "people", "count": 200, "confidence": 0.2, "rate": 0.3},
            {"name": "bridges", "count": 10, "policy": {"bridge_builder": {"weight": 0.7}}},
        ],
        "dynamics": ["deffuant"],
        "metrics": ["mean_values"],
    })
    run = sim.open_run(sim.run(scenario, runs_dir=tmp_path))
    assert run.status == "complete"
    assert set(run.metrics()["group"]) >= {"people", "bridges"}
