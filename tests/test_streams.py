"""Random streams: worlds are functions of their stream, twins share draws, streams look independent,
and the compiled kernels hash exactly what ``sim.core.rng.Streams`` draws."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import sim
from plugins.dynamics import _inline_streams as streams_kernels
from sim.contracts import Streams
from sim.core.rng import GOLDEN, MASK64, mix64


def _scenario(dynamics=None, network=None, count=60, seed=21):
    return sim.scenario_from_dict({
        "name": "streams", "seed": seed, "steps": 1, "values": ["a", "b", "c"],
        "network": network or {"generator": "watts_strogatz", "params": {"k": 6, "p": 0.2}},
        "population": [
            {"name": "people", "count": count, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.6},
             "rate": 0.3},
            {"name": "pushers", "count": 4, "policy": {"zealot": {"values": [0.9, 0.1, 0.5]}}, "confidence": 0.3},
        ],
        "dynamics": dynamics or [{"deffuant": {"pairs_per_agent": 1.5}}, {"algorithmic_bias": {"gamma": 1.0}},
                                 {"noise": {"sigma": 0.01, "share": 0.5}}],
        "metrics": [],
    })


def test_world_b_of_a_batch_of_eight_is_the_single_world_run_of_stream_b():
    batch = sim.build(_scenario(), worlds=8)
    reversed_batch = sim.build(_scenario(), streams=list(range(7, -1, -1)))
    batch.advance(6)
    reversed_batch.advance(6)
    for b in range(8):
        alone = sim.build(_scenario(), streams=[b])
        alone.advance(6)
        assert torch.equal(batch.state.values[b], alone.state.values[0]), f"world {b}"
        assert torch.equal(reversed_batch.state.values[7 - b], alone.state.values[0]), f"world {b}, reversed"
    assert len({tuple(batch.state.values[b].flatten().tolist()) for b in range(8)}) == 8


@pytest.mark.parametrize("dynamics", [[{"deffuant": {}}], [{"algorithmic_bias": {"gamma": 2.0}}],
                                      [{"deffuant": {"kernel": "torch"}}]])
def test_twins_that_differ_in_one_agent_agree_where_that_agent_cannot_reach(dynamics):
    # Two components: agents 0-29 and 30-63 (the zealots 60-63 sit in the second).
    first = nx.watts_strogatz_graph(30, 4, 0.3, seed=1)
    second = nx.relabel_nodes(nx.watts_strogatz_graph(34, 4, 0.3, seed=2), {i: i + 30 for i in range(34)})
    edges = np.array(list(first.edges()) + list(second.edges()), dtype=np.int64)
    twins = sim.build(_scenario(dynamics), streams=[4, 4], network=edges)
    values = twins.state.values.clone()
    values[1, 45] = 1.0 - values[1, 45]  # one agent of the second component starts elsewhere in one twin
    twins.state.values = values
    twins.advance(8)
    after = twins.state.values
    assert torch.equal(after[0, :30], after[1, :30])
    assert not torch.equal(after[0, 30:], after[1, 30:]), "the agent that differs changed nothing"


def _two_components():
    """Agents 0-29 and 30-63 (the zealots 60-63 sit in the second), as an edge list."""
    first = nx.watts_strogatz_graph(30, 4, 0.3, seed=1)
    second = nx.relabel_nodes(nx.watts_strogatz_graph(34, 4, 0.3, seed=2), {i: i + 30 for i in range(34)})
    return np.array(list(first.edges()) + list(second.edges()), dtype=np.int64)


@pytest.mark.parametrize("dynamics", [[{"deffuant": {}}], [{"algorithmic_bias": {"gamma": 2.0}}],
                                      [{"deffuant": {"kernel": "torch"}}],
                                      [{"deffuant": {"pairs_per_agent": 1.5}}, {"algorithmic_bias": {"gamma": 1.0}},
                                       {"noise": {"sigma": 0.01, "share": 0.5}}]])
def test_twins_that_differ_in_one_agents_presence_agree_where_that_agent_cannot_reach(dynamics):
    # Under the default absence rule (aligned) an absent agent's slots are spent where they are: the
    # other component draws the very pairs it draws when the agent is there.
    twins = sim.build(_scenario(dynamics), streams=[4, 4], network=_two_components())
    twins.state.active[1, 45] = False  # one agent of the second component is absent in one twin
    twins.advance(8)
    after = twins.state.values
    assert torch.equal(after[0, :30], after[1, :30])
    assert not torch.equal(after[0, 30:], after[1, 30:]), "the agent's absence changed nothing"


def test_under_the_rebuilt_rule_one_agents_absence_moves_every_draw():
    # The control: ranks among the active agents shift, so the unreachable component diverges too.
    dynamics = [{"deffuant": {"absence": "rebuilt"}}]
    twins = sim.build(_scenario(dynamics), streams=[4, 4], network=_two_components())
    twins.state.active[1, 45] = False
    twins.advance(8)
    assert not torch.equal(twins.state.values[0, :30], twins.state.values[1, :30])


def test_under_aligned_absence_a_present_agent_interacts_at_its_rate_without_the_absent_ones():
    # A masked world (agents 40-59 absent) against the world built on the 40 others' induced graph,
    # over 1500 worlds (seeds x streams): each present agent's mean number of interactions per step
    # (as focal agent or partner) must agree. Spending the absent agents' slots without drawing
    # N / m = 1.5 times as many slots would cut it by a third; giving them to the others would raise it.
    from sim.core.pairing import pair_counts, sample_pairs
    from sim.core.network import edges_to_network

    n, m, per_agent = 60, 40, 1.0
    graph = nx.erdos_renyi_graph(n, 0.15, seed=3)
    full, induced = edges_to_network(n, graph), edges_to_network(m, graph.subgraph(range(m)))
    per_seed = 300
    active = torch.ones((per_seed, n), dtype=torch.bool)
    active[:, m:] = False

    def interactions(focal, partner, size):
        met = partner >= 0
        counts = torch.zeros((focal.shape[0], size), dtype=torch.float64)
        ones = torch.ones_like(focal, dtype=torch.float64)
        counts.scatter_add_(1, focal.clamp_min(0), torch.where(met, ones, 0.0))
        counts.scatter_add_(1, partner.clamp_min(0), torch.where(met, ones, 0.0))
        return counts

    masked, alone = [], []
    for seed in range(5):
        rng = Streams.of(seed, per_seed).at(seed)
        count, used = pair_counts(per_agent, n, active, "aligned")
        assert used.tolist() == [count] * per_seed
        focal, partner = sample_pairs(full, count, rng, "deffuant", active, used, "aligned")
        assert not active.gather(1, focal.clamp_min(0))[focal >= 0].logical_not().any(), "an absent focal agent"
        masked.append(interactions(focal, partner, n)[:, :m])
        other = Streams.of(100 + seed, per_seed)
        focal, partner = sample_pairs(induced, pair_counts(per_agent, m)[0], other, "deffuant")
        alone.append(interactions(focal, partner, m))
    a, c = torch.cat(masked).numpy(), torch.cat(alone).numpy()
    se = np.sqrt(a.var(0, ddof=1) / len(a) + c.var(0, ddof=1) / len(c))
    z = (a.mean(0) - c.mean(0)) / se
    assert np.abs(z).max() < 4.5, (np.abs(z).max(), a.mean(), c.mean())  # 40 agents: |z| > 4.5 has p ~ 3e-4
    overall = a.sum(1).mean() - c.sum(1).mean()
    overall_se = np.sqrt(a.sum(1).var(ddof=1) / len(a) + c.sum(1).var(ddof=1) / len(c))
    assert abs(overall) < 4 * overall_se, (a.sum(1).mean(), c.sum(1).mean(), overall_se)
    assert c.sum(1).mean() / 3 > 4 * overall_se, "the test could not tell a change of a third in the rate"


def test_draws_of_a_hundred_streams_look_independent():
    rng = Streams.of(12345, 100).at(3)
    u = rng.uniform("independence", (100, 20_000), torch.float64).numpy()
    corr = np.corrcoef(u)
    off = corr[~np.eye(100, dtype=bool)]
    # 4950 pairs, each correlation ~ N(0, 1/20000): the largest |r| is about 4 sigma = 0.028
    assert np.abs(off).max() < 0.04
    # pairs of draws (stream b, stream b + 1) and (step t, step t + 1) fall evenly in a 10 x 10 grid
    later = Streams.of(12345, 100).at(4).uniform("independence", (100, 20_000), torch.float64).numpy()
    for a, c in ((u[:-1], u[1:]), (u, later), (u[:, :-1], u[:, 1:])):
        assert _chi_square(a.ravel(), c.ravel()) < 99 + 6 * np.sqrt(2 * 99), "draws are not independent"
    # the statistics do see dependence: a stream that repeats its neighbour's draws fails both
    copied = u.copy()
    copied[1] = copied[0]
    assert np.abs(np.corrcoef(copied)[0, 1]) > 0.9
    assert _chi_square(copied[0], copied[1]) > 1000


def _chi_square(a: np.ndarray, c: np.ndarray, bins: int = 10) -> float:
    """Chi-square (bins^2 - 1 degrees of freedom) of the pairs (a, c) over a bins x bins grid."""
    counts = np.bincount((a * bins).astype(int) * bins + (c * bins).astype(int), minlength=bins * bins)
    expected = len(a) / bins ** 2
    return float(((counts - expected) ** 2 / expected).sum())


def test_streams_differ_by_seed_stream_step_and_purpose():
    base = Streams.of(1, [0, 1]).at(5)
    draws = {
        "base": base.bits("p", (2, 64)),
        "seed": Streams.of(2, [0, 1]).at(5).bits("p", (2, 64)),
        "step": base.at(6).bits("p", (2, 64)),
        "purpose": base.bits("q", (2, 64)),
    }
    assert not torch.equal(draws["base"][0], draws["base"][1])
    for name in ("seed", "step", "purpose"):
        assert (draws[name] != draws["base"]).all(), name


KEYS = [0, 1, -1, 2**63 - 1, -(2**63), 0x9E3779B97F4A7C15 - 2**64, 123456789, -987654321]


def test_the_inline_hash_equals_streams_bits_for_many_keys():
    rng = Streams(7, torch.arange(50) * 1_000_003, torch.arange(50) - 1)
    for purpose in ("deffuant/focal", "deffuant/partner", "x"):
        keys = rng.key(purpose)
        got = streams_kernels.stream_bits(keys.numpy(), 300)
        assert torch.equal(torch.from_numpy(got), rng.bits(purpose, (50, 300)))
    # the kernels' own computation of the keys
    for seed in (0, 7, -3, 2**64 - 1):
        many = Streams(seed, torch.tensor([0, 1, -1, 2**63 - 1, 12]), torch.tensor([-1, 0, 5, 2**40, -(2**63)]))
        for purpose in ("deffuant/focal", "algorithmic_bias/partner"):
            assert torch.equal(torch.from_numpy(streams_kernels.stream_keys(many, purpose)), many.key(purpose))
    # hand-picked keys around the edges of int64, against the Python-int definition
    keys = np.array(KEYS, dtype=np.int64)
    got = streams_kernels.stream_bits(keys, 5)
    for b, key in enumerate(KEYS):
        want = [mix64(key + (i + 1) * GOLDEN) for i in range(5)]
        assert [int(v) & MASK64 for v in got[b]] == want


def test_the_inline_uniforms_and_integers_equal_the_streams():
    rng = Streams.of(3, 40).at(9)
    keys = rng.key("integers")
    assert torch.equal(torch.from_numpy(streams_kernels.stream_uniform(keys.numpy(), 500)),
                       rng.uniform("integers", (40, 500), torch.float64))
    high = torch.tensor([1, 2, 3, 7, 10, 1000, 10**6, 2**31 - 1, 2**40 + 3, 5] * 4)
    assert torch.equal(torch.from_numpy(streams_kernels.stream_below(keys.numpy(), high.numpy(), 500)),
                       rng.integers("integers", high[:, None], (40, 500)))
