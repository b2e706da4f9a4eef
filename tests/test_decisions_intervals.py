"""The decision tables' intervals are honest about what is independent.

A delegation world draws one catalogue per step for all its pairs and a pair keeps its weights for all its
purchases, so purchases and pairs are clustered and only worlds on distinct random streams are independent:
``delegation_table`` / ``delegation_levels`` use cluster-robust (CR1) intervals over streams, and the
``delegation_trial`` metric's per-world intervals are two-way cluster-robust by pair and by step. An advice
world's clients draw everything of their own and nothing couples them, so the advice trial's per-arm
intervals stay over clients (Wilson) unless the worlds share streams or something else moves the clients.

The statistics are checked against a hand computation of the sandwich (numpy), and the tables by coverage
over many seeds on small scenarios: the cluster intervals cover the across-seed mean about 95% of the time,
the intervals that treat purchases (or pairs) as independent far less (asserted too, so that the scenario
keeps telling the two apart).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sim
from plugins.decisions import stats
from plugins.decisions.delegation import OUTCOMES
from plugins.decisions.metrics import (AdviceTrial, DelegationTrial, advice_table, delegation_summary,
                                       delegation_table, ratio_variances, two_way_interval)
from tests.conftest import REPO

SHOPPING = REPO / "scenarios" / "principal_agent_shopping.yaml"
TRIAL = REPO / "scenarios" / "manipulation_trial.yaml"


def _sandwich(x_matrix: np.ndarray, y: np.ndarray, clusters: np.ndarray, small_sample: float):
    """OLS coefficients and their CR1 covariance, written out: (X'X)^-1 (sum_g X_g' e_g e_g' X_g) (X'X)^-1."""
    bread = np.linalg.inv(x_matrix.T @ x_matrix)
    beta = bread @ x_matrix.T @ y
    e = y - x_matrix @ beta
    meat = np.zeros_like(bread)
    for g in np.unique(clusters):
        s = x_matrix[clusters == g].T @ e[clusters == g]
        meat += np.outer(s, s)
    return beta, small_sample * bread @ meat @ bread


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


# ---------------------------------------------------------------- the statistics, by hand


def test_the_cluster_ratio_is_the_sandwich_of_a_mean_over_the_units():
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(5), [3, 8, 2, 6, 4])  # clusters of unequal size
    units = rng.integers(1, 9, clusters.size).astype(float)  # purchases per pair
    hits = rng.binomial(units.astype(int), 0.3).astype(float)  # overrides per pair
    # one row per purchase: y is 0/1, regressed on a constant, clustered by the pair's cluster
    rows = np.repeat(np.arange(clusters.size), units.astype(int))
    y = np.concatenate([np.r_[np.ones(int(h)), np.zeros(int(u - h))] for h, u in zip(hits, units)])
    g = 5
    beta, cov = _sandwich(np.ones((y.size, 1)), y, clusters[rows], g / (g - 1) * (y.size - 1) / (y.size - 1))
    half = _t975(g - 1) * math.sqrt(cov[0, 0])
    assert stats.cluster_ratio(hits, units, clusters) == pytest.approx((beta[0], beta[0] - half, beta[0] + half, g))


def test_with_clusters_of_equal_size_the_cluster_ratio_is_student_t_over_the_clusters():
    shares = np.array([0.1, 0.25, 0.2, 0.4])
    per_cluster = stats.cluster_ratio(shares * 50, np.full(4, 50.0), np.arange(4))
    split = stats.cluster_ratio(np.repeat(shares * 25, 2), np.full(8, 25.0), np.repeat(np.arange(4), 2))
    assert per_cluster[:3] == pytest.approx(stats.mean_t(shares)) and per_cluster[3] == 4
    assert split == pytest.approx(per_cluster)  # splitting a cluster's units changes nothing


def test_the_cluster_slope_is_the_sandwich_of_the_least_squares_slope():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(6), 7)
    x = rng.uniform(size=clusters.size) + 0.3 * clusters  # x varies between clusters too
    y = 0.5 * x + rng.normal(size=6)[clusters] + 0.2 * rng.normal(size=clusters.size)  # a shock per cluster
    n, g = x.size, 6
    beta, cov = _sandwich(np.column_stack([np.ones(n), x]), y, clusters, g / (g - 1) * (n - 1) / (n - 2))
    half = _t975(g - 1) * math.sqrt(cov[1, 1])
    assert stats.cluster_slope(x, y, clusters) == pytest.approx((beta[1], beta[1] - half, beta[1] + half, g))
    # the interval that ignores the clusters is far narrower here: the per-cluster shock counts once per unit
    naive = stats.slope(x, y)
    assert naive[2] - naive[1] < 0.6 * 2 * half


def test_the_cluster_difference_is_the_delta_method_over_the_clusters():
    k1, n1 = np.array([30.0, 40, 35]), np.array([78.0, 78, 77])
    k2, n2 = np.array([20.0, 35, 25]), np.array([78.0, 77, 78])
    worlds = np.arange(3)
    r1, r2 = k1.sum() / n1.sum(), k2.sum() / n2.sum()
    e = (k1 - r1 * n1) / n1.sum() - (k2 - r2 * n2) / n2.sum()
    half = _t975(2) * math.sqrt(3 / 2 * (e**2).sum())
    assert stats.cluster_difference(k1, n1, worlds, k2, n2, worlds) == pytest.approx((r1 - r2, r1 - r2 - half,
                                                                                      r1 - r2 + half, 3))
    # an arm against itself: every world's shock cancels, the difference is exactly 0
    assert stats.cluster_difference(k1, n1, worlds, k1, n1, worlds)[:3] == pytest.approx((0, 0, 0))


def test_one_cluster_gives_no_interval():
    for result in (stats.cluster_ratio([3.0, 4.0], [10.0, 10.0], [7, 7]),
                   stats.cluster_slope([0.0, 0.5, 1.0], [0.1, 0.2, 0.4], [1, 1, 1]),
                   stats.cluster_difference([3.0], [10.0], [0], [2.0], [10.0], [0])):
        assert math.isfinite(result[0]) and math.isnan(result[1]) and math.isnan(result[2]) and result[3] == 1


# ---------------------------------------------------------------- delegation: clusters are streams


def _shopping(streams, overrides=(), count=30, steps=4):
    scenario = sim.load_scenario(SHOPPING, [f"population.principals.count={count}",
                                            f"population.agents.count={count}",
                                            "protocols.delegation.log_events=false", *overrides])
    simulation = sim.build(scenario, streams=list(streams))
    return simulation


def test_one_world_of_delegation_says_it_has_no_interval():
    simulation = _shopping([0])
    simulation.advance(4)
    _, summary = delegation_table(simulation)
    row = summary.iloc[0]
    assert row["clusters"] == 1 and "one random stream" in row["note"]
    assert math.isfinite(row["override"]) and all(math.isnan(row[f"{m}_{s}"]) for m in ("override", "loss",
                                                  "audits", "caught", "penalty", "override_slope", "loss_slope")
                                                  for s in ("low", "high"))


def test_worlds_repeating_a_stream_add_no_information_to_the_delegation_intervals():
    once, twice = _shopping([0, 1, 2]), _shopping([0, 0, 1, 1, 2, 2])
    once.advance(4)
    twice.advance(4)
    a, b = delegation_table(once)[1].iloc[0], delegation_table(twice)[1].iloc[0]
    assert a["clusters"] == b["clusters"] == 3 and b["pairs"] == 2 * a["pairs"]
    for name in ("override", "loss", "audits", "caught", "override_slope", "loss_slope"):
        # exact for the ratios; a slope's CR1 factor (N - 1) / (N - 2) moves with the number of pairs N
        assert [b[name], b[f"{name}_low"], b[f"{name}_high"]] == pytest.approx(
            [a[name], a[f"{name}_low"], a[f"{name}_high"]],
            abs=1e-12 if "slope" not in name else 0.01 * (a[f"{name}_high"] - a[f"{name}_low"])), name
    # what the old interval did: Wilson over purchases narrows as if the copies were new data
    pairs = delegation_table(twice)[0]
    wilson = stats.proportion(pairs["overrides"].sum(), pairs["purchases"].sum())
    assert wilson[2] - wilson[1] < 0.5 * (b["override_high"] - b["override_low"])


BATCHES, STREAMS, LEVELS = 200, 4, (0.0, 0.5, 1.0)


def test_the_delegation_intervals_cover_the_mean_over_seeds_about_95_percent_of_the_time():
    """200 batches, each a small sweep (three asymmetry levels on four common streams, as valuesim sweep runs
    one), all in one simulation on distinct streams per batch. Each batch's summary interval is compared
    with the mean over all 2,400 worlds (whose own error is a fifteenth of a batch's)."""
    streams = [r * STREAMS + s for r in range(BATCHES) for _ in LEVELS for s in range(STREAMS)]
    simulation = _shopping(streams, count=60, steps=3)
    simulation.vary_protocol("delegation", [{"asymmetry": a} for _ in range(BATCHES) for a in LEVELS
                                            for _ in range(STREAMS)])
    simulation.advance(3)
    pairs, _ = delegation_table(simulation)
    pairs["batch"] = pairs["stream"] // STREAMS
    middle = pairs[pairs["asymmetry"] == 0.5]
    truth = {"override": middle["overrides"].sum() / middle["purchases"].sum(),
             "loss": (middle["loss"] * middle["purchases"]).sum() / middle["purchases"].sum(),
             "override_slope": stats.slope(pairs["hidden"], pairs["override"])[0]}
    covered = dict.fromkeys(truth, 0)
    naive = {"override": 0, "override_slope": 0}  # purchases (pairs) taken as independent, as before
    for _, batch in pairs.groupby("batch"):
        level = batch[batch["asymmetry"] == 0.5]
        row, sweep = delegation_summary(level).iloc[0], delegation_summary(batch).iloc[0]
        for name, summary in (("override", row), ("loss", row), ("override_slope", sweep)):
            covered[name] += summary[f"{name}_low"] <= truth[name] <= summary[f"{name}_high"]
        _, low, high = stats.proportion(level["overrides"].sum(), level["purchases"].sum())
        naive["override"] += low <= truth["override"] <= high
        _, low, high = stats.slope(batch["hidden"], batch["override"])
        naive["override_slope"] += low <= truth["override_slope"] <= high
    for name, count in covered.items():
        assert 0.9 <= count / BATCHES <= 0.99, (name, count / BATCHES)
    assert naive["override"] / BATCHES < 0.8 and naive["override_slope"] / BATCHES < 0.9, naive


# ---------------------------------------------------------------- delegation_trial: two-way clusters in a world


def _carry_of(z: np.ndarray) -> dict:
    """The carry's totals and sums, from one world's purchases z [steps, pairs, outcomes] written out at once
    (the protocol keeps them running)."""
    step = z.sum(1)  # [steps, outcomes]
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=float))[None]  # noqa: E731
    carry = {key: as_tensor(z[:, :, k].sum(0)) for k, key in enumerate(OUTCOMES)}
    carry.update(step_sq=as_tensor((step**2).sum(0)), step_cross=as_tensor((step * step[:, :1]).sum(0)),
                 purchase_sq=as_tensor((z**2).sum((0, 1))), steps=as_tensor((step[:, 0] > 0).sum()))
    return carry


def _cgm_by_hand(z: np.ndarray, k: int) -> tuple[float, float, float]:
    """Outcome k per purchase with Cameron-Gelbach-Miller's two-way interval, from one row per purchase."""
    steps, pairs = np.nonzero(z[:, :, 0])
    y = z[steps, pairs, k]
    one = np.ones((y.size, 1))
    covariances = {}
    for name, labels in (("pair", pairs), ("step", steps), ("purchase", np.arange(y.size))):
        g = np.unique(labels).size
        beta, covariances[name] = _sandwich(one, y, labels, g / (g - 1))
    two_way = covariances["pair"][0, 0] + covariances["step"][0, 0] - covariances["purchase"][0, 0]
    variance = two_way if two_way >= 0 else max(covariances["pair"][0, 0], covariances["step"][0, 0])
    half = _t975(min(np.unique(pairs).size, np.unique(steps).size) - 1) * math.sqrt(variance)
    return beta[0], beta[0] - half, beta[0] + half


def test_the_trial_metrics_interval_is_the_two_way_sandwich_of_its_purchases():
    # one world run step by step: a purchase's outcomes are the changes of its pair's counts
    simulation = _shopping([3], ["protocols.delegation.noise=0.2"], count=12)
    carry = simulation.state.protocols["delegation"]
    steps = []
    for _ in range(6):
        before = {k: carry[k].clone() for k in OUTCOMES}
        simulation.advance(1)
        carry = simulation.state.protocols["delegation"]
        steps.append(torch.stack([carry[k] - before[k] for k in OUTCOMES], -1)[0].numpy())
    z = np.stack(steps)
    assert z[:, :, 1].sum() > 3 and np.all(z[:, :, 0] == 1)
    for key in OUTCOMES:
        assert carry[key][0].numpy() == pytest.approx(_carry_of(z)[key][0].numpy())
    for name in ("step_sq", "step_cross", "purchase_sq", "steps"):
        assert carry[name].numpy() == pytest.approx(_carry_of(z)[name].numpy()), name
    for k, key in enumerate(OUTCOMES[1:], 1):
        assert two_way_interval(carry, key)[0].tolist() == pytest.approx(_cgm_by_hand(z, k)), key


def test_a_negative_two_way_variance_falls_back_to_the_larger_one_way_variance():
    # five overrides spread over 3 steps x 5 pairs so that neither the pairs' nor the steps' totals vary much:
    # the purchases' variance then exceeds the two one-way ones together
    z = np.zeros((3, 5, len(OUTCOMES)))
    z[:, :, 0] = 1
    z[[0, 1, 1, 2, 2], [3, 1, 3, 2, 4], 1] = 1
    carry = _carry_of(z)
    v = {name: float(value[0]) for name, value in ratio_variances(carry, "overrides").items()}
    assert v["pair"] + v["step"] - v["purchase"] < 0 < v["pair"] != v["step"]
    r, low, high = two_way_interval(carry, "overrides")[0].tolist()
    assert (high - low) / 2 == pytest.approx(_t975(2) * math.sqrt(max(v["pair"], v["step"])))  # min(5, 3) - 1
    assert (r, low, high) == pytest.approx(_cgm_by_hand(z, 1))


def test_one_step_or_one_pair_gives_no_trial_interval():
    for shape in ((1, 5), (4, 1)):
        z = np.ones((*shape, len(OUTCOMES)))
        z[..., 1] = np.arange(z[..., 1].size).reshape(shape) % 2
        r, low, high = two_way_interval(_carry_of(z), "overrides")[0].tolist()
        assert math.isfinite(r) and math.isnan(low) and math.isnan(high), shape


TRIAL_WORLDS = 800


def test_the_trial_metrics_intervals_cover_the_mean_over_worlds_and_purchase_intervals_do_not():
    """800 worlds of a small scenario (30 pairs, 12 purchases each, conflict 1: pairs differ a lot), each
    world's logged interval against the mean over all of them (whose own error is a 28th of a world's).
    Two-way intervals cover about 95%; Wilson over purchases (the metric's old interval) and either one-way
    clustering alone cover far less, so the test fails if the interval ignores either clustering."""
    simulation = _shopping(range(TRIAL_WORLDS), ["protocols.delegation.conflict=1"], count=30)
    simulation.advance(12)
    readings = {r.metric: r.value[:, 0, 0] for r in DelegationTrial(DelegationTrial.Params()).observe(
        simulation.state, simulation.world, None, simulation.rng)[0]}
    carry = simulation.state.protocols["delegation"]
    assert bool((readings["delegation.steps"] == 12).all())
    coverage = {}
    for name, key in (("override", "overrides"), ("loss", "loss"), ("caught", "caught")):
        value, low, high = (readings[f"delegation.{name}{s}"] for s in ("", ".low", ".high"))
        truth = float(value.mean())
        coverage[name] = float(((low <= truth) & (truth <= high)).double().mean())
        v = ratio_variances(carry, key)
        for one in ("pair", "step"):
            half = _t975(29 if one == "pair" else 11) * v[one].sqrt()
            coverage[f"{name} by {one}"] = float(((value - half <= truth) & (truth <= value + half)).double().mean())
    for name in ("override", "loss", "caught"):
        assert 0.92 <= coverage[name] <= 0.98, coverage
    k, n = carry["overrides"].sum(1), carry["purchases"].sum(1)
    truth = float((k / n).mean())
    wilson = [stats.proportion(float(a), float(b)) for a, b in zip(k, n)]
    assert np.mean([low <= truth <= high for _, low, high in wilson]) < 0.7, coverage  # 0.575 here
    # here: two-way 0.950 / 0.941 / 0.941; by pair alone 0.76 (override), by step alone 0.86 (loss)
    assert coverage["override by pair"] < 0.85 and coverage["loss by step"] < 0.9, coverage


# ---------------------------------------------------------------- advice: clients are independent


def test_the_advice_trials_intervals_over_clients_cover_the_mean_over_worlds():
    """Each world's per-arm Wilson interval (the advice_trial metric) covers the mean over 300 worlds of one
    domain about 95% of the time: a world's clients draw everything of their own and nothing else moves them,
    so they are independent and an interval over worlds is not needed (nor possible in one world)."""
    scenario = sim.load_scenario(TRIAL, ["protocols.advice.log_dialogues=false", "population.clients.count=60"])
    simulation = sim.build(scenario, streams=[2 * s for s in range(300)])  # even streams: all financial
    simulation.advance(3)
    readings = {r.metric: r.value[..., 0] for r in AdviceTrial(AdviceTrial.Params()).observe(
        simulation.state, simulation.world, None, simulation.rng)[0]}
    for name in ("advice.harmful_choice", "advice.shifted"):
        truth = readings[name].mean(0)  # [arms]
        inside = (readings[f"{name}.low"] <= truth) & (truth <= readings[f"{name}.high"])
        coverage = inside.double().mean(0)  # per arm
        assert bool(((coverage >= 0.9) & (coverage <= 0.99)).all()), (name, coverage)


def test_the_advice_table_is_over_clients_when_they_are_independent_and_over_streams_when_worlds_repeat():
    scenario = sim.load_scenario(TRIAL, ["protocols.advice.log_dialogues=false"])
    tables = {}
    for key, streams in (("distinct", [0, 2, 1, 3]), ("repeated", [0, 2, 0, 2, 1, 3, 1, 3]), ("one", [0, 0, 1, 1])):
        simulation = sim.build(scenario, streams=streams)
        simulation.advance(3)
        tables[key] = advice_table(simulation).set_index(["domain", "advisor"])
    distinct, repeated, one = tables["distinct"], tables["repeated"], tables["one"]
    assert set(distinct["units"]) == {"clients"} and set(distinct["note"]) == {""}
    assert set(repeated["units"]) == {"streams"} and set(repeated["clusters"]) == {2}
    assert bool((repeated["n"] == 2 * distinct["n"]).all())
    # the repeated worlds are copies: over streams their intervals are those of the two distinct worlds
    carry = _distinct_carry(scenario)
    for domain, d in (("financial", 0), ("emotional", 1)):
        for arm, advisor in enumerate(("neutral", "covert", "strategic")):
            mine = (carry["arm"] == arm) & (carry["domain"] == d)[:, None]
            worlds = carry["domain"] == d
            expected = stats.cluster_ratio((mine & carry["shifted"]).sum(1).double()[worlds].numpy(),
                                           mine.sum(1).double()[worlds].numpy(), np.arange(int(worlds.sum())))
            got = repeated.loc[(domain, advisor), ["shifted", "shifted_low", "shifted_high"]].tolist()
            assert got == pytest.approx([expected[0], max(expected[1], 0), min(expected[2], 1)])
    assert bool(one["shifted_low"].isna().all()) and bool(one["uplift_high"].isna().all())
    assert all("one random stream" in note for note in one["note"])


def _distinct_carry(scenario):
    simulation = sim.build(scenario, streams=[0, 2, 1, 3])
    simulation.advance(3)
    return {k: v.cpu() for k, v in simulation.state.protocols["advice"].items()}


def test_advice_clients_moved_by_dynamics_are_not_taken_as_independent():
    scenario = sim.load_scenario(TRIAL, ["protocols.advice.log_dialogues=false", "population.clients.count=30",
                                         "dynamics=[{noise: {sigma: 0.01}}]"])
    simulation = sim.build(scenario, streams=[0, 2, 4, 1, 3, 5])
    simulation.advance(3)
    table = advice_table(simulation)
    assert set(table["units"]) == {"streams"} and set(table["clusters"]) == {3}
    assert bool(table["shifted_low"].notna().all())
