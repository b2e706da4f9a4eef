"""The fast kernels against slow reference loops fed the same draws, and the models' invariants."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from plugins.dynamics.pairwise import AlgorithmicBias, Deffuant
from plugins.dynamics.pointwise import FriedkinJohnsen, Noise
from plugins.dynamics.reference import (
    algorithmic_bias_reference, deffuant_reference, hegselmann_krause_reference,
)
from plugins.dynamics.synchronous import HegselmannKrause
from sim.contracts import Streams
from sim.core.pairing import rounds, sample_pairs
from tests.conftest import make_world

DISTANCES = ["l2", "linf", "per_dimension"]


def _hetero(b, n, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand((b, n), generator=g)


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("repulsion", [None, 0.6])
@pytest.mark.parametrize("b", [1, 3])  # one world: rounds of disjoint pairs in parallel; several: worlds in parallel
def test_deffuant_kernels_equal_the_sequential_reference(kernel, distance, repulsion, b):
    n, k = 60, 3
    g = torch.Generator().manual_seed(7)
    values = torch.rand((b, n, k), generator=g)
    graph = nx.watts_strogatz_graph(n, 6, 0.3, seed=1)
    graph.add_node(n - 1)  # keep an isolated-prone shape: draws on degree-0 agents must be spent, not crash
    world, state = make_world(values, graph, confidence=_hetero(b, n, 0.2, 0.5, 1), rate=_hetero(b, n, 0.1, 0.5, 2))
    dyn = Deffuant(Deffuant.Params(distance=distance, kernel=kernel, repulsion=repulsion))
    focal, partner = sample_pairs(world.network, 5 * n, Streams.of(7, b), "test")
    got = dyn.apply_pairs(state.values, state.values, world, focal, partner)
    for w in range(b):
        want = deffuant_reference(values[w].numpy(), focal[w].numpy(), partner[w].numpy(),
                                  world.params.confidence[w].numpy(), world.params.rate[w].numpy(), distance,
                                  repulsion)
        np.testing.assert_allclose(got[w].numpy(), want, rtol=0, atol=1e-6)
    assert not torch.equal(got, values), "nothing moved: the test would not see a broken kernel"


def test_numba_and_torch_kernels_agree_bit_for_bit():
    b, n, k = 2, 500, 10
    g = torch.Generator().manual_seed(3)
    values = torch.rand((b, n, k), generator=g)
    world, state = make_world(values, nx.erdos_renyi_graph(n, 0.02, seed=2), confidence=0.35, rate=0.4)
    focal, partner = sample_pairs(world.network, 3 * n, Streams.of(3, b), "test")
    a = Deffuant(Deffuant.Params(kernel="numba")).apply_pairs(values, values, world, focal, partner)
    c = Deffuant(Deffuant.Params(kernel="torch")).apply_pairs(values, values, world, focal, partner)
    assert torch.equal(a, c)


def test_rounds_are_disjoint_and_keep_the_order_of_shared_agents():
    g = torch.Generator().manual_seed(0)
    n, m = 40, 400
    focal = torch.randint(n, (2, m), generator=g)
    partner = (focal + 1 + torch.randint(n - 1, (2, m), generator=g)) % n
    partner[0, 5] = -1
    last_round = {}
    seen = 0
    for r, (world, position) in enumerate(rounds(focal, partner, n)):
        agents = torch.stack([world * n + focal[world, position], world * n + partner[world, position]]).view(-1)
        assert agents.unique().numel() == agents.numel(), "an agent appears twice in one round"
        for w, p in zip(world.tolist(), position.tolist()):
            for a in (focal[w, p].item(), partner[w, p].item()):
                assert last_round.get((w, a), (-1, -1))[1] < p
                last_round[(w, a)] = (r, p)
        seen += position.numel()
    assert seen == 2 * m - 1


def test_sample_pairs_draws_uniform_neighbours_like_the_sequential_model():
    # A star: the hub's partner must be uniform over its leaves; a leaf always meets the hub.
    n = 6
    world, _ = make_world(torch.zeros(1, n, 1), nx.star_graph(n - 1))
    focal, partner = sample_pairs(world.network, 60000, Streams.of(1, 1), "test")
    hub = focal[0] == 0
    counts = torch.bincount(partner[0][hub], minlength=n)[1:].double()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.02
    assert (partner[0][~hub] == 0).all()
    assert abs(hub.double().mean().item() - 1 / n) < 0.01


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("distance", DISTANCES)
def test_hegselmann_krause_kernels_equal_the_reference(kernel, distance):
    b, n, k = 2, 80, 2
    g = torch.Generator().manual_seed(11)
    values = torch.rand((b, n, k), generator=g)
    graph = nx.erdos_renyi_graph(n, 0.1, seed=4)
    world, state = make_world(values, graph, confidence=_hetero(b, n, 0.1, 0.4, 5))
    got = HegselmannKrause(HegselmannKrause.Params(distance=distance, kernel=kernel)).apply(
        values, values, state, world, Streams.of(11, b))
    neighbours = [sorted(graph.neighbors(i)) for i in range(n)]
    for w in range(b):
        want = hegselmann_krause_reference(values[w].numpy(), neighbours, world.params.confidence[w].numpy(), distance)
        np.testing.assert_allclose(got[w].numpy(), want, rtol=0, atol=1e-6)


def test_algorithmic_bias_equals_the_reference_and_gamma_zero_is_uniform():
    b, n, k = 2, 50, 2
    g = torch.Generator().manual_seed(5)
    values = torch.rand((b, n, k), generator=g)
    graph = nx.erdos_renyi_graph(n, 0.2, seed=3)
    world, state = make_world(values, graph, confidence=0.4, rate=0.3)
    focal = torch.randint(n, (b, 4 * n), generator=g)
    u = torch.rand((b, 4 * n), generator=g, dtype=torch.float64)
    dyn = AlgorithmicBias(AlgorithmicBias.Params(gamma=2.0))
    got = dyn.apply_draws(values, values, state, world, focal, u)
    net = world.network
    for w in range(b):
        want = algorithmic_bias_reference(values[w].numpy(), net.rowptr.numpy(), net.col.numpy(), focal[w].numpy(),
                                          u[w].numpy(), np.full(n, 0.4, np.float32), np.full(n, 0.3, np.float32), 2.0)
        np.testing.assert_allclose(got[w].numpy(), want, rtol=0, atol=1e-6)


def test_deffuant_with_equal_rates_conserves_the_mean_and_stays_in_the_unit_cube():
    b, n, k = 4, 400, 3
    g = torch.Generator().manual_seed(2)
    values = torch.rand((b, n, k), generator=g)
    world, state = make_world(values, nx.erdos_renyi_graph(n, 0.05, seed=8), confidence=0.5, rate=0.5)
    dyn = Deffuant(Deffuant.Params())
    x = values
    for step in range(20):
        x = dyn.apply(x, x, state, world, Streams.of(2, b).at(step))
    assert torch.allclose(x.double().mean(1), values.double().mean(1), atol=1e-5)
    assert x.min() >= 0 and x.max() <= 1
    assert x.std(1).mean() < values.std(1).mean() * 0.5, "opinions should have contracted"


def test_zealots_never_move_even_within_a_step():
    b, n = 1, 30
    values = torch.rand((b, n, 1), generator=torch.Generator().manual_seed(0))
    zealot = torch.zeros((1, n), dtype=torch.bool)
    zealot[0, :5] = True
    world, state = make_world(values, confidence=1.0, rate=0.5, zealot=zealot)
    x = Deffuant(Deffuant.Params()).apply(values, values, state, world, Streams.of(1, b))
    assert torch.equal(x[0, :5], values[0, :5])
    assert not torch.equal(x[0, 5:], values[0, 5:])


def test_friedkin_johnsen_pulls_toward_initial_values():
    values = torch.full((1, 4, 2), 0.2)
    world, state = make_world(values, anchoring=torch.tensor([[0.0, 0.5, 1.0, 0.25]]))
    moved = torch.full((1, 4, 2), 1.0)
    out = FriedkinJohnsen(FriedkinJohnsen.Params()).apply(moved, moved, state, world, Streams.of(0, moved.shape[0]))
    assert torch.allclose(out[0, :, 0], torch.tensor([1.0, 0.6, 0.2, 0.8]))


def test_noise_has_the_asked_spread_and_stays_in_bounds():
    values = torch.full((2, 5000, 2), 0.5)
    world, state = make_world(values, graph=nx.empty_graph(5000))
    out = Noise(Noise.Params(sigma=0.05)).apply(values, values, state, world, Streams.of(0, values.shape[0]))
    assert abs(out.std().item() - 0.05) < 0.002
    edge = Noise(Noise.Params(sigma=1.0)).apply(values, values, state, world, Streams.of(0, values.shape[0]))
    assert edge.min() >= 0 and edge.max() <= 1
