"""Network generators and the CSR conversion (sim.core.network, plugins.networks)."""

from __future__ import annotations

import random
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from plugins.networks import (
    BarabasiAlbert, Complete, ErdosRenyi, FromFile, PowerlawCluster, StochasticBlock, WattsStrogatz,
)
from sim.contracts import NetworkRequest, NoParams
from sim.errors import ScenarioError
from sim.core.network import build_network, edges_to_network
from sim.contracts import Group, Network


def request(n: int, seed: int = 7, sizes: tuple[int, ...] | None = None, base_dir: Path = Path(".")) -> NetworkRequest:
    sizes = sizes or (n,)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    groups = tuple(Group(f"g{i}", "human", int(a), int(b)) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
    return NetworkRequest(n=n, groups=groups, seed=seed, base_dir=base_dir)


def assert_csr_invariants(net: Network) -> None:
    rowptr, col, n = net.rowptr.numpy(), net.col.numpy(), net.n
    assert net.rowptr.dtype == torch.int64 and net.col.dtype == torch.int64
    assert net.rowptr.device.type == "cpu" and net.col.device.type == "cpu"
    assert rowptr.shape == (n + 1,) and rowptr[0] == 0 and rowptr[-1] == col.size
    assert (np.diff(rowptr) >= 0).all()
    rows = net.rows().numpy()
    assert ((col >= 0) & (col < n)).all()
    assert (rows != col).all(), "self-loop"
    same_row = rows[1:] == rows[:-1]
    assert (col[1:][same_row] > col[:-1][same_row]).all(), "row not strictly ascending (unsorted or duplicate)"
    assert np.array_equal(np.sort(rows * n + col), np.sort(col * n + rows)), "not symmetric"
    assert int(net.degree().sum()) == 2 * net.num_edges


def edge_set(net: Network) -> set[tuple[int, int]]:
    rows, col = net.rows().tolist(), net.col.tolist()
    return {(a, b) for a, b in zip(rows, col) if a < b}


# --- edges_to_network ---------------------------------------------------------------------------


def test_edges_to_network_matches_hand_written_csr():
    edges = np.array([[0, 1], [1, 0], [2, 1], [3, 3], [1, 2], [0, 3]], dtype=np.int64)
    net = edges_to_network(5, edges)
    assert net.rowptr.tolist() == [0, 2, 4, 5, 6, 6]
    assert net.col.tolist() == [1, 3, 0, 2, 1, 0]
    assert net.num_edges == 3
    graph = nx.Graph([(1, 0), (2, 1), (3, 0), (3, 3)])
    graph.add_node(4)
    from_graph = edges_to_network(5, graph)
    assert torch.equal(from_graph.rowptr, net.rowptr) and torch.equal(from_graph.col, net.col)


def test_edges_to_network_empty_and_bad_input():
    net = edges_to_network(3, np.empty((0, 2), dtype=np.int64))
    assert net.rowptr.tolist() == [0, 0, 0, 0] and net.col.numel() == 0
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        edges_to_network(3, np.array([[0, 3]]))
    with pytest.raises(ValueError, match="integer"):
        edges_to_network(3, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        edges_to_network(3, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="0..2"):
        edges_to_network(3, nx.path_graph(["a", "b", "c"]))


def test_build_network_names_the_generator_on_a_bad_graph():
    class OneBased:
        def build(self, request):
            return nx.relabel_nodes(nx.path_graph(request.n), lambda i: i + 1)

    with pytest.raises(ValueError, match="OneBased.*0..4"):
        build_network(OneBased(), request(5))


# --- every generator ------------------------------------------------------------------------------

N = 300
GENERATORS = {
    "complete": (Complete(NoParams()), N * (N - 1) // 2),
    "erdos_renyi_p": (ErdosRenyi(ErdosRenyi.Params(p=0.05)), None),
    "erdos_renyi_mean_degree": (ErdosRenyi(ErdosRenyi.Params(mean_degree=6)), None),
    "watts_strogatz": (WattsStrogatz(WattsStrogatz.Params(k=6, p=0.2)), N * 3),
    "watts_strogatz_odd_k": (WattsStrogatz(WattsStrogatz.Params(k=5, p=0.2)), N * 2),
    "barabasi_albert": (BarabasiAlbert(BarabasiAlbert.Params(m=3)), 3 * (N - 3)),
    "powerlaw_cluster": (PowerlawCluster(PowerlawCluster.Params(m=3, p=0.5)), None),  # triad steps may skip an edge
    "stochastic_block": (StochasticBlock(StochasticBlock.Params(p_in=0.1, p_out=0.01)), None),
    "stochastic_block_matrix": (
        StochasticBlock(StochasticBlock.Params(p=[[0.2, 0.0, 0.01], [0.0, 0.1, 0.02], [0.01, 0.02, 0.05]])), None,
    ),
}
SIZES = (50, 100, 150)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_gives_a_valid_network(name):
    generator, expected_edges = GENERATORS[name]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    net = build_network(generator, request(N, sizes=SIZES))
    assert_csr_invariants(net)
    assert net.n == N
    if expected_edges is not None:
        assert net.num_edges == expected_edges
    # Seeded from the request only: global generators are neither used nor reseeded.
    assert random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


@pytest.mark.parametrize("name", [n for n in GENERATORS if n != "complete"])
def test_same_seed_same_network_other_seed_another(name):
    generator, _ = GENERATORS[name]
    first = build_network(generator, request(N, seed=1, sizes=SIZES))
    again = build_network(generator, request(N, seed=1, sizes=SIZES))
    other = build_network(generator, request(N, seed=2, sizes=SIZES))
    assert torch.equal(first.rowptr, again.rowptr) and torch.equal(first.col, again.col)
    assert edge_set(first) != edge_set(other)


# --- Erdős–Rényi ------------------------------------------------------------------------------------


def test_erdos_renyi_mean_degree_and_degree_spread():
    n, mean_degree = 20_000, 10.0
    net = build_network(ErdosRenyi(ErdosRenyi.Params(mean_degree=mean_degree)), request(n))
    assert_csr_invariants(net)
    degree = net.degree().double()
    # Edges ~ Binomial(n(n-1)/2, p): sd of the mean degree is about 2 sqrt(n k / 2) / n = 0.032.
    assert abs(degree.mean().item() - mean_degree) < 0.16
    # Degrees are Binomial(n-1, p), variance about the mean (a regular or clumped sampler would fail).
    assert abs(degree.var().item() / mean_degree - 1) < 0.1


def test_erdos_renyi_p_gives_expected_density():
    n, p = 2000, 0.01
    net = build_network(ErdosRenyi(ErdosRenyi.Params(p=p)), request(n))
    pairs = n * (n - 1) / 2
    assert abs(net.num_edges - p * pairs) < 5 * np.sqrt(pairs * p * (1 - p))


def test_erdos_renyi_params_and_limits():
    with pytest.raises(ValidationError, match="exactly one of p or mean_degree"):
        ErdosRenyi.Params(p=0.1, mean_degree=3)
    with pytest.raises(ValidationError, match="exactly one of p or mean_degree"):
        ErdosRenyi.Params()
    with pytest.raises(ValidationError):
        ErdosRenyi.Params(p=1.5)
    with pytest.raises(ValidationError):
        ErdosRenyi.Params(p=0.1, q=2)
    with pytest.raises(ScenarioError, match="mean_degree must be at most N - 1 = 9"):
        ErdosRenyi(ErdosRenyi.Params(mean_degree=12)).build(request(10))
    assert build_network(ErdosRenyi(ErdosRenyi.Params(p=1.0)), request(12)).num_edges == 66
    assert build_network(ErdosRenyi(ErdosRenyi.Params(p=0.0)), request(12)).num_edges == 0


# --- Watts–Strogatz -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k", [(20, 4), (101, 10), (7, 6)])
def test_watts_strogatz_without_rewiring_is_the_ring_lattice(n, k):
    net = build_network(WattsStrogatz(WattsStrogatz.Params(k=k, p=0.0)), request(n))
    offsets = np.concatenate([np.arange(1, k // 2 + 1), -np.arange(1, k // 2 + 1)])
    expected = np.sort((np.arange(n)[:, None] + offsets[None, :]) % n, axis=1)
    assert net.rowptr.tolist() == list(range(0, n * k + 1, k))
    assert np.array_equal(net.col.numpy(), expected.ravel())


def test_watts_strogatz_rewiring_matches_the_model():
    n, k, p = 2000, 10, 0.1
    net = build_network(WattsStrogatz(WattsStrogatz.Params(k=k, p=p)), request(n))
    assert_csr_invariants(net)
    assert net.num_edges == n * k // 2
    lattice = edge_set(build_network(WattsStrogatz(WattsStrogatz.Params(k=k, p=0.0)), request(n)))
    kept = len(edge_set(net) & lattice) / len(lattice)
    assert abs(kept - (1 - p)) < 0.02
    # Clustering of the small world: C(0) (1 - p)^3 with C(0) = 3(k - 2) / (4(k - 1)).
    clustering = nx.average_clustering(nx.Graph(list(edge_set(net))))
    assert abs(clustering - 3 * (k - 2) / (4 * (k - 1)) * (1 - p) ** 3) < 0.03


def test_watts_strogatz_dense_and_limits():
    full = build_network(WattsStrogatz(WattsStrogatz.Params(k=10, p=1.0)), request(12))
    assert_csr_invariants(full)
    assert full.num_edges == 60  # rewiring never loses an edge, even when almost every target is taken
    assert build_network(WattsStrogatz(WattsStrogatz.Params(k=8, p=0.3)), request(8)).num_edges == 28
    with pytest.raises(ScenarioError, match="k must be at most the number of agents"):
        WattsStrogatz(WattsStrogatz.Params(k=10, p=0.1)).build(request(8))
    with pytest.raises(ValidationError):
        WattsStrogatz.Params(k=1, p=0.1)


def test_preferential_attachment_is_networkx_seeded_by_the_request():
    generator = PowerlawCluster(PowerlawCluster.Params(m=2, p=0.3))
    net = build_network(generator, request(200, seed=11))
    assert edge_set(net) == {tuple(sorted(e)) for e in nx.powerlaw_cluster_graph(200, 2, 0.3, seed=11).edges}


def test_preferential_attachment_rejects_m_not_below_n():
    with pytest.raises(ScenarioError, match="m must be less than"):
        BarabasiAlbert(BarabasiAlbert.Params(m=5)).build(request(5))
    with pytest.raises(ScenarioError, match="m must be less than"):
        PowerlawCluster(PowerlawCluster.Params(m=6, p=0.1)).build(request(5))


# --- stochastic block ---------------------------------------------------------------------------------


def block_edge_counts(net: Network, sizes: tuple[int, ...]) -> np.ndarray:
    """Undirected edges between each pair of blocks (within a block on the diagonal)."""
    block = np.repeat(np.arange(len(sizes)), sizes)
    counts = np.zeros((len(sizes), len(sizes)))
    np.add.at(counts, (block[net.rows().numpy()], block[net.col.numpy()]), 1)
    # An edge inside block a is stored twice in [a, a]; one between a and b once in [a, b] and once in [b, a].
    np.fill_diagonal(counts, np.diag(counts) / 2)
    return counts


def assert_block_densities(net: Network, sizes: tuple[int, ...], probability: np.ndarray) -> None:
    size = np.array(sizes, dtype=float)
    pairs = np.outer(size, size)
    np.fill_diagonal(pairs, size * (size - 1) / 2)
    expected = probability * pairs
    tolerance = 5 * np.sqrt(pairs * probability * (1 - probability))
    observed = block_edge_counts(net, sizes)
    assert (np.abs(observed - expected) <= tolerance).all(), (observed, expected)


def test_stochastic_block_densities_p_in_p_out():
    sizes = (300, 500)
    net = build_network(StochasticBlock(StochasticBlock.Params(p_in=0.1, p_out=0.01)), request(800, sizes=sizes))
    assert_csr_invariants(net)
    assert_block_densities(net, sizes, np.array([[0.1, 0.01], [0.01, 0.1]]))


def test_stochastic_block_densities_matrix():
    sizes = (200, 300, 250)
    probability = np.array([[0.2, 0.0, 0.01], [0.0, 0.05, 0.02], [0.01, 0.02, 0.1]])
    generator = StochasticBlock(StochasticBlock.Params(p=probability.tolist()))
    net = build_network(generator, request(750, sizes=sizes))
    assert_block_densities(net, sizes, probability)


def test_stochastic_block_params_and_limits():
    with pytest.raises(ValidationError, match="both p_in and p_out"):
        StochasticBlock.Params(p_in=0.1)
    with pytest.raises(ValidationError, match="not both"):
        StochasticBlock.Params(p_in=0.1, p_out=0.1, p=[[0.1]])
    with pytest.raises(ValidationError, match="symmetric"):
        StochasticBlock.Params(p=[[0.1, 0.2], [0.3, 0.1]])
    with pytest.raises(ValidationError):
        StochasticBlock.Params(p=[[1.1]])
    with pytest.raises(ScenarioError, match="p must be 3 x 3"):
        StochasticBlock(StochasticBlock.Params(p=[[0.1, 0.2], [0.2, 0.1]])).build(request(30, sizes=(10, 10, 10)))


# --- from a file -----------------------------------------------------------------------------------------


def from_file(path: str, fmt: str = "auto") -> FromFile:
    return FromFile(FromFile.Params(path=path, format=fmt))


def test_from_file_edgelist_written_by_networkx(tmp_path):
    graph = nx.connected_watts_strogatz_graph(60, 4, 0.3, seed=3)
    nx.write_edgelist(graph, tmp_path / "g.edgelist")  # "u v {}" lines: the data column is ignored
    net = build_network(from_file("g.edgelist"), request(60, base_dir=tmp_path))
    expected = edges_to_network(60, graph)
    assert torch.equal(net.rowptr, expected.rowptr) and torch.equal(net.col, expected.col)


def test_from_file_graphml_relabels_string_ids(tmp_path):
    graph = nx.connected_watts_strogatz_graph(40, 4, 0.3, seed=5)
    graph.add_node(40)  # isolated: GraphML keeps it
    named = nx.relabel_nodes(graph, {i: f"person-{i:03d}" for i in graph})
    nx.write_graphml(named, tmp_path / "people.graphml")
    net = build_network(from_file(str(tmp_path / "people.graphml")), request(41))
    expected = edges_to_network(41, graph)
    assert torch.equal(net.rowptr, expected.rowptr) and torch.equal(net.col, expected.col)


def test_from_file_csv_with_comments_and_one_based_ids(tmp_path):
    (tmp_path / "g.csv").write_text("# a triangle and a tail\n1,2\n2, 3  # inline\n\n3,1\n4,3\n4,4\n")
    net = build_network(from_file("g.csv"), request(4, base_dir=tmp_path))
    assert edge_set(net) == {(0, 1), (1, 2), (0, 2), (2, 3)}


def test_from_file_numeric_ids_sort_numerically(tmp_path):
    (tmp_path / "g.txt").write_text("2 10\n10 9\n")
    net = build_network(from_file("g.txt"), request(3, base_dir=tmp_path))
    assert edge_set(net) == {(0, 2), (1, 2)}  # 2 -> 0, 9 -> 1, 10 -> 2


def test_from_file_errors(tmp_path):
    with pytest.raises(ScenarioError) as missing:
        from_file("nets/missing.edgelist").build(request(10, base_dir=tmp_path))
    resolved = (tmp_path / "nets" / "missing.edgelist").resolve()
    assert missing.value.message == f"file not found: nets/missing.edgelist (resolved to {resolved})"
    assert missing.value.path == "network.params.path"

    nx.write_edgelist(nx.path_graph(120), tmp_path / "big.edgelist")
    with pytest.raises(ScenarioError) as mismatch:
        from_file("big.edgelist").build(request(100, base_dir=tmp_path))
    assert mismatch.value.message == "big.edgelist has 120 nodes but the population has 100 agents"
    assert mismatch.value.path == "network.params.path"

    (tmp_path / "bad.txt").write_text("0 1\n1 2\n3\n")
    with pytest.raises(ScenarioError, match=r"bad.txt:3: expected two node ids, got '3'"):
        from_file("bad.txt").build(request(4, base_dir=tmp_path))
    (tmp_path / "bad.graphml").write_text("<graphml><graph><node id='a'>")
    with pytest.raises(ScenarioError, match="not valid GraphML"):
        from_file("bad.graphml").build(request(4, base_dir=tmp_path))
    (tmp_path / "g.dat").write_text("0 1\n")
    with pytest.raises(ScenarioError, match="set format: edgelist or graphml"):
        from_file("g.dat").build(request(2, base_dir=tmp_path))
    assert build_network(from_file("g.dat", "edgelist"), request(2, base_dir=tmp_path)).num_edges == 1
    with pytest.raises(ValidationError):
        FromFile.Params(path="g.dat", format="gml")
