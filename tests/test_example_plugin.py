"""The example plugin package (plugins/examples/valuesim-example): bridge_builder against a reference loop.

`make test` installs the package into the venv (its entry point is what
scenarios/bridge_builders.yaml names); its own tests live beside it.
"""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import sim
from sim import registry
from sim.checks import check_policy
from sim.contracts import Group, Streams
from tests.conftest import REPO, make_world

try:
    from valuesim_example import BridgeBuilder
except ImportError:  # pragma: no cover - a venv made before the example existed
    pytest.fail("the example plugin package is not installed; run `make test`, or: .venv/bin/python -m pip install "
                "--no-deps --no-build-isolation -e plugins/examples/valuesim-example", pytrace=False)


def reference_express(values: torch.Tensor, active: torch.Tensor, graph: nx.Graph, group: Group,
                      weight: float) -> torch.Tensor:
    """The slow, obviously correct version: per world, per agent, the mean of its active neighbours' values."""
    out = values[:, group.rows].double().clone()
    for world in range(values.shape[0]):
        for local, agent in enumerate(range(group.start, group.stop)):
            neighbours = [j for j in graph.neighbors(agent) if active[world, j]]
            if neighbours:
                own = values[world, agent].double()
                mean = values[world, neighbours].double().mean(0)
                out[world, local] = own + weight * (mean - own)
    return out


def small_world(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    graph = nx.gnp_random_graph(30, 0.12, seed=seed)
    graph.remove_edges_from(list(graph.edges(7)))  # agent 7, inside the group, is isolated
    values = torch.rand((3, 30, 4), generator=generator)
    world, state = make_world(values, graph)
    state.active[1, ::4] = False  # world 1: some agents are absent
    state.active[2, 10:16] = False  # world 2: some of the group are absent
    return world, state, graph


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("rows", [(5, 20), (0, 30), (29, 30)])
def test_bridge_builder_matches_the_reference_loop(weight, rows):
    world, state, graph = small_world()
    group = Group("bridges", "human", *rows)
    before = state.values.clone()
    shown = BridgeBuilder(BridgeBuilder.Params(weight=weight)).express(state, world, group, Streams.of(0, state.values.shape[0]))
    expected = reference_express(state.values, state.active, graph, group, weight)
    assert shown.shape == (3, group.size, 4) and shown.dtype == state.values.dtype
    torch.testing.assert_close(shown.double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(state.values, before)


def test_weight_zero_and_isolated_agents_show_their_own_values_exactly():
    world, state, _ = small_world()
    group = Group("bridges", "human", 5, 20)
    shown = BridgeBuilder(BridgeBuilder.Params(weight=0.0)).express(state, world, group, Streams.of(0, state.values.shape[0]))
    assert torch.equal(shown, state.values[:, group.rows])
    shown = BridgeBuilder(BridgeBuilder.Params(weight=1.0)).express(state, world, group, Streams.of(0, state.values.shape[0]))
    assert torch.equal(shown[:, 7 - 5], state.values[:, 7])


def test_bridge_builder_is_registered_and_keeps_its_contract():
    assert registry.get("policies", "bridge_builder") is BridgeBuilder
    check_policy(BridgeBuilder, {"weight": 0.7})


def test_bridge_builders_scenario_runs(tmp_path):
    view = sim.open_run(sim.run(REPO / "scenarios" / "bridge_builders.yaml", runs_dir=tmp_path))
    assert view.status == "complete"
    assert view.manifest["steps"] == 50 and view.metrics()["step"].max() == 50
    assert view.scenario["population"][1]["policy"] == {"bridge_builder": {"weight": 0.7}}
