"""Populations: initial values and per-agent parameters as the scenario asks, seeded and per world."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import sim
from sim import build
from sim.config.scenario import scenario_from_dict
from tests.conftest import REPO


def _build(groups, values=("a", "b"), worlds=2, base_dir=".", network=None, **extra):
    data = {"name": "pop", "seed": 5, "values": values if isinstance(values, str) else list(values),
            "population": groups,
            "network": network or {"generator": "erdos_renyi", "params": {"mean_degree": 4}},
            "dynamics": ["deffuant", "friedkin_johnsen"], "metrics": [], **extra}
    return build(scenario_from_dict(data, base_dir=base_dir), worlds=worlds)


def test_distributions_have_their_moments_and_groups_their_rows():
    s = _build([
        {"name": "u", "count": 20000, "init": {"dist": "uniform", "low": 0.2, "high": 0.4}},
        {"name": "b", "count": 20000, "init": {"dist": "beta", "a": 2, "b": 5}},
        {"name": "n", "count": 20000, "init": {"dist": "normal", "mean": {"a": 0.3, "b": 0.7}, "std": 0.05}},
        {"name": "c", "count": 10, "init": {"dist": "constant", "value": [0.1, 0.9]}},
    ])
    x = s.world.initial.double()
    assert x[:, :20000].min() >= 0.2 and x[:, :20000].max() < 0.4
    assert abs(x[:, 20000:40000].mean().item() - 2 / 7) < 0.003
    assert abs(x[:, 20000:40000].var().item() - 10 / (49 * 8)) < 0.002
    assert torch.allclose(x[:, 40000:60000].mean(1), torch.tensor([0.3, 0.7], dtype=torch.float64), atol=0.002)
    assert torch.equal(s.world.initial[:, 60000:], torch.tensor([0.1, 0.9]).expand(2, 10, 2))
    assert not torch.equal(x[0], x[1]), "worlds are replicates: their draws differ"
    assert [g.name for g in s.world.groups] == ["u", "b", "n", "c"] and s.world.groups[3].rows == slice(60000, 60010)


def test_parameters_broadcast_when_constant_and_vary_per_world_when_drawn():
    s = _build([{"name": "p", "count": 1000, "confidence": 0.2, "rate": {"dist": "uniform", "low": 0.1, "high": 0.3},
                 "anchoring": {"dist": "normal", "mean": 0.05, "std": 0.2}, "zealots": 0.1}])
    params = s.world.params
    assert params.confidence.shape == (1, 1000) and torch.all(params.confidence == 0.2)
    assert params.rate.shape == (2, 1000) and params.rate.min() >= 0.1 and params.rate.max() < 0.3
    assert params.anchoring.min() >= 0 and params.anchoring.max() <= 1, "normal draws are clipped into range"
    assert params.zealot.sum(1).tolist() == [100, 100] and not torch.equal(params.zealot[0], params.zealot[1])


def test_initial_values_from_a_file_and_from_a_profile(tmp_path):
    table = np.linspace(0, 1, 30).reshape(15, 2)
    import pandas as pd

    pd.DataFrame(table, columns=["a", "b"]).to_csv(tmp_path / "init.csv", index=False)
    s = _build([{"name": "f", "count": 15, "init": {"file": "init.csv"}}], base_dir=tmp_path)
    assert torch.allclose(s.world.initial[0].double(), torch.from_numpy(table), atol=1e-7)
    s = _build([{"name": "t", "count": 4000, "init": {"profile": "traditionalist", "spread": 0.02}}],
               values="schwartz10", base_dir=REPO / "scenarios")
    mean = s.world.initial[0].double().mean(0)
    assert abs(mean[7].item() - 0.85) < 0.005 and abs(mean[1].item() - 0.2) < 0.005


def test_the_network_comes_from_a_file(tmp_path):
    graph = nx.path_graph(12)
    nx.write_edgelist(graph, tmp_path / "g.edgelist", data=False)
    s = _build([{"name": "p", "count": 12}], base_dir=tmp_path,
               network={"generator": "file", "params": {"path": "g.edgelist"}})
    assert s.world.network.num_edges == 11 and s.world.network.degree().tolist() == [1] + [2] * 10 + [1]


def test_same_seed_same_world_and_the_network_is_seeded(tmp_path):
    groups = [{"name": "p", "count": 500, "confidence": {"dist": "beta", "a": 2, "b": 2}}]
    net = {"generator": "watts_strogatz", "params": {"k": 6, "p": 0.3}}
    a, b = _build(groups, network=net), _build(groups, network=net)
    assert torch.equal(a.world.initial, b.world.initial) and torch.equal(a.world.network.col, b.world.network.col)
    c = build(scenario_from_dict({"name": "pop", "seed": 6, "values": ["a", "b"], "population": groups,
                                             "network": net, "metrics": []}), worlds=2)
    assert not torch.equal(a.world.network.col, c.world.network.col)


def test_convergence_stops_the_run_early_and_says_when(tmp_path):
    data = {"name": "conv", "seed": 1, "steps": 500, "values": ["x"], "network": {"generator": "complete"},
            "population": [{"name": "p", "count": 60, "confidence": 1.0}],
            "dynamics": ["hegselmann_krause"], "metrics": ["consensus_time"], "stop": {"tolerance": 1e-7}}
    path = sim.run(scenario_from_dict(data), runs_dir=tmp_path)
    view = sim.open_run(path)
    last = view.manifest["last_step"]
    assert last < 10, "HK with epsilon 1 on a complete graph settles in a couple of steps"
    assert [e["event"] for e in view.events()][-2:] == ["converged", "complete"]
    assert view.metrics()["step"].max() == last


@pytest.mark.parametrize("distance", ["l2", "linf", "per_dimension"])
def test_every_distance_runs_end_to_end(tmp_path, distance):
    data = {"name": "d", "steps": 3, "values": ["x", "y"], "population": [{"name": "p", "count": 50}],
            "dynamics": [{"deffuant": {"distance": distance, "repulsion": 0.9}}, {"hegselmann_krause":
                                                                                  {"distance": distance}}]}
    assert sim.open_run(sim.run(scenario_from_dict(data), runs_dir=tmp_path)).status == "complete"
