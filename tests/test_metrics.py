"""The built-in metrics against hand-computed values and slow reference loops."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pydantic
import pytest
import scipy.stats
import torch

from plugins._pairs import component_sizes, pair_distance_sums
from plugins.metrics import Clusters, ConsensusTime, Drift, MeanValues, Polarization, sample_rows
from sim.contracts import AgentParams, Group, Network, State, Streams, World
from sim.core.valuespace import value_space


def make(values, initial=None, groups=None, active=None, step=0):
    """A World and State around ``values`` [B, N, K] (a path graph as the network)."""
    values = torch.as_tensor(values, dtype=torch.float32)
    b, n, k = values.shape
    groups = groups if groups is not None else (Group("all_agents", "human", 0, n),)
    group_index = torch.zeros(n, dtype=torch.int64)
    for i, group in enumerate(groups):
        group_index[group.rows] = i
    edges = [(i, i + 1) for i in range(n - 1)]
    rows = [[] for _ in range(n)]
    for i, j in edges:
        rows[i].append(j)
        rows[j].append(i)
    rowptr = torch.tensor([0] + list(np.cumsum([len(r) for r in rows])), dtype=torch.int64)
    network = Network(n, rowptr, torch.tensor([c for r in rows for c in r], dtype=torch.int64))
    ones = torch.ones(1, n)
    params = AgentParams(0.2 * ones, 0.3 * ones, 0 * ones, ones < 0)
    space = value_space("test", tuple(f"d{i}" for i in range(k)))
    initial = values.clone() if initial is None else torch.as_tensor(initial, dtype=torch.float32)
    honest = torch.ones(n, dtype=torch.bool)
    world = World(space, tuple(groups), network, params, initial, group_index, honest)
    active = torch.ones(b, n, dtype=torch.bool) if active is None else torch.as_tensor(active)
    return world, State(values, active, step=step)


def observe(metric, world, state, carry=None, seed=0):
    readings, carry = metric.observe(state, world, carry, Streams.of(seed, state.values.shape[0]))
    return {r.metric: r for r in readings}, carry


def whole(readings, metric):
    """The reading of world 0 for the whole population."""
    return readings[metric].value[0, -1, 0].item()


def two_groups(n_a, n_b):
    return (Group("a", "human", 0, n_a), Group("b", "llm", n_a, n_a + n_b))


def rng_values(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- mean and drift


def test_mean_values_per_group_and_all():
    values = torch.tensor([[[0.0, 1.0], [0.5, 1.0], [1.0, 0.0], [1.0, 0.5]]])
    world, state = make(values, groups=two_groups(2, 2))
    reading = observe(MeanValues(MeanValues.Params()), world, state)[0]["mean_values"]
    assert reading.scopes == ("a", "b", "all")
    assert reading.dimensions == ("d0", "d1")
    assert reading.value.dtype == torch.float64 and reading.value.device == state.values.device
    expected = torch.tensor([[[0.25, 1.0], [1.0, 0.25], [0.625, 0.625]]], dtype=torch.float64)
    torch.testing.assert_close(reading.value, expected)


def test_mean_values_skip_inactive_and_groups_that_do_not_tile():
    values = rng_values((2, 8, 3))
    active = torch.ones(2, 8, dtype=torch.bool)
    active[1, [0, 5]] = False
    groups = (Group("a", "human", 0, 3), Group("b", "ai", 3, 6))  # rows 6, 7 in no group
    world, state = make(values, groups=groups, active=active)
    value = observe(MeanValues(MeanValues.Params()), world, state)[0]["mean_values"].value
    for w in range(2):
        for s, rows in enumerate([range(0, 3), range(3, 6), range(0, 8)]):
            keep = [i for i in rows if active[w, i]]
            expected = values[w, keep].double().mean(0)
            torch.testing.assert_close(value[w, s], expected)


def test_empty_scope_is_nan():
    values = rng_values((1, 4, 2))
    active = torch.tensor([[True, True, False, False]])
    world, state = make(values, groups=two_groups(2, 2), active=active)
    value = observe(MeanValues(MeanValues.Params()), world, state)[0]["mean_values"].value
    assert torch.isnan(value[0, 1]).all() and not torch.isnan(value[0, 0]).any()


def test_drift_of_a_known_shift():
    initial = torch.full((1, 4, 2), 0.5)
    shift = torch.tensor([[[0.3, 0.4], [0.3, 0.4], [0.1, 0.0], [-0.1, 0.0]]])
    world, state = make(initial + shift, initial=initial, groups=two_groups(2, 2))
    readings = observe(Drift(Drift.Params()), world, state)[0]
    drift = readings["drift"].value[0, :, 0]
    torch.testing.assert_close(drift, torch.tensor([0.5, 0.1, 0.3], dtype=torch.float64))
    per_dimension = readings["drift_dimension"].value[0]
    expected = torch.tensor([[0.3, 0.4], [0.0, 0.0], [0.15, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(per_dimension, expected)
    # group b moved in opposite directions: its mean did not move
    shift_of_mean = readings["mean_shift"].value[0, :, 0]
    torch.testing.assert_close(shift_of_mean, torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64))
    assert readings["drift"].dimensions == (None,)
    assert readings["drift_dimension"].dimensions == ("d0", "d1")


# --------------------------------------------------------------------------- polarization


def test_variance_of_a_known_set():
    values = torch.tensor([[[0.0, 0.5], [1.0, 0.5], [0.0, 0.5], [1.0, 0.5]]])
    world, state = make(values, groups=two_groups(2, 2))
    readings = observe(Polarization(Polarization.Params()), world, state)[0]
    # dimension 0 has variance 1/4 (divisor n), dimension 1 none
    expected = torch.full((3,), 0.125, dtype=torch.float64)
    torch.testing.assert_close(readings["variance"].value[0, :, 0], expected)


def test_pooled_moments_match_direct_computation():
    values = torch.cat([0.2 * rng_values((2, 50, 3), 1), 0.7 + 0.3 * rng_values((2, 70, 3), 2)], 1)
    active = rng_values((2, 120), 3) > 0.2
    world, state = make(values, groups=two_groups(50, 70), active=active)
    readings = observe(Polarization(Polarization.Params()), world, state)[0]
    for w in range(2):
        x = values[w][active[w]].double().numpy()
        torch.testing.assert_close(readings["variance"].value[w, 2, 0].item(), x.var(0).mean())


def slow_mean_distance(points):
    n, k = len(points), len(points[0])
    total = sum(math.dist(points[i], points[j]) for i in range(n) for j in range(n) if i != j)
    return total / (n * (n - 1)) / math.sqrt(k)


def test_pairwise_distance_exact_matches_a_double_loop():
    values = rng_values((2, 30, 3), 4)
    active = torch.ones(2, 30, dtype=torch.bool)
    active[0, [2, 17]] = False
    world, state = make(values, groups=two_groups(12, 18), active=active)
    value = observe(Polarization(Polarization.Params()), world, state)[0]["pairwise_distance"].value
    for w in range(2):
        for s, rows in enumerate([range(0, 12), range(12, 30), range(0, 30)]):
            points = [values[w, i].double().tolist() for i in rows if active[w, i]]
            assert value[w, s, 0].item() == pytest.approx(slow_mean_distance(points), abs=1e-12)


def test_pairwise_distance_sampled_estimate_is_close():
    values = rng_values((1, 5000, 3), 5) ** 2
    world, state = make(values, groups=two_groups(1000, 4000))
    exact = observe(Polarization(Polarization.Params(exact_max=5000)), world, state)[0]
    sampled = observe(Polarization(Polarization.Params()), world, state, seed=1)[0]
    again = observe(Polarization(Polarization.Params()), world, state, seed=1)[0]
    exact, estimate = exact["pairwise_distance"].value, sampled["pairwise_distance"].value
    assert torch.equal(estimate, again["pairwise_distance"].value)  # the generator decides
    assert estimate[0, 0, 0] == exact[0, 0, 0]  # 1000 agents: exact in both
    torch.testing.assert_close(estimate, exact, atol=0.006, rtol=0)
    assert not torch.equal(estimate[0, 1:], exact[0, 1:])


def test_pairwise_distance_sampled_respects_the_active_mask():
    values = torch.zeros(1, 3000, 2)
    values[0, 1000:] = 1.0
    active = torch.zeros(1, 3000, dtype=torch.bool)
    active[0, :1000] = True  # all active agents agree
    world, state = make(values, active=active)
    value = observe(Polarization(Polarization.Params()), world, state)[0]["pairwise_distance"].value
    assert value[0, :, 0].tolist() == [0.0, 0.0]


def reference_bimodality(x):
    n = len(x)
    g = scipy.stats.skew(x, bias=False)
    kappa = scipy.stats.kurtosis(x, bias=False)
    return (g**2 + 1) / (kappa + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def test_bimodality_matches_scipy():
    values = rng_values((2, 40, 3), 6) ** 3
    active = torch.ones(2, 40, dtype=torch.bool)
    active[1, :5] = False
    world, state = make(values, groups=two_groups(15, 25), active=active)
    value = observe(Polarization(Polarization.Params()), world, state)[0]["bimodality"].value
    for w in range(2):
        for s, rows in enumerate([range(0, 15), range(15, 40), range(0, 40)]):
            x = values[w, [i for i in rows if active[w, i]]].double().numpy()
            expected = [reference_bimodality(x[:, d]) for d in range(3)]
            np.testing.assert_allclose(value[w, s].numpy(), expected, rtol=1e-9)


def test_bimodality_separates_two_modes_from_one():
    g = torch.Generator().manual_seed(7)
    two_modes = torch.cat([c + 0.05 * torch.randn(500, generator=g) for c in (0.2, 0.8)])
    one_mode = (0.5 + 0.1 * torch.randn(1000, generator=g)).clamp(0, 1)
    flat = torch.full((1000,), 0.3)
    values = torch.stack([two_modes, one_mode, flat], 1)[None].clamp(0, 1)
    world, state = make(values)
    value = observe(Polarization(Polarization.Params()), world, state)[0]["bimodality"].value[0, 0]
    assert value[0] > 5 / 9 > value[1]
    assert torch.isnan(value[2])  # no variance


def test_bimodality_needs_four_agents():
    world, state = make(rng_values((1, 3, 1)))
    readings = observe(Polarization(Polarization.Params()), world, state)[0]
    assert torch.isnan(readings["bimodality"].value).all()
    assert not torch.isnan(readings["variance"].value).any()


# --------------------------------------------------------------------------- clusters


def clumps(centres, counts, k, seed=0, width=0.01):
    """Agents around each centre (a scalar, repeated over k dimensions), jittered within +-width."""
    g = torch.Generator().manual_seed(seed)
    parts = [c + width * (2 * torch.rand(m, k, generator=g) - 1) for c, m in zip(centres, counts)]
    return torch.cat(parts)[torch.randperm(sum(counts), generator=g)][None]


@pytest.mark.parametrize("k", [1, 3])
def test_three_separate_clumps_are_three_clusters(k):
    values = clumps([0.1, 0.5, 0.9], [50, 30, 20], k)
    world, state = make(values, groups=two_groups(40, 60))
    readings = observe(Clusters(Clusters.Params()), world, state)[0]
    assert readings["clusters"].scopes == ("a", "b", "all")
    assert readings["clusters"].value[0, 2, 0].item() == 3
    assert readings["largest_cluster"].value[0, 2, 0].item() == pytest.approx(0.5)


@pytest.mark.parametrize("k", [1, 3])
def test_a_chain_of_close_agents_is_one_cluster(k):
    line = torch.linspace(0, 1, 101)[:, None].expand(101, k)  # neighbours 0.01 apart
    world, state = make(line[None])
    readings = observe(Clusters(Clusters.Params(threshold=0.011)), world, state)[0]
    assert whole(readings, "clusters") == 1
    readings = observe(Clusters(Clusters.Params(threshold=0.009)), world, state)[0]
    assert whole(readings, "clusters") == 0  # 101 singletons, each under 1%
    readings = observe(Clusters(Clusters.Params(threshold=0.009, min_size=1)), world, state)[0]
    assert whole(readings, "clusters") == 101


@pytest.mark.parametrize("k", [1, 3])
def test_min_size_filters_small_clusters(k):
    values = clumps([0.1, 0.5, 0.9], [100, 96, 4], k)
    world, state = make(values)

    def count(**params):
        return whole(observe(Clusters(Clusters.Params(**params)), world, state)[0], "clusters")

    assert count() == 3  # 4 agents = 2% >= 1%
    assert count(min_size=0.05) == 2
    assert count(min_size=4) == 3
    assert count(min_size=5) == 2


def test_clusters_ignore_inactive_agents():
    values = clumps([0.1, 0.9], [50, 50], 1)
    active = (values[..., 0] < 0.5)
    world, state = make(values, active=active)
    readings = observe(Clusters(Clusters.Params()), world, state)[0]
    assert whole(readings, "clusters") == 1
    assert whole(readings, "largest_cluster") == 1.0


def test_clusters_sample_large_scopes():
    values = clumps([0.1, 0.5, 0.9], [15000, 9000, 6000], 3, seed=1)
    world, state = make(values, groups=two_groups(10000, 20000))
    readings = observe(Clusters(Clusters.Params(sample=1000)), world, state, seed=2)[0]
    assert readings["clusters"].value[0, :, 0].tolist() == [3, 3, 3]
    assert readings["largest_cluster"].value[0, 2, 0].item() == pytest.approx(0.5, abs=0.06)
    again = observe(Clusters(Clusters.Params(sample=1000)), world, state, seed=2)[0]
    assert torch.equal(readings["largest_cluster"].value, again["largest_cluster"].value)


def test_clusters_sample_scales_a_count_min_size_to_the_scope():
    values = clumps([0.1, 0.9], [9000, 1000], 2, seed=3)
    world, state = make(values)

    def count(min_size):
        metric = Clusters(Clusters.Params(sample=500, min_size=min_size))
        return whole(observe(metric, world, state)[0], "clusters")

    assert count(500) == 2  # the small clump holds about 1000 agents
    assert count(2000) == 1


# --------------------------------------------------------------------------- consensus


def test_consensus_time_is_kept_in_carry():
    spread_out = torch.tensor([[[0.1], [0.9]], [[0.5], [0.505]]])
    metric = ConsensusTime(ConsensusTime.Params())
    world, state = make(spread_out, step=3)
    readings, carry = observe(metric, world, state)
    value = readings["consensus_time"].value
    assert readings["consensus_time"].scopes == ("all",) and value.shape == (2, 1, 1)
    assert math.isnan(value[0, 0, 0]) and value[1, 0, 0] == 3.0
    assert carry["first_step"].tolist() == [-1, 3]
    assert readings["consensus"].value.flatten().tolist() == [0.0, 1.0]

    together = torch.tensor([[[0.5], [0.501]], [[0.1], [0.9]]])  # world 1 leaves consensus
    world, state = make(together, step=8)
    readings, carry = observe(metric, world, state, carry)
    assert readings["consensus_time"].value.flatten().tolist() == [8.0, 3.0]
    assert carry["first_step"].dtype == torch.int64 and carry["first_step"].tolist() == [8, 3]
    assert readings["consensus"].value.flatten().tolist() == [1.0, 0.0]
    spread = readings["spread"].value.flatten()
    torch.testing.assert_close(spread, torch.tensor([0.001, 0.8], dtype=torch.float64), atol=1e-6, rtol=0)


def test_consensus_uses_the_largest_spread_over_dimensions_and_active_agents():
    values = torch.tensor([[[0.5, 0.5], [0.505, 0.52], [0.0, 1.0]]])
    metric = ConsensusTime(ConsensusTime.Params())
    world, state = make(values, active=torch.tensor([[True, True, False]]))
    readings, _ = observe(metric, world, state)
    assert readings["spread"].value.item() == pytest.approx(0.02, abs=1e-6)
    assert readings["consensus"].value.item() == 0.0
    readings, _ = observe(ConsensusTime(ConsensusTime.Params(tolerance=0.03)), world, state)
    assert readings["consensus_time"].value.item() == 0.0


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", [MeanValues, Drift, Polarization, Clusters, ConsensusTime])
def test_params_are_strict(cls):
    with pytest.raises(pydantic.ValidationError):
        cls.Params(not_a_field=1)


def test_bad_parameter_values_are_rejected():
    with pytest.raises(pydantic.ValidationError):
        Clusters.Params(threshold=0)
    with pytest.raises(pydantic.ValidationError):
        Polarization.Params(exact_max=1)
    with pytest.raises(pydantic.ValidationError):
        ConsensusTime.Params(tolerance=-0.1)


@pytest.mark.parametrize("cls", [MeanValues, Drift, Polarization, Clusters])
def test_readings_are_shaped_batch_scope_dimension(cls):
    values = rng_values((3, 20, 4), 9)
    world, state = make(values, groups=two_groups(8, 12))
    readings, _ = observe(cls(cls.Params()), world, state)
    for reading in readings.values():
        assert reading.scopes == ("a", "b", "all")
        assert reading.value.shape == (3, 3, len(reading.dimensions))
        assert reading.value.dtype == torch.float64 and reading.value.device == state.values.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [MeanValues, Drift, Polarization, Clusters, ConsensusTime])
def test_cuda_readings_match_cpu(cls):
    values = clumps([0.2, 0.8], [3000, 2000], 3, seed=4)
    active = rng_values((1, 5000), 5) > 0.1
    world, state = make(values, initial=values.flip(1), groups=two_groups(2000, 3000), active=active)
    cuda_world = dataclasses.replace(
        world, initial=world.initial.cuda(), group_index=world.group_index.cuda(),
        network=world.network.to("cuda"), params=world.params.to("cuda"),
    )
    cuda_state = State(state.values.cuda(), state.active.cuda(), step=state.step)
    metric = cls(cls.Params())
    on_cpu, on_cuda = observe(metric, world, state)[0], observe(metric, cuda_world, cuda_state)[0]
    for name, reading in on_cpu.items():
        assert on_cuda[name].value.device.type == "cuda"  # readings stay on the device
        torch.testing.assert_close(on_cuda[name].value.cpu(), reading.value, equal_nan=True, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- slow references


def linked(a, b, threshold):
    """The metric's link rule: sum_k (a_k - b_k)^2 <= K threshold^2, float64 from float32."""
    d2 = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    return d2 <= threshold**2 * len(a)


def reference_cluster_sizes(points, threshold):
    """Sizes of the single-linkage components of ``points`` (lists), by a loop over all pairs."""
    parent = list(range(len(points)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            if linked(points[i], points[j], threshold):
                parent[find(i)] = find(j)
    sizes = {}
    for i in range(len(points)):
        sizes[find(i)] = sizes.get(find(i), 0) + 1
    return sorted(sizes.values())


def reference_clusters(sizes, members, scope_size, min_size):
    """(clusters, largest share) from component sizes, as the docstring of Clusters says."""
    if scope_size == 0:
        return math.nan, math.nan
    counted = [s for s in sizes if (s / members >= min_size if min_size < 1 else s / members * scope_size >= min_size)]
    return len(counted), max(sizes) / members


SCOPES = [("a", range(0, 12)), ("b", range(12, 30)), ("all", range(0, 30))]


def absent_world(k, seed=0):
    """B = 3 worlds of 30 agents in two groups: world 0 all present, world 1 some absent, world 2 group b absent."""
    values = clumps([0.2, 0.26, 0.7], [10, 10, 10], k, seed=seed, width=0.03)[0]
    values = torch.stack([values, values.flip(0), values.roll(7, 0)])
    active = torch.ones(3, 30, dtype=torch.bool)
    active[1, [0, 3, 13, 29]] = False
    active[2, 12:] = False
    return values, active


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("min_size", [0.05, 3])
def test_clusters_match_a_slow_reference_with_absent_agents(k, min_size):
    values, active = absent_world(k, seed=k)
    world, state = make(values, groups=two_groups(12, 18), active=active)
    readings = observe(Clusters(Clusters.Params(threshold=0.04, min_size=min_size)), world, state)[0]
    for w in range(3):
        for s, (_, rows) in enumerate(SCOPES):
            points = [values[w, i].tolist() for i in rows if active[w, i]]
            sizes = reference_cluster_sizes(points, 0.04) if points else []
            expected = reference_clusters(sizes, len(points), len(points), min_size)
            got = (readings["clusters"].value[w, s, 0].item(), readings["largest_cluster"].value[w, s, 0].item())
            np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert math.isnan(readings["clusters"].value[2, 1, 0]) and not math.isnan(readings["clusters"].value[2, 2, 0])


def test_sampled_clusters_are_the_components_of_the_sample():
    values = clumps([0.1, 0.14, 0.5, 0.9], [300, 300, 250, 150], 3, seed=8, width=0.03).expand(2, -1, -1).clone()
    values[1] = values[1].flip(0)
    active = rng_values((2, 1000), 9) > 0.3
    world, state = make(values, groups=two_groups(400, 600), active=active)
    metric = Clusters(Clusters.Params(sample=150, min_size=0.02))
    streams = Streams.of(3, 2)
    readings = {r.metric: r for r in metric.observe(state, world, None, streams)[0]}
    for s, (name, rows) in enumerate([("a", range(0, 400)), ("b", range(400, 1000)), ("all", range(0, 1000))]):
        picked, valid = sample_rows(active[:, rows], 150, streams, f"clusters/{name}/sample")
        for w in range(2):
            assert valid[w].all() and active[w, rows.start + picked[w]].all()  # only active agents are sampled
            assert len(set(picked[w].tolist())) == 150
            points = [values[w, rows.start + i].tolist() for i in picked[w].tolist()]
            sizes = reference_cluster_sizes(points, 0.05)
            expected = reference_clusters(sizes, 150, int(active[w, rows].sum()), 0.02)
            got = (readings["clusters"].value[w, s, 0].item(), readings["largest_cluster"].value[w, s, 0].item())
            np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["numba", "torch"])
def test_both_linkage_kernels_match_the_reference(kernel):
    g = torch.Generator().manual_seed(11)
    values = torch.rand(3, 60, 5, generator=g) * 0.3  # dense enough for chains and several components
    rows = torch.stack([torch.randperm(60, generator=g)[:50] for _ in range(3)])
    valid = torch.rand(3, 50, generator=g) > 0.2
    offsets = [0, 20, 20, 50]  # an empty segment too
    sizes = component_sizes(values, rows, valid, offsets, 0.1**2 * 5, kernel=kernel)
    assert sizes.shape == (3, 50) and sizes.dtype == torch.int64
    for w in range(3):
        for lo, hi in zip(offsets[:-1], offsets[1:]):
            points = [values[w, rows[w, c]].tolist() for c in range(lo, hi) if valid[w, c]]
            got = sorted(v for v in sizes[w, lo:hi].tolist() if v)
            assert got == (reference_cluster_sizes(points, 0.1) if points else [])


@pytest.mark.parametrize("kernel", ["numba", "torch"])
def test_both_pair_distance_kernels_match_a_double_loop(kernel):
    g = torch.Generator().manual_seed(12)
    values = torch.rand(2, 25, 3, generator=g)
    rows = torch.arange(25).expand(2, 25)
    valid = torch.rand(2, 25, generator=g) > 0.3
    sums = pair_distance_sums(values, rows, valid, [0, 10, 25], kernel=kernel)
    for w in range(2):
        for s, (lo, hi) in enumerate([(0, 10), (10, 25)]):
            points = [values[w, i].double().tolist() for i in range(lo, hi) if valid[w, i]]
            expected = sum(math.dist(p, q) for i, p in enumerate(points) for q in points[i + 1:])
            assert sums[w, s].item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- absent agents


ALL_METRICS = [MeanValues, Drift, Polarization, Clusters, ConsensusTime]


@pytest.mark.parametrize("cls", ALL_METRICS)
def test_an_absent_agent_is_not_counted(cls):
    values, active = absent_world(3)
    initial = rng_values((3, 30, 3), 13)
    world, state = make(values, initial=initial, groups=two_groups(12, 18), active=active)
    corner = 1 - values.round()  # absent agents jump to the far corner ...
    chain = corner.clone()  # ... or, in world 2, would bridge the clumps at 0.26 and 0.7
    chain[:, 12:] = torch.linspace(0.2, 0.7, 18)[None, :, None]
    params = cls.Params(exact_max=10, sample_pairs=500) if cls is Polarization else cls.Params()
    first = observe(cls(params), world, state)[0]
    for elsewhere in (corner, chain):
        _, moved = make(torch.where(active[..., None], values, elsewhere), initial=initial,
                        groups=two_groups(12, 18), active=active)
        second = observe(cls(params), world, moved)[0]
        for name, reading in first.items():
            torch.testing.assert_close(second[name].value, reading.value, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("cls", ALL_METRICS)
def test_a_group_absent_from_one_world_reads_nan_there(cls):
    values, active = absent_world(3)
    world, state = make(values, initial=rng_values((3, 30, 3), 14), groups=two_groups(12, 18), active=active)
    for reading in observe(cls(cls.Params()), world, state)[0].values():
        value = reading.value
        if reading.scopes == ("a", "b", "all"):
            assert torch.isnan(value[2, 1]).all()  # group b is absent from world 2
            ok = [(w, s) for w in range(3) for s in range(3) if (w, s) != (2, 1)]
        else:
            ok = [(w, 0) for w in range(3)]
        if reading.metric in ("bimodality", "consensus_time"):
            continue  # these may be NaN where agents are present
        for w, s in ok:
            assert not torch.isnan(value[w, s]).any(), (reading.metric, w, s)


@pytest.mark.parametrize("cls", ALL_METRICS)
def test_a_world_without_active_agents_reads_nan(cls):
    values = rng_values((2, 10, 2), 15)
    active = torch.ones(2, 10, dtype=torch.bool)
    active[1] = False
    world, state = make(values, groups=two_groups(4, 6), active=active)
    for reading in observe(cls(cls.Params()), world, state)[0].values():
        assert torch.isnan(reading.value[1]).all(), reading.metric
        if reading.metric not in ("bimodality", "consensus_time"):
            assert not torch.isnan(reading.value[0]).any(), reading.metric


def reference_spread(points):
    return max(max(p[d] for p in points) - min(p[d] for p in points) for d in range(len(points[0])))


def test_drift_and_consensus_match_slow_references_with_absent_agents():
    values, active = absent_world(3)
    initial = rng_values((3, 30, 3), 16)
    world, state = make(values, initial=initial, groups=two_groups(12, 18), active=active)
    drift = observe(Drift(Drift.Params()), world, state)[0]["drift"].value
    spread = observe(ConsensusTime(ConsensusTime.Params()), world, state)[0]["spread"].value
    for w in range(3):
        for s, (_, rows) in enumerate(SCOPES):
            present = [i for i in rows if active[w, i]]
            if not present:
                continue
            moved = [math.dist(values[w, i].double().tolist(), initial[w, i].double().tolist()) for i in present]
            assert drift[w, s, 0].item() == pytest.approx(sum(moved) / len(moved), rel=1e-6)
        points = [values[w, i].tolist() for i in range(30) if active[w, i]]
        assert spread[w, 0, 0].item() == pytest.approx(reference_spread(points), abs=1e-7)
