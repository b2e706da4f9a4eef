"""valuesim analyze / compare and the figures: on real runs made here (a plain, a decision and a Shapley
run), against hand-computed values, and interval coverage on a synthetic case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import sim
from sim.analysis import compare as comparing
from sim.analysis import plots, summary
from sim.analysis.stats import mean_interval
from sim.cli import main

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "name": "small", "seed": 5, "steps": 12, "log_every": 3, "worlds": 3, "values": ["economic", "social"],
    "network": {"generator": "erdos_renyi", "params": {"mean_degree": 6}},
    "population": [{"name": "people", "count": 40, "confidence": 0.3, "rate": 0.3},
                   {"name": "ai", "kind": "ai", "count": 2, "policy": {"zealot": {"values": [0.9, 0.1]}}}],
    "dynamics": ["deffuant", {"noise": {"sigma": 0.002}}],
    "protocols": [{"broadcast": {"speakers": "ai", "audience": "people", "share": 0.1}}],
    "metrics": ["mean_values", "drift", "polarization", {"clusters": {"threshold": 0.05}}, "consensus_time",
                "diversity"],
}


def _run(tmp, overrides=(), worlds=None, tag=None):
    scenario = sim.scenario_from_dict(SMALL, list(overrides))
    return sim.run(scenario, worlds=worlds, runs_dir=tmp, tag=tag)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    out = {"a": _run(tmp, tag="a"), "b": _run(tmp, ["population.people.confidence=0.05"], tag="b"),
           "seed": _run(tmp, ["seed=6"], tag="seed")}
    out["decision"] = sim.run(str(REPO / "scenarios" / "manipulation_trial.yaml"), worlds=2, runs_dir=tmp,
                              overrides=["population.clients.count=60"])
    table = sim.shapley(sim.scenario_from_dict(SMALL, ["steps=6"]), metric="drift:people", players="ai,few=index:0:10",
                        replicates=2, runs_dir=tmp)
    out["shapley"] = Path(table.attrs["run_dir"])
    return out


def _by_hand_drift(run):
    """drift_dimension and drift per group at every snapshot, per world, from values.parquet."""
    values = run.values()
    dims = run.dimensions
    first = values[values.step == 0].set_index(["world", "agent"])[dims]
    out = {}
    for step, snap in values.groupby("step"):
        snap = snap.set_index(["world", "agent"])
        change = snap[dims] - first
        change["norm"] = np.sqrt((change[dims] ** 2).sum(axis=1))
        change["group"] = snap["group"].astype(str)
        out[step] = change.reset_index()
    return out


def test_summary_equals_hand_computed_values(runs):
    run = sim.open_run(runs["a"])
    rows = summary.summarize(run)["rows"]
    snaps = _by_hand_drift(run)
    last = max(snaps)
    final = snaps[last]
    for group, part in final.groupby("group"):
        per_world = part.groupby("world")[["economic", "social", "norm"]].mean()
        for dim in ("economic", "social"):
            x = per_world[dim].to_numpy()
            row = rows[(rows.metric == "drift_dimension") & (rows.group == group) & (rows.dimension == dim)
                       & (rows.stat == "final")].iloc[0]
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(x.mean(), abs=1e-6)
            assert row["low"] == pytest.approx(x.mean() - half, abs=1e-6)
            assert row["high"] == pytest.approx(x.mean() + half, abs=1e-6)
        # peak of the norm drift: each world's largest reading over the snapshots
        peaks = [max(snaps[s][(snaps[s].group == group) & (snaps[s].world == w)]["norm"].mean() for s in snaps)
                 for w in range(3)]
        row = rows[(rows.metric == "drift") & (rows.group == group) & (rows.stat == "peak")].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(peaks), abs=1e-6)
    # variance of everyone at the end: the mean over dimensions of the population variance (divisor n),
    # (the polarization metric's definition), averaged over worlds
    values = run.values()
    end = values[values.step == last]
    per_world = [w[["economic", "social"]].var(ddof=0).mean() for _, w in end.groupby("world")]
    row = rows[(rows.metric == "variance") & (rows.group == "all") & (rows.stat == "final")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(per_world), rel=1e-4)


def test_consensus_reached_share_and_sections(runs):
    rows = summary.summarize(runs["a"])["rows"]
    assert {"drift", "polarisation", "clusters", "consensus", "diversity"} <= set(rows.section)
    reached = rows[(rows.metric == "consensus_time") & (rows.stat == "reached")].iloc[0]
    assert 0 <= reached["mean"] <= 1 and reached["n"] == 3


def test_pooling_runs_as_seeds(runs):
    one, two = summary.summarize(runs["a"]), summary.summarize([runs["a"], runs["seed"]])
    assert one["replicates"] == 3 and two["replicates"] == 6
    key = (two["rows"].metric == "clusters") & (two["rows"].group == "all") & (two["rows"].stat == "final")
    a = sim.open_run(runs["a"]).metrics().query("metric == 'clusters' and group == 'all' and step == 12")
    b = sim.open_run(runs["seed"]).metrics().query("metric == 'clusters' and group == 'all' and step == 12")
    assert two["rows"][key]["mean"].iloc[0] == pytest.approx(np.r_[a.value, b.value].mean())
    with pytest.raises(sim.RunDirError, match="different scenarios"):
        summary.summarize([runs["a"], runs["decision"]])



def test_pooling_a_run_with_its_own_copy_counts_its_worlds_once(runs):
    """The same scenario, seed and streams give the same worlds: pooled twice they are no more seeds."""
    one, twice = summary.summarize(runs["a"]), summary.summarize([runs["a"], runs["a"]])
    assert twice["replicates"] == one["replicates"] == 3
    assert any("repeat the seed and stream" in note for note in twice["notes"])
    pd.testing.assert_frame_equal(one["rows"], twice["rows"])


def test_decision_metrics_in_the_summary(runs):
    result = summary.summarize(runs["decision"])
    rows = result["rows"]
    harmful = rows[(rows.metric == "advice.harmful_choice") & (rows.stat == "final")]
    assert set(harmful.group) == {"neutral_advisor", "covert_advisor", "strategic_advisor"}
    metrics = sim.open_run(runs["decision"]).metrics()
    covert = metrics.query("metric == 'advice.harmful_choice' and group == 'covert_advisor'")
    covert = covert[covert.step == covert.step.max()]
    row = harmful[harmful.group == "covert_advisor"].iloc[0]
    assert row["mean"] == pytest.approx(covert.value.mean()) and row["n"] == 2
    assert np.isfinite(row["low"]) and row["low"] <= row["mean"] <= row["high"]


def test_single_world_decision_uses_the_metric_own_interval(tmp_path):
    path = sim.run(str(REPO / "scenarios" / "manipulation_trial.yaml"), worlds=1, runs_dir=tmp_path,
                   overrides=["population.clients.count=60"])
    rows = summary.summarize(path)["rows"]
    row = rows[(rows.metric == "advice.shifted") & (rows.group == "covert_advisor")].iloc[0]
    m = sim.open_run(path).metrics()
    last = m[m.step == m.step.max()]
    low = last.query("metric == 'advice.shifted.low' and group == 'covert_advisor'").value.iloc[0]
    high = last.query("metric == 'advice.shifted.high' and group == 'covert_advisor'").value.iloc[0]
    assert row["n"] == 1 and (row["low"], row["high"]) == (pytest.approx(low), pytest.approx(high))


SHOPPING = REPO / "scenarios" / "principal_agent_shopping.yaml"
SMALL_SHOP = ["population.principals.count=30", "population.agents.count=30"]


def test_one_world_of_delegation_shows_its_two_way_interval_not_one_over_purchases(tmp_path, capsys,
                                                                                     monkeypatch):
    path = sim.run(str(SHOPPING), worlds=1, runs_dir=tmp_path, overrides=[*SMALL_SHOP, "steps=10"])
    result = summary.summarize(path)
    rows = result["rows"]
    m = sim.open_run(path).metrics()
    last = m[m.step == m.step.max()]
    logged = {r.metric: r.value for r in last.itertuples()}
    assert logged["delegation.steps"] == 10
    for name in ("override", "loss", "caught"):
        row = rows[(rows.metric == f"delegation.{name}") & (rows.stat == "final")].iloc[0]
        assert row["n"] == 1 and row["low"] < row["mean"] < row["high"]
        assert (row["low"], row["high"]) == (pytest.approx(logged[f"delegation.{name}.low"]),
                                             pytest.approx(logged[f"delegation.{name}.high"]))
    override = rows[rows.metric == "delegation.override"].iloc[0]
    from plugins.decisions.stats import proportion

    _, low, high = proportion(override["mean"] * 300, 300)  # Wilson over the 300 purchases, as it once was
    assert override["high"] - override["low"] > 1.3 * (high - low)
    assert not any("delegation" in note for note in result["notes"])
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "delegation.override" in out and f"{override['low']:.4g}, {override['high']:.4g}" in out

    # a run logged before the metric clustered its intervals (no delegation.steps): none, and a note saying why
    old = m[m.metric != "delegation.steps"].assign(replicate=0)
    rows = summary.summarize_metrics(old)
    row = rows[rows.metric == "delegation.override"].iloc[0]
    assert row["n"] == 1 and np.isfinite(row["mean"]) and np.isnan(row["low"]) and np.isnan(row["high"])
    (note,) = summary.interval_notes(rows, old)
    assert "over purchases" in note and "too narrow" in note and "--worlds 8" in note
    # the report's per-world decision table likewise drops such a run's delegation bounds, keeps this one's
    from sim.analysis import report

    run = sim.open_run(path)
    shown = report._decision_table(run)
    assert f"<th>delegation.override</th><td>all</td><td>{override['mean']:.4g} [" in shown
    names = [n for n in report._decision_readings(run) if n != "delegation.steps"]
    monkeypatch.setattr(report, "_decision_readings", lambda _: names)
    assert f"<th>delegation.override</th><td>all</td><td>{override['mean']:.4g}</td>" in report._decision_table(run)


def test_one_world_of_delegation_after_one_step_has_no_interval_and_says_why(tmp_path, capsys):
    path = sim.run(str(SHOPPING), worlds=1, runs_dir=tmp_path, overrides=[*SMALL_SHOP, "steps=1"])
    row = summary.summarize(path)["rows"].query("metric == 'delegation.override'").iloc[0]
    assert np.isfinite(row["mean"]) and np.isnan(row["low"])
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note: delegation.* of a single world" in out and "two steps" in out and "--worlds 8" in out
    # several worlds: Student-t over them, no note
    path = sim.run(str(SHOPPING), worlds=3, runs_dir=tmp_path, overrides=[*SMALL_SHOP, "steps=1"])
    result = summary.summarize(path)
    row = result["rows"].query("metric == 'delegation.override'").iloc[0]
    assert row["n"] == 3 and np.isfinite(row["low"]) and not result["notes"]


def test_shapley_table_in_the_summary(runs):
    result = summary.summarize(runs["shapley"])
    table = result["shapley"]
    assert set(table.player) == {"ai", "few"}
    stored = pd.read_parquet(runs["shapley"] / "shapley.parquet")
    assert np.allclose(table.sort_values("player").value, stored.sort_values("player").value)


def test_intervals_cover_the_truth_at_the_nominal_rate():
    """Synthetic worlds whose final reading is N(mu, sigma^2): the summary's 95% intervals over 5 worlds
    (Student-t; a normal quantile would cover about 88%) contain mu in about 95% of 2,000 experiments."""
    rng = np.random.default_rng(12)
    mu, worlds, experiments = 0.37, 5, 2000
    rows = []
    for e in range(experiments):
        for w in range(worlds):
            for step, value in ((0, 0.0), (10, rng.normal(mu, 0.05))):
                rows.append({"world": w, "step": step, "metric": "variance", "group": f"g{e}", "dimension": None,
                             "value": value})
    result = summary.summarize_metrics(pd.DataFrame(rows))
    final = result[result.stat == "final"]
    assert len(final) == experiments
    covered = ((final["low"] <= mu) & (mu <= final["high"])).mean()
    assert 0.93 <= covered <= 0.97


def test_mean_interval_edge_cases():
    assert np.isnan(mean_interval([])[0])
    mean, low, high, n, se = mean_interval([0.5, np.nan])
    assert mean == 0.5 and n == 1 and np.isnan(low)
    mean, low, high, n, se = mean_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and high - mean == pytest.approx(stats.t.ppf(0.975, 2) / np.sqrt(3))


def test_compare_paired_runs(runs):
    result = comparing.compare(runs["a"], runs["b"])
    assert result["paired"] is True
    final = result["final"]
    row = final[(final.metric == "clusters") & (final.group == "all")].iloc[0]
    ma = sim.open_run(runs["a"]).metrics().query("metric == 'clusters' and group == 'all' and step == 12")
    mb = sim.open_run(runs["b"]).metrics().query("metric == 'clusters' and group == 'all' and step == 12")
    d = ma.sort_values("world").value.to_numpy() - mb.sort_values("world").value.to_numpy()
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert row["diff"] == pytest.approx(d.mean())
    assert (row["diff_low"], row["diff_high"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert row["a_mean"] == pytest.approx(ma.value.mean()) and row["b_mean"] == pytest.approx(mb.value.mean())
    # confidence 0.05 against 0.3: many more clusters, far beyond the intervals
    assert row["diff"] < 0 and row["overlap"] is False and row["separated"] is True
    traj = result["trajectories"]
    clusters = traj[(traj.metric == "clusters") & (traj.group == "all")].iloc[0]
    assert clusters["steps"] == 5 and clusters["max_abs_diff"] >= abs(row["diff"]) - 1e-9


def test_compare_a_run_with_itself_finds_no_difference(runs):
    result = comparing.compare(runs["a"], runs["a"])
    diff = result["final"]["diff"].dropna()
    assert result["paired"] and len(diff) > 20 and (diff == 0).all()
    assert not result["final"]["separated"].fillna(False).any()


def test_compare_unpaired_welch(runs):
    result = comparing.compare(runs["a"], runs["seed"])
    assert result["paired"] is False
    row = result["final"].query("metric == 'variance' and group == 'all'").iloc[0]
    ma = sim.open_run(runs["a"]).metrics().query("metric == 'variance' and group == 'all' and step == 12").value
    mb = sim.open_run(runs["seed"]).metrics().query("metric == 'variance' and group == 'all' and step == 12").value
    welch = stats.ttest_ind(ma, mb, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert (row["diff_low"], row["diff_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_cli_analyze_compare_json_and_tables(runs, capsys):
    assert main(["analyze", str(runs["a"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["replicates"] == 3 and any(r["metric"] == "drift_dimension" for r in data["rows"])
    assert main(["analyze", str(runs["decision"]), str(runs["shapley"])]) == 0
    out = capsys.readouterr().out
    assert "advice.harmful_choice" in out and "shapley" in out and "people" in out
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paired"] and data["series"] and len(data["series"][0]["step"]) == 5
    assert main(["compare", str(runs["a"]), str(runs["b"])]) == 0
    assert "A - B" in capsys.readouterr().out
    assert main(["analyze", str(runs["a"] / "nope")]) == 2


def test_figures_of_real_runs(runs):
    from matplotlib.figure import Figure

    run = sim.open_run(runs["a"])
    for name in ("trajectories", "drift_heatmap", "polarization", "value_distribution"):
        fig = getattr(run.plot, name)()
        assert isinstance(fig, Figure) and fig.valuesim_caption
        assert any(ax.has_data() or ax.images for ax in fig.axes if ax.get_visible())
    fig = plots.trajectories(run, metric="drift_dimension", groups=["people"])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    bars = sim.open_run(runs["shapley"]).plot.shapley_bars()
    assert len(bars.axes[0].patches) == 2
    with pytest.raises(sim.RunDirError, match="shapley.parquet"):
        run.plot.shapley_bars()
    with pytest.raises(sim.RunDirError, match="sweep.parquet"):
        run.plot.sweep_phase()


def test_readme_analysis_section_runs(tmp_path, monkeypatch):
    import re

    readme = (REPO / "README.md").read_text()
    start = readme.index("## Analysis and sweeps")
    section = readme[start:readme.index("\n## ", start + 1)]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    text = (REPO / "scenarios" / "deffuant_clusters.yaml").read_text()
    (tmp_path / "scenarios" / "deffuant_clusters.yaml").write_text(text)
    exec(compile(block, "README analysis", "exec"), {})
    assert (tmp_path / "values.png").stat().st_size > 0
    (swept,) = (tmp_path / "runs").glob("deffuant_clusters__*__sweep")
    assert sim.open_run(swept).manifest["grid"]["points"] == 10
