"""Shared fixtures: small worlds built straight from the contracts, and a scenario writer."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
import torch
import yaml

from sim.core.network import edges_to_network
from sim.contracts import AgentParams, Group, State, World
from sim.core.valuespace import ValueSpace

REPO = Path(__file__).resolve().parent.parent


def make_world(values: torch.Tensor, graph: nx.Graph | None = None, confidence=0.3, rate=0.5, anchoring=0.0,
               zealot=None) -> tuple[World, State]:
    """A one-group world around ``values`` [B, N, K]; parameters are numbers or [B or 1, N] tensors."""
    b, n, k = values.shape
    graph = graph if graph is not None else nx.complete_graph(n)

    def param(v):
        return v.to(torch.float32) if torch.is_tensor(v) else torch.full((1, n), float(v))

    params = AgentParams(confidence=param(confidence), rate=param(rate), anchoring=param(anchoring),
                         zealot=torch.zeros((1, n), dtype=torch.bool) if zealot is None else zealot)
    world = World(space=ValueSpace("test", tuple(f"d{i}" for i in range(k))), groups=(Group("all_", "human", 0, n),),
                  network=edges_to_network(n, graph), params=params, initial=values.clone(),
                  group_index=torch.zeros(n, dtype=torch.int64), honest=torch.ones(n, dtype=torch.bool))
    return world, State(values=values.clone(), active=torch.ones((b, n), dtype=torch.bool))


@pytest.fixture
def write_scenario(tmp_path):
    """Write a scenario mapping (or YAML text) to tmp_path and return its path."""

    def write(data, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def small_scenario(**changes) -> dict:
    data = {
        "name": "small", "seed": 3, "steps": 12, "log_every": 3, "values": ["a", "b"],
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
        "population": [
            {"name": "people", "count": 150, "confidence": 0.3, "rate": 0.3},
            {"name": "stubborn", "count": 30, "init": {"dist": "constant", "value": [0.9, 0.1]},
             "confidence": 0.2, "rate": 0.2, "anchoring": 0.5, "zealots": 0.5},
        ],
        "dynamics": [{"deffuant": {}}, "friedkin_johnsen", {"noise": {"sigma": 0.01}}],
        "metrics": ["mean_values", "drift", "polarization", "clusters", "consensus_time"],
    }
    data.update(changes)
    return data
