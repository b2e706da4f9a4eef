"""The fast kernels against slow reference loops fed the same draws, and the models' invariants."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
import torch

from plugins.dynamics import _numba
from plugins.dynamics.pairwise import AlgorithmicBias, Deffuant
from plugins.dynamics.pointwise import FriedkinJohnsen, Noise
from plugins.dynamics.reference import (
    algorithmic_bias_reference, deffuant_reference, hegselmann_krause_reference, pairs_reference,
)
from plugins.dynamics.synchronous import HegselmannKrause
from sim.contracts import Streams
from sim.core.pairing import focal_agents, pair_counts, rounds, sample_pairs
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


@pytest.mark.parametrize("masked,rule", [(False, "aligned"), (True, "aligned"), (True, "rebuilt")])
def test_algorithmic_bias_equals_the_reference_fed_the_streams_draws(masked, rule):
    b, n, k = 2, 50, 2
    g = torch.Generator().manual_seed(5)
    values = torch.rand((b, n, k), generator=g)
    graph = nx.erdos_renyi_graph(n, 0.2, seed=3)
    world, state = make_world(values, graph, confidence=0.4, rate=0.3)
    if masked:
        state.active[0, ::4] = False
        state.active[1, 10:30] = False
    rng = Streams.of(5, b).at(3)
    dyn = AlgorithmicBias(AlgorithmicBias.Params(gamma=2.0, pairs_per_agent=4.0, absence=rule))
    got = dyn.apply(values, values, state, world, rng)
    count, used = pair_counts(4.0, n, state.active if masked else None, rule)
    focal = focal_agents(n, count, rng, "algorithmic_bias/focal", state.active if masked else None, used, rule)
    u = rng.uniform("algorithmic_bias/partner", (b, count), torch.float64)
    net = world.network
    for w in range(b):
        want = algorithmic_bias_reference(values[w].numpy(), net.rowptr.numpy(), net.col.numpy(), focal[w].numpy(),
                                          u[w].numpy(), np.full(n, 0.4, np.float32), np.full(n, 0.3, np.float32), 2.0,
                                          active=state.active[w].numpy())
        np.testing.assert_allclose(got[w].numpy(), want, rtol=0, atol=1e-6)
    assert torch.equal(got[~state.active], values[~state.active]), "an absent agent moved"
    assert not torch.equal(got, values)


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


# ---------------------------------------------------------------- draws hashed inside the kernels; absent agents


def _masked_world(b=3, n=90, k=3, seed=0, masked=True, fixed=False):
    """A world with isolated agents, an agent whose neighbours are all absent, heterogeneous parameters."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand((b, n, k), generator=g)
    graph = nx.watts_strogatz_graph(n - 3, 6, 0.3, seed=seed)
    graph.add_nodes_from([n - 3, n - 2])  # isolated
    graph.add_edge(n - 1, 0)  # agent n - 1's only neighbour is 0, absent in world 0
    world, state = make_world(values, graph, confidence=_hetero(b, n, 0.2, 0.6, seed + 1),
                              rate=_hetero(b, n, 0.1, 0.5, seed + 2))
    if masked:
        state.active[0, 0] = False
        state.active[0, ::7] = False
        state.active[1, 30:60] = False
        if b > 2:
            state.active[2] = False  # nobody left
    if fixed:  # some agents show a policy's vector instead of their values
        honest = torch.ones(n, dtype=torch.bool)
        honest[::5] = False
        world = replace(world, honest=honest)
    return world, state


def _expressed(state, seed=9):
    return torch.rand(state.values.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("masked,rule", [(False, "aligned"), (True, "aligned"), (True, "rebuilt")])
def test_kernels_draw_the_pairs_of_sample_pairs_and_of_the_reference(masked, rule):
    world, state = _masked_world(masked=masked)
    b, n = state.active.shape
    rng = Streams.of(4, [0, 5, 9]).at(2)
    active = state.active if masked else None
    count, used = pair_counts(1.5, n, active, rule)
    used_np = (torch.full((b,), count) if used is None else used).numpy()
    net = world.network
    focal, partner = sample_pairs(net, count, rng, "deffuant", active, used, rule)
    got_focal, got_partner = _numba.draw_pairs(net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(),
                                               rng.key("deffuant/focal").numpy(),
                                               rng.key("deffuant/partner").numpy(), count, used_np,
                                               state.active.numpy(), masked, rule == "aligned")
    np.testing.assert_array_equal(got_focal, focal.numpy())
    np.testing.assert_array_equal(got_partner, partner.numpy())
    u_focal = rng.uniform("deffuant/focal", (b, count), torch.float64)
    u_partner = rng.uniform("deffuant/partner", (b, count), torch.float64)
    for w in range(b):
        want = pairs_reference(net.rowptr.numpy(), net.col.numpy(), state.active[w].numpy(), u_focal[w].numpy(),
                               u_partner[w].numpy(), int(used_np[w]), rule)
        np.testing.assert_array_equal(focal[w].numpy(), want[0])
        np.testing.assert_array_equal(partner[w].numpy(), want[1])
    drawn = partner >= 0
    assert drawn.any()
    assert state.active.gather(1, focal.clamp_min(0))[focal >= 0].all(), "an absent agent was a focal agent"
    assert state.active.gather(1, partner.clamp_min(0))[drawn].all(), "an absent agent was a partner"
    if masked and rule == "rebuilt":
        m = state.active.sum(1)
        assert used.tolist() == [round(1.5 * int(v)) if v else 0 for v in m], "the rate per agent changed"
    if masked and rule == "aligned":
        # every slot is used; the focal agent is the unmasked draw, kept where it is present
        assert used.tolist() == [count] * b
        unmasked = focal_agents(n, count, rng, "deffuant/focal")
        assert torch.equal(focal, torch.where(state.active.gather(1, unmasked), unmasked, -1))
        assert ((focal == -1) & (partner == -1)).any(1)[:2].all(), "no slot of an absent agent was spent"
    if masked:
        assert (focal[2] == -1).all() and (partner[0][focal[0] == n - 1] == -1).all()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("masked,fixed,repulsion", [(False, False, None), (True, False, 0.7), (True, True, None),
                                                    (False, True, 0.7)])
@pytest.mark.parametrize("rule", ["aligned", "rebuilt"])
def test_the_compiled_step_equals_the_torch_step_and_the_reference_bit_for_bit(distance, masked, fixed, repulsion,
                                                                                rule):
    world, state = _masked_world(masked=masked, fixed=fixed)
    b, n = state.active.shape
    expressed = _expressed(state) if fixed else state.values
    rng = Streams.of(8, b).at(5)
    params = dict(distance=distance, repulsion=repulsion, pairs_per_agent=3.0, absence=rule)
    got = Deffuant(Deffuant.Params(kernel="numba", **params)).apply(state.values, expressed, state, world, rng)
    torch_step = Deffuant(Deffuant.Params(kernel="torch", **params)).apply(state.values, expressed, state, world, rng)
    assert torch.equal(got, torch_step)
    count, used = pair_counts(3.0, n, state.active if masked else None, rule)
    focal, partner = sample_pairs(world.network, count, rng, "deffuant", state.active if masked else None, used, rule)
    for w in range(b):
        want = deffuant_reference(state.values[w].numpy(), focal[w].numpy(), partner[w].numpy(),
                                  world.params.confidence[w].numpy(), world.params.rate[w].numpy(), distance,
                                  repulsion, shown=expressed[w].numpy(), fixed=(~world.honest).expand(b, n)[w].numpy())
        np.testing.assert_array_equal(got[w].numpy(), want)
    assert torch.equal(got[~state.active], state.values[~state.active]), "an absent agent moved"
    assert not torch.equal(got, state.values)


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("rule", ["aligned", "rebuilt"])
def test_one_world_on_two_threads_equals_one_thread(monkeypatch, pipeline, b, rule):
    # small chunks, so that the drawing thread hands over many chunks and the last one is short
    monkeypatch.setattr(_numba, "PIPELINE_CHUNK", 1000)
    n, k = 2000, 4
    values = torch.rand((b, n, k), generator=torch.Generator().manual_seed(1))
    world, state = make_world(values, nx.erdos_renyi_graph(n, 0.005, seed=2), confidence=_hetero(b, n, 0.2, 0.5, 3),
                              rate=0.3)
    state.active[:, 100:150] = False
    count, used = pair_counts(2.3, n, state.active, rule)
    rng = Streams.of(2, b).at(1)
    net = world.network
    x = torch.full_like(values, np.nan)
    _numba.deffuant(values.numpy(), x.numpy(), values.numpy(), torch.zeros((1, n), dtype=torch.bool).numpy(),
                    net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(), rng.key("deffuant/focal").numpy(), rng.key("deffuant/partner").numpy(),
                    used.numpy(), state.active.numpy(), True, world.params.confidence.numpy(),
                    world.params.rate.numpy(), 0, np.inf, pipeline=pipeline, aligned=rule == "aligned")
    focal, partner = sample_pairs(net, count, rng, "deffuant", state.active, used, rule)
    want = Deffuant(Deffuant.Params(kernel="torch")).apply_pairs(values, values, world, focal, partner)
    assert torch.equal(x, want)


def _two_group_scenario(dynamics, network, masked_last=True, seed=11):
    people = {"name": "people", "count": 40, "init": {"dist": "uniform", "low": 0, "high": 1},
              "confidence": {"dist": "uniform", "low": 0.2, "high": 0.5}, "rate": 0.3}
    others = {"name": "others", "count": 15, "init": {"dist": "beta", "a": 2, "b": 5}, "confidence": 0.4, "rate": 0.2}
    groups = [people, others] if masked_last else [others, people]
    return {"name": "absent", "seed": seed, "steps": 1, "values": ["a", "b"], "network": network,
            "population": groups, "dynamics": [dynamics], "metrics": []}


@pytest.mark.parametrize("dynamics", [{"deffuant": {"pairs_per_agent": 1.3, "absence": "rebuilt"}},
                                      {"algorithmic_bias": {"gamma": 1.5, "absence": "rebuilt"}}])
def test_a_world_without_its_last_group_is_the_scenario_rebuilt_without_it(dynamics):
    from sim import build, scenario_from_dict

    data = _two_group_scenario(dynamics, {"generator": "complete"})
    masked = build(scenario_from_dict(data), streams=[3, 3])
    masked.state.active[1, 40:] = False
    alone = dict(data, population=data["population"][:1])
    rebuilt = build(scenario_from_dict(alone), streams=[3])
    assert torch.equal(masked.state.values[1, :40], rebuilt.state.values[0])  # populations are drawn per group
    masked.advance(6)
    rebuilt.advance(6)
    assert torch.equal(masked.state.values[1, :40], rebuilt.state.values[0])
    assert not torch.equal(masked.state.values[0, :40], rebuilt.state.values[0]), "the mask changed nothing"


def test_a_world_without_a_middle_group_is_the_scenario_on_the_induced_graph():
    # Any graph, any masked rows: relabelling the remaining agents keeps their order, and the
    # CSR order of their neighbours, so the draws pick the same agents.
    from sim import build, scenario_from_dict

    data = _two_group_scenario({"deffuant": {"absence": "rebuilt"}}, {"generator": "complete"}, masked_last=False)
    n = 55
    graph = nx.erdos_renyi_graph(n, 0.15, seed=4)
    edges = np.array(graph.edges(), dtype=np.int64)
    masked = build(scenario_from_dict(data), streams=[1], network=edges)
    masked.state.active[0, :15] = False  # the first group, "others"
    keep = edges[(edges >= 15).all(1)] - 15
    rebuilt = build(scenario_from_dict(dict(data, population=data["population"][1:])), streams=[1], network=keep)
    masked.advance(5)
    rebuilt.advance(5)
    assert torch.equal(masked.state.values[0, 15:], rebuilt.state.values[0])


@pytest.mark.parametrize("rule", ["aligned", "rebuilt"])
def test_over_seeds_a_masked_group_matches_the_rebuilt_scenario_on_a_random_graph(rule):
    # G(N, p) restricted to the active agents is G(N', p): the masked world and the rebuilt scenario
    # draw different graphs, so only their distributions agree. The statistic is the distance moved
    # per active agent in three steps: it would be N / N' = 1.4 times larger if absent agents' draws
    # were given to the others, and smaller if they were spent without slots for the others to
    # make up for them (aligned draws N / N' times as many slots as rebuilt; both keep the rate).
    from sim import build, scenario_from_dict

    network = {"generator": "erdos_renyi", "params": {"p": 0.08}}
    moved = {"masked": [], "rebuilt": []}
    for seed in range(40):
        data = _two_group_scenario({"deffuant": {"absence": rule}}, network, seed=seed)
        data["population"][1]["count"] = 16
        masked = build(scenario_from_dict(data), worlds=1)
        masked.state.active[0, 40:] = False
        rebuilt = build(scenario_from_dict(dict(data, population=data["population"][:1])), worlds=1)
        for name, sim_ in (("masked", masked), ("rebuilt", rebuilt)):
            start = sim_.state.values[0, :40].clone()
            sim_.advance(3)
            moved[name].append(float((sim_.state.values[0, :40] - start).abs().sum(1).mean()))
    a, c = np.array(moved["masked"]), np.array(moved["rebuilt"])
    se = np.sqrt(a.var(ddof=1) / len(a) + c.var(ddof=1) / len(c))
    assert abs(a.mean() - c.mean()) < 4 * se, (a.mean(), c.mean(), se)
    assert 0.25 * c.mean() > 4 * se, "the test could not tell a 1.4x change in the interaction rate"


def test_a_parameter_changed_in_place_is_seen_by_the_next_step():
    # The compiled step remembers which parameter rows hold one value; a change must not go unseen.
    values = torch.rand((1, 300, 2), generator=torch.Generator().manual_seed(4))
    world, state = make_world(values, nx.erdos_renyi_graph(300, 0.05, seed=5), confidence=0.3, rate=0.4)
    rng = Streams.of(1, 1).at(1)
    numba_kernel, torch_kernel = Deffuant(Deffuant.Params(kernel="numba")), Deffuant(Deffuant.Params(kernel="torch"))
    assert torch.equal(numba_kernel.apply(values, values, state, world, rng),
                       torch_kernel.apply(values, values, state, world, rng))
    world.params.confidence[0, ::2] = 0.05
    world.params.rate[0, 1::3] = 0.1
    got = numba_kernel.apply(values, values, state, world, rng)
    assert torch.equal(got, torch_kernel.apply(values, values, state, world, rng))


@pytest.mark.parametrize("rule", ["aligned", "rebuilt"])
def test_masked_draws_on_rows_longer_than_the_gather_buffer_equal_the_reference(monkeypatch, rule):
    # The masked draw gathers a row's neighbours in one pass into a buffer of _numba.LIVE entries and
    # counts, then scans, a longer row: hubs of both kinds, several blocks of slots, a hub left with no
    # active neighbour, and a step of the two-thread pipeline cut into chunks that do not fall on blocks.
    n, b = 400, 3
    graph = nx.erdos_renyi_graph(n, 0.02, seed=6)
    graph.add_edges_from((0, j) for j in range(1, 3 * _numba.LIVE))  # a hub longer than the buffer
    graph.add_edges_from((1, j) for j in range(2, _numba.LIVE + 1))  # a row exactly as long as the buffer
    graph.remove_edges_from(list(graph.edges(n - 1)))
    graph.add_edges_from((n - 1, j) for j in range(n - 2 - _numba.LIVE * 2, n - 1))  # all absent in world 2
    values = torch.rand((b, n, 2), generator=torch.Generator().manual_seed(6))
    world, state = make_world(values, graph, confidence=0.4, rate=0.3)
    state.active[0, ::3] = False
    state.active[1, 1::2] = False
    state.active[2, n - 2 - _numba.LIVE * 2:n - 1] = False
    rng = Streams.of(6, b).at(4)
    count, used = pair_counts(3.0, n, state.active, rule)
    assert count > 2 * _numba.BLOCK
    net = world.network
    got = _numba.draw_pairs(net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(),
                            rng.key("deffuant/focal").numpy(), rng.key("deffuant/partner").numpy(), count,
                            used.numpy(), state.active.numpy(), True, rule == "aligned")
    u_focal = rng.uniform("deffuant/focal", (b, count), torch.float64)
    u_partner = rng.uniform("deffuant/partner", (b, count), torch.float64)
    for w in range(b):
        want = pairs_reference(net.rowptr.numpy(), net.col.numpy(), state.active[w].numpy(), u_focal[w].numpy(),
                               u_partner[w].numpy(), int(used[w]), rule)
        np.testing.assert_array_equal(got[0][w], want[0])
        np.testing.assert_array_equal(got[1][w], want[1])
    for hub in (0, 1):
        assert (got[1][got[0] == hub] >= 0).sum() > 3, "the long rows were not drawn from"
    assert (got[1][2][got[0][2] == n - 1] == -1).all()
    focal, partner = sample_pairs(net, count, rng, "deffuant", state.active, used, rule)
    want = Deffuant(Deffuant.Params(kernel="torch")).apply_pairs(values, values, world, focal, partner)
    monkeypatch.setattr(_numba, "PIPELINE_CHUNK", 700)
    for pipeline in (False, True):
        x = torch.full_like(values, np.nan)
        _numba.deffuant(values.numpy(), x.numpy(), values.numpy(), torch.zeros((1, n), dtype=torch.bool).numpy(),
                        net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(),
                        rng.key("deffuant/focal").numpy(), rng.key("deffuant/partner").numpy(), used.numpy(),
                        state.active.numpy(), True, world.params.confidence.numpy(), world.params.rate.numpy(), 0,
                        np.inf, pipeline=pipeline, aligned=rule == "aligned")
        assert torch.equal(x, want)
