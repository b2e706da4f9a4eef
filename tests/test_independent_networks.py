"""Per-world graphs (``network.independent: true``): kernels against the reference loops on each world's own graph,
world b as the single-world run of its stream, shared graphs where streams are shared, resets, checkpoints, the
replicates' spread, plugins written for one graph, memory."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
import torch

import sim
from plugins.dynamics import _numba
from plugins.dynamics.pairwise import AlgorithmicBias, Deffuant
from plugins.dynamics.reference import (algorithmic_bias_reference, deffuant_reference, hegselmann_krause_reference,
                                        pairs_reference, world_csr)
from plugins.dynamics.synchronous import HegselmannKrause
from sim import registry
from sim.contracts import NoParams, Streams
from sim.core.engine import StepError
from sim.core.network import edges_to_network, stack_networks
from sim.core.ops import neighbour_min, neighbour_sums
from sim.core.pairing import focal_agents, pair_counts, sample_pairs
from sim.core.state import NetworkError
from sim.errors import ScenarioError
from sim.runs.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import make_world

GRAPH = [0, 1, 0, 2]  # world -> graph: worlds 0 and 2 share graph 0 (as twins on one stream would)


def _per_world(b=4, n=70, k=3, seed=0, masked=False):
    """A world of ``b`` worlds on three different graphs (one with isolated agents), heterogeneous parameters."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand((b, n, k), generator=g)
    graphs = [nx.erdos_renyi_graph(n, 0.08, seed=seed + 1), nx.watts_strogatz_graph(n, 6, 0.3, seed=seed + 2),
              nx.erdos_renyi_graph(n, 0.03, seed=seed + 3)]
    confidence = 0.2 + 0.4 * torch.rand((b, n), generator=g)
    rate = 0.1 + 0.4 * torch.rand((b, n), generator=g)
    world, state = make_world(values, graphs[0], confidence=confidence, rate=rate)
    network = stack_networks([edges_to_network(n, graph) for graph in graphs], torch.tensor(GRAPH[:b]))
    world = replace(world, network=network)
    if masked:
        state.active[0, ::5] = False
        state.active[1, 20:40] = False
        state.active[3, 0] = False
    return world, state, graphs


def _reference_pairs(world, state, rng, count, used, rule, purpose="deffuant"):
    b, n = state.active.shape
    net = world.network
    u_focal = rng.uniform(f"{purpose}/focal", (b, count), torch.float64)
    u_partner = rng.uniform(f"{purpose}/partner", (b, count), torch.float64)
    used = torch.full((b,), count) if used is None else used
    out = []
    for w in range(b):
        rowptr, col = world_csr(net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(), w)
        out.append(pairs_reference(rowptr, col, state.active[w].numpy(), u_focal[w].numpy(), u_partner[w].numpy(),
                                   int(used[w]), rule))
    return out


def test_a_network_of_per_world_graphs_keeps_each_graph_and_refuses_one_graph_views():
    world, state, graphs = _per_world()
    net = world.network
    assert not net.shared and net.graphs == 3 and net.graph.tolist() == GRAPH
    for w, g in enumerate(GRAPH):
        alone = edges_to_network(world.n, graphs[g])
        assert torch.equal(net.of_world(w).rowptr, alone.rowptr) and torch.equal(net.of_world(w).col, alone.col)
        assert torch.equal(net.world_degree()[w], alone.degree())
    assert net.edges_per_graph() == [graph.number_of_edges() for graph in graphs]
    for view in (lambda: net.rowptr, lambda: net.col, lambda: net.degree(), lambda: net.num_edges):
        with pytest.raises(NetworkError, match="network.independent"):
            view()
    one = stack_networks([edges_to_network(world.n, graphs[0])], torch.zeros(4, dtype=torch.int64))
    assert one.shared and one.graphs == 1 and one.world_degree().shape == (1, world.n)


@pytest.mark.parametrize("masked,rule", [(False, "aligned"), (True, "aligned"), (True, "rebuilt")])
def test_pairs_are_drawn_on_each_worlds_own_graph_by_both_kernels_and_the_reference(masked, rule):
    world, state, _ = _per_world(masked=masked)
    b, n = state.active.shape
    rng = Streams.of(4, [0, 5, 9, 2]).at(2)
    active = state.active if masked else None
    count, used = pair_counts(1.5, n, active, rule)
    focal, partner = sample_pairs(world.network, count, rng, "deffuant", active, used, rule)
    net = world.network
    got = _numba.draw_pairs(net.rowptrs.numpy(), net.cols.numpy(), net.world_graph(b).numpy(),
                            rng.key("deffuant/focal").numpy(), rng.key("deffuant/partner").numpy(), count,
                            (torch.full((b,), count) if used is None else used).numpy(), state.active.numpy(),
                            masked, rule == "aligned")
    np.testing.assert_array_equal(got[0], focal.numpy())
    np.testing.assert_array_equal(got[1], partner.numpy())
    for w, (want_focal, want_partner) in enumerate(_reference_pairs(world, state, rng, count, used, rule)):
        np.testing.assert_array_equal(focal[w].numpy(), want_focal)
        np.testing.assert_array_equal(partner[w].numpy(), want_partner)
    # the partners are neighbours in the world's own graph, which the other graphs do not have
    edges = {w: set(zip(*[t.tolist() for t in (net.of_world(w).rows(), net.of_world(w).col)])) for w in range(b)}
    drawn = partner >= 0
    for w in range(b):
        pairs = set(zip(focal[w][drawn[w]].tolist(), partner[w][drawn[w]].tolist()))
        assert pairs <= edges[w] and (w in (0, 2) or not pairs <= edges[0])


@pytest.mark.parametrize("distance", ["l2", "per_dimension"])
@pytest.mark.parametrize("masked,rule,repulsion", [(False, "aligned", None), (True, "aligned", 0.7),
                                                   (True, "rebuilt", None)])
def test_deffuant_on_per_world_graphs_equals_the_reference_in_both_kernels(distance, masked, rule, repulsion):
    world, state, _ = _per_world(masked=masked)
    b, n = state.active.shape
    rng = Streams.of(8, b).at(5)
    params = dict(distance=distance, repulsion=repulsion, pairs_per_agent=3.0, absence=rule)
    got = Deffuant(Deffuant.Params(kernel="numba", **params)).apply(state.values, state.values, state, world, rng)
    torch_step = Deffuant(Deffuant.Params(kernel="torch", **params)).apply(state.values, state.values, state, world,
                                                                           rng)
    assert torch.equal(got, torch_step)
    count, used = pair_counts(3.0, n, state.active if masked else None, rule)
    for w, (focal, partner) in enumerate(_reference_pairs(world, state, rng, count, used, rule)):
        want = deffuant_reference(state.values[w].numpy(), focal, partner, world.params.confidence[w].numpy(),
                                  world.params.rate[w].numpy(), distance, repulsion)
        np.testing.assert_array_equal(got[w].numpy(), want)
    assert torch.equal(got[~state.active], state.values[~state.active]), "an absent agent moved"
    shared = replace(world, network=world.network.of_world(0))  # everyone on graph 0: world 1 comes out otherwise
    on_one = Deffuant(Deffuant.Params(kernel="numba", **params)).apply(state.values, state.values, state, shared, rng)
    assert torch.equal(on_one[[0, 2]], got[[0, 2]]) and not torch.equal(on_one[1], got[1])


@pytest.mark.parametrize("rule", ["aligned", "rebuilt"])
def test_the_two_thread_pipeline_reads_each_worlds_own_graph(monkeypatch, rule):
    monkeypatch.setattr(_numba, "PIPELINE_CHUNK", 500)
    world, state, _ = _per_world(n=300, masked=True)
    b, n = state.active.shape
    count, used = pair_counts(2.3, n, state.active, rule)
    rng = Streams.of(2, b).at(1)
    net = world.network
    x = torch.full_like(state.values, np.nan)
    honest = torch.zeros((1, n), dtype=torch.bool)
    _numba.deffuant(state.values.numpy(), x.numpy(), state.values.numpy(), honest.numpy(), net.rowptrs.numpy(),
                    net.cols.numpy(), net.world_graph(b).numpy(), rng.key("deffuant/focal").numpy(),
                    rng.key("deffuant/partner").numpy(), used.numpy(), state.active.numpy(), True,
                    world.params.confidence.numpy(), world.params.rate.numpy(), 0, np.inf, pipeline=True,
                    aligned=rule == "aligned")
    focal, partner = sample_pairs(net, count, rng, "deffuant", state.active, used, rule)
    want = Deffuant(Deffuant.Params(kernel="torch")).apply_pairs(state.values, state.values, world, focal, partner)
    assert torch.equal(x, want)


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("distance", ["l2", "linf", "per_dimension"])
def test_hegselmann_krause_on_per_world_graphs_equals_the_reference(kernel, distance):
    world, state, graphs = _per_world(k=2)
    state.active[1, 5:15] = False
    got = HegselmannKrause(HegselmannKrause.Params(distance=distance, kernel=kernel)).apply(
        state.values, state.values, state, world, Streams.of(11, world.b))
    for w, g in enumerate(GRAPH):
        present = state.active[w]
        neighbours = [[j for j in sorted(graphs[g].neighbors(i)) if present[j]] for i in range(world.n)]
        want = hegselmann_krause_reference(state.values[w].numpy(), neighbours, world.params.confidence[w].numpy(),
                                           distance)
        keep = present.numpy()
        np.testing.assert_allclose(got[w].numpy()[keep], want[keep], rtol=0, atol=1e-6)
    alone = HegselmannKrause(HegselmannKrause.Params(distance=distance, kernel=kernel)).apply(
        state.values[1:2], state.values[1:2], replace(state, values=state.values[1:2], active=state.active[1:2]),
        replace(world, network=world.network.of_world(1), params=_world_params(world, 1), initial=world.initial[1:2]),
        Streams.of(11, 1))
    assert torch.equal(got[1:2], alone), "world 1 differs from world 1 on its graph alone"


def _world_params(world, b):
    return type(world.params)(**{f: getattr(world.params, f)[b:b + 1] if getattr(world.params, f).shape[0] > 1
                                 else getattr(world.params, f) for f in ("confidence", "rate", "anchoring", "zealot")})


@pytest.mark.parametrize("masked,rule", [(False, "aligned"), (True, "aligned"), (True, "rebuilt")])
def test_algorithmic_bias_on_per_world_graphs_equals_the_reference(masked, rule):
    world, state, _ = _per_world(masked=masked)
    b, n = state.active.shape
    world = replace(world, params=replace(world.params, confidence=torch.full((1, n), 0.4),
                                          rate=torch.full((1, n), 0.3)))
    rng = Streams.of(5, b).at(3)
    got = AlgorithmicBias(AlgorithmicBias.Params(gamma=2.0, pairs_per_agent=3.0, absence=rule)).apply(
        state.values, state.values, state, world, rng)
    count, used = pair_counts(3.0, n, state.active if masked else None, rule)
    focal = focal_agents(n, count, rng, "algorithmic_bias/focal", state.active if masked else None, used, rule)
    u = rng.uniform("algorithmic_bias/partner", (b, count), torch.float64)
    net = world.network
    for w in range(b):
        rowptr, col = world_csr(net.rowptrs.numpy(), net.cols.numpy(), GRAPH, w)
        want = algorithmic_bias_reference(state.values[w].numpy(), rowptr, col, focal[w].numpy(), u[w].numpy(),
                                          np.full(n, 0.4, np.float32), np.full(n, 0.3, np.float32), 2.0,
                                          active=state.active[w].numpy())
        np.testing.assert_allclose(got[w].numpy(), want, rtol=0, atol=1e-6)


def test_neighbour_sums_and_minima_use_each_worlds_own_graph():
    world, state, _ = _per_world()
    x = state.values
    sums, count = neighbour_sums(world.network, 10, 40, x, state.active)
    low = neighbour_min(world.network, 10, 40, world.params.confidence, state.active, 1.0)
    for w in range(world.b):
        graph = world.network.of_world(w)
        want_sums, want_count = neighbour_sums(graph, 10, 40, x[w:w + 1], state.active[w:w + 1])
        assert torch.equal(sums[w], want_sums[0]) and torch.equal(count[w], want_count[0])
        assert torch.equal(low[w], neighbour_min(graph, 10, 40, world.params.confidence[w:w + 1],
                                                 state.active[w:w + 1], 1.0)[0])


# ---------------------------------------------------------------- scenarios


def _scenario(**changes):
    data = {
        "name": "replicates", "seed": 5, "steps": 10, "values": ["a", "b"], "worlds": 4,
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}, "independent": True},
        "population": [
            {"name": "people", "count": 120, "confidence": {"dist": "uniform", "low": 0.2, "high": 0.5}, "rate": 0.3},
            {"name": "pushers", "count": 6, "policy": {"strategic_influencer": {"goal": [0.9, 0.1]}},
             "confidence": 0.3},
        ],
        "dynamics": ["deffuant", {"noise": {"sigma": 0.01}}],
        "metrics": ["mean_values", "polarization"],
    }
    data.update(changes)
    return sim.scenario_from_dict(data)


@pytest.mark.parametrize("dynamics", [[{"deffuant": {"kernel": "numba"}}], [{"deffuant": {"kernel": "torch"}}],
                                      [{"hegselmann_krause": {"kernel": "numba", "rate": "agent"}}],
                                      [{"hegselmann_krause": {"kernel": "torch", "rate": "agent"}}],
                                      [{"algorithmic_bias": {"gamma": 1.0}}]])
def test_world_b_of_an_independent_batch_is_the_single_world_run_of_its_stream(dynamics):
    batch = sim.build(_scenario(dynamics=dynamics))
    assert batch.world.network.graphs == 4
    batch.advance(6)
    for stream in (1, 3):
        alone = sim.build(_scenario(dynamics=dynamics), streams=[stream])
        assert alone.world.network.shared
        assert torch.equal(alone.world.network.col, batch.world.network.of_world(stream).col)
        alone.advance(6)
        assert torch.equal(batch.state.values[stream], alone.state.values[0])
    assert not torch.equal(batch.world.network.of_world(0).col, batch.world.network.of_world(1).col)


def test_worlds_on_one_stream_share_one_graph():
    coalitions = sim.build(_scenario(), streams=[3] * 64)  # a Shapley batch: one graph, not 64
    assert coalitions.world.network.shared and coalitions.world.network.graphs == 1
    assert torch.equal(coalitions.world.network.col, sim.build(_scenario(), streams=[3]).world.network.col)
    twins = sim.build(_scenario(counterfactual=["pushers"]), worlds=3)
    net = twins.world.network
    assert net.graphs == 3 and net.graph.tolist() == [0, 1, 2, 0, 1, 2]  # each world and its twin: one graph
    paired = sim.build(_scenario(), streams=[0, 1, 0, 1])  # two sweep points paired on streams 0 and 1
    assert paired.world.network.graph.tolist() == [0, 1, 0, 1]
    shared = sim.build(_scenario(network={"generator": "erdos_renyi", "params": {"mean_degree": 6}}))
    assert shared.world.network.shared  # independent: false (the default) is one graph, stream 0's
    assert torch.equal(shared.world.network.col, paired.world.network.of_world(0).col)


def test_a_reset_world_gets_the_graph_of_its_new_stream_and_a_checkpoint_resumes_bit_for_bit(tmp_path):
    straight = sim.build(_scenario())
    straight.advance(4)
    straight.reset_worlds(torch.tensor([False, True, False, False]))
    assert straight.rng.stream.tolist() == [0, 4, 2, 3]
    fresh = sim.build(_scenario(), streams=[4])
    assert torch.equal(straight.world.network.of_world(1).col, fresh.world.network.col)
    assert torch.equal(straight.world.network.of_world(2).col, sim.build(_scenario(), streams=[2]).world.network.col)
    straight.advance(2)
    save_checkpoint(tmp_path, straight.snapshot(), lambda path, data: path.write_bytes(data))
    straight.advance(4)
    fresh.advance(6)
    assert torch.equal(straight.state.values[1], fresh.state.values[0])
    resumed = sim.build(_scenario())  # as `valuesim resume` does: rebuild, then restore; graphs come from the seed
    resumed.restore(load_checkpoint(tmp_path))
    assert torch.equal(resumed.world.network.cols, straight.world.network.cols)
    resumed.advance(4)
    assert torch.equal(resumed.state.values, straight.state.values)


def test_a_run_with_independent_networks_resumes_as_if_uninterrupted(tmp_path):
    scenario = _scenario(steps=12, log_every=2, log={"checkpoint_every": 4})
    whole = sim.open_run(sim.run(scenario, runs_dir=tmp_path / "whole"))
    cut = sim.run(_scenario(steps=12, log_every=2, log={"checkpoint_every": 4}), runs_dir=tmp_path / "cut")
    # make it a run stopped at its step-8 checkpoint: keep what that checkpoint holds, drop the rest
    part = sim.build(scenario)
    part.advance(8)
    save_checkpoint(cut / "checkpoint", part.snapshot(), lambda path, data: path.write_bytes(data))
    manifest = (cut / "manifest.json").read_text().replace('"status": "complete"', '"status": "interrupted"')
    (cut / "manifest.json").write_text(manifest)
    sim.resume(cut)
    resumed = sim.open_run(cut)
    last = whole.values()[whole.values().step == 12].reset_index(drop=True)
    again = resumed.values()[resumed.values().step == 12].reset_index(drop=True)
    assert len(last) == 4 * 126 and last.equals(again)


def test_replicates_on_independent_graphs_spread_where_a_shared_graph_gives_none():
    # HK draws nothing and every agent starts where its group does: with one graph the replicates are the same run
    def spread(independent):
        scenario = _scenario(
            worlds=6, network={"generator": "erdos_renyi", "params": {"mean_degree": 3}, "independent": independent},
            population=[{"name": "left", "count": 60, "init": {"dist": "constant", "value": [0.2, 0.3]},
                         "confidence": 0.7},
                        {"name": "right", "count": 60, "init": {"dist": "constant", "value": [0.8, 0.6]},
                         "confidence": 0.7}],
            dynamics=["hegselmann_krause"], metrics=["mean_values"])
        simulation = sim.build(scenario)
        simulation.advance(3)
        left = simulation.state.values[:, :60].mean(1)  # [B, K]: each replicate's mean of the left group
        return left.var(0).sum().item()

    assert spread(False) == 0.0
    assert spread(True) > 1e-5


# ---------------------------------------------------------------- plugins written for one graph


class OneGraphPolicy:
    """Shows the mean of its neighbours by reading ``network.rowptr`` (a plugin written for a shared graph)."""

    Params = NoParams
    expresses_own_values = False

    def __init__(self, params):
        self.params = params

    def express(self, state, world, group, rng):
        degree = world.network.degree()[group.rows].to(state.values.dtype)
        return state.values[:, group.rows] * 0 + (degree > 0)[None, :, None].to(state.values.dtype) * 0.5


def test_a_plugin_that_reads_one_graph_stops_naming_itself_instead_of_reading_another_worlds():
    with registry.scratch():
        registry.register("policies", "one_graph")(OneGraphPolicy)
        population = [{"name": "people", "count": 60, "confidence": 0.3},
                      {"name": "readers", "count": 4, "policy": "one_graph"}]
        shared = sim.build(_scenario(population=population, network={"generator": "erdos_renyi",
                                                                     "params": {"mean_degree": 6}}))
        shared.advance(2)  # fine on a shared graph
        independent = sim.build(_scenario(population=population))
        with pytest.raises(StepError, match="policy 'one_graph' of group 'readers' raised NetworkError: "
                                            "network.degree\\(\\) describes one graph"):
            independent.step()


def test_the_example_plugin_reads_each_worlds_own_graph():
    pytest.importorskip("valuesim_example")
    from valuesim_example.bridge_builder import neighbour_means

    world, state, _ = _per_world()
    group = world.groups[0]
    mean, has = neighbour_means(state.values, state.active, world, group)
    for w in range(world.b):
        alone = replace(world, network=world.network.of_world(w), initial=world.initial[w:w + 1])
        want_mean, want_has = neighbour_means(state.values[w:w + 1], state.active[w:w + 1], alone, group)
        assert torch.equal(mean[w], want_mean[0]) and torch.equal(has[w], want_has[0])


def test_shapley_players_by_degree_are_refused_with_per_world_graphs():
    from sim.shapley.players import parse_players, player_masks

    simulation = sim.build(_scenario())
    players = parse_players("hubs=degree:top:3", ["people", "pushers"], simulation.world.n, ("a", "b"))
    with pytest.raises(ScenarioError, match="player 'hubs': degree:top:3 needs one network shared by the replicates"):
        player_masks(players, simulation.world)
    shared = sim.build(_scenario(), streams=[2, 2, 2])  # coalitions on one stream: one graph, its hubs
    assert (player_masks(players, shared.world)[0].sum(-1) == 3).all()


def test_the_memory_estimate_counts_every_graph(monkeypatch):
    from sim.config import budget

    scenario = _scenario(population=[{"name": "people", "count": 100_000}],
                         network={"generator": "erdos_renyi", "params": {"mean_degree": 20}, "independent": True})
    need_one = 100_000 * 10 * budget.EDGE_BYTES
    monkeypatch.setattr(budget, "available_memory", lambda: int(need_one * 5))
    budget.check_budget(scenario, 4, graphs=1)
    with pytest.raises(ScenarioError, match="most of it for the network"):
        budget.check_budget(scenario, 4, graphs=400)


def test_the_readme_command_for_replicates_on_their_own_graphs_runs(tmp_path):
    import shlex

    from sim.cli import main
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    start = readme.index("valuesim run scenarios/quickstart.yaml --seed 7 --worlds 8 --set network.independent=true")
    lines = readme[start:].split("\n")[:2]
    words = shlex.split(" ".join(line.split("#")[0].rstrip().rstrip("\\") for line in lines))
    assert words[:2] == ["valuesim", "run"] and "network.independent=true" in words
    words[2] = str(REPO / words[2])
    # the README's command, shortened: a step, fewer agents
    assert main([*words[1:], "--set", "steps=1", "--set", "population.citizens.count=300", "--quiet",
                 "--runs-dir", str(tmp_path)]) == 0
    (run,) = [sim.open_run(p) for p in tmp_path.iterdir() if p.is_dir()]
    assert run.manifest["network"]["graphs"] == 8 and run.network().world.nunique() == 8


def test_a_shapley_game_on_independent_graphs_evaluates_replicate_r_on_stream_rs_graph():
    from sim.shapley.players import parse_players
    from sim.shapley.simulation import Null, SimulationGame, Worth

    scenario = _scenario(steps=4, log_every=2, metrics=["mean_values"])
    players = parse_players("pushers", ["people", "pushers"], scenario.spec.num_agents, ("a", "b"))
    game = SimulationGame(scenario, players, Worth.parse("mean_values:people:a"), Null.parse("absent"),
                          replicates=3)
    assert game.plan.edges is None  # each batch builds its streams' graphs, one per stream
    grand = game(np.array([[True]]), 3)[0, :, 0]
    for r in range(3):
        alone = sim.build(scenario, streams=[r])
        alone.advance(4)
        assert grand[r] == pytest.approx(float(alone.state.values[0, :120, 0].mean()), abs=1e-6)
    shared = SimulationGame(_scenario(steps=4, log_every=2, metrics=["mean_values"],
                                      network={"generator": "erdos_renyi", "params": {"mean_degree": 6}}),
                            players, Worth.parse("mean_values:people:a"), Null.parse("absent"), replicates=3)
    assert shared.plan.edges is not None and not np.allclose(shared(np.array([[True]]), 3)[0, 1:, 0],
                                                            grand[1:])
