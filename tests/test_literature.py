"""Known results of the literature, reproduced through the scenario -> engine -> metric pipeline.

Deffuant et al. (2000), Lorenz (2007): uniform opinions on a complete graph end
in about floor(1/(2 epsilon)) clusters, and in consensus for epsilon >= 0.5.
Hegselmann & Krause (2002): consensus above a threshold near epsilon = 0.2.
Eight seeds run as eight worlds of one batch.
"""

from __future__ import annotations

import pytest

from sim import build
from sim.config.scenario import scenario_from_dict


def _final_clusters(dynamics, confidence, steps, n=400, worlds=8, seed=1):
    group = {"name": "people", "count": n, "confidence": confidence}
    if dynamics == "deffuant":
        group["rate"] = 0.5
    scenario = scenario_from_dict({
        "name": "lit", "seed": seed, "values": ["opinion"], "network": {"generator": "complete"},
        "population": [group],
        "dynamics": [dynamics], "metrics": [{"clusters": {"threshold": 0.02, "min_size": 0.05}}],
    })
    simulation = build(scenario, worlds=worlds)
    simulation.advance(steps)
    (reading,) = [r for r in simulation.observe() if r.metric == "clusters"]
    return sorted(reading.value[:, -1, 0].tolist())


@pytest.mark.parametrize("confidence", [0.1, 0.15, 0.2, 0.25])
def test_deffuant_ends_in_about_one_over_two_epsilon_clusters(confidence):
    counts = _final_clusters("deffuant", confidence, steps=300)
    expected = int(1 / (2 * confidence))
    assert all(abs(c - expected) <= 1 for c in counts), counts
    # The median is the textbook count or one below: at epsilon = 0.1 and N = 400, four major clusters
    # come out more often than five (48 seeds: 29 vs 17 with valuesim's streams, 28 vs 19 with torch's
    # generator driving the same kernel), as the neighbouring clusters of a finite population merge.
    assert expected - 1 <= counts[len(counts) // 2] <= expected, counts


@pytest.mark.parametrize("confidence", [0.5, 0.7])
def test_deffuant_reaches_consensus_from_epsilon_one_half(confidence):
    assert _final_clusters("deffuant", confidence, steps=100) == [1.0] * 8


def test_hegselmann_krause_consensus_threshold_near_point_two():
    assert _final_clusters("hegselmann_krause", 0.3, steps=40, n=300) == [1.0] * 8
    assert min(_final_clusters("hegselmann_krause", 0.15, steps=40, n=300)) >= 2
