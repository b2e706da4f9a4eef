"""Shapley benchmarks (not tests).

1. Exact Shapley values of 12 influencer groups in a 10^4-agent scenario: all 4096 coalitions as worlds
   of batches (``sim.shapley``'s simulation game) against one ``sim.run`` per coalition (a scenario in
   which the groups outside the coalition act by their baseline policy, ``honest``). One ``sim.run``
   per coalition is timed on a sample of coalitions and extrapolated to 4096; the sampled runs' worths
   are checked to equal the batched ones bit for bit.
2. Error against the exact values versus the number of evaluations for each estimator on a 20-player
   weighted voting game (exact values by counting): a plot in ``benchmarks/results/shapley_error.png``
   and a Markdown table on stdout. Banzhaf is measured against the exact Banzhaf values (its target).

    python benchmarks/shapley.py            # both (a few minutes on 2 cores)
    python benchmarks/shapley.py --quick    # smaller: 6 groups, fewer seeds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sim  # before torch: the thread settings (DEVELOPERS.md)

import numpy as np

from sim.shapley import WeightedVotingGame, estimate
from sim.shapley.estimators import all_coalitions
from sim.shapley.players import parse_players
from sim.shapley.simulation import Null, SimulationGame, Worth

RESULTS = Path(__file__).resolve().parent / "results"
METRIC = "mean_values:people:traditional_secular"


def influencer_scenario(groups: int, agents: int = 10_000, steps: int = 20) -> sim.Scenario:
    """People and ``groups`` zealot groups of 10 with goals spread over the value square."""
    rng = np.random.default_rng(0)
    population = [{"name": "people", "count": agents - 10 * groups, "init": {"dist": "uniform", "low": 0.2,
                                                                              "high": 0.8},
                   "confidence": 0.3, "rate": 0.3}]
    for g in range(groups):
        goal = [round(float(x), 3) for x in rng.uniform(0.1, 0.9, 2)]
        population.append({"name": f"g{g:02d}", "count": 10, "zealots": 1.0, "confidence": 0.3, "rate": 0.3,
                           "policy": {"zealot": {"values": goal}}})
    return sim.scenario_from_dict({
        "name": "shapley_bench", "seed": 1, "steps": steps, "log_every": steps, "values": "wvs2",
        "network": {"generator": "erdos_renyi", "params": {"mean_degree": 10}}, "population": population,
        "dynamics": ["deffuant"], "metrics": ["mean_values"]})


def batched_versus_runs(groups: int, sample: int) -> dict:
    scenario = influencer_scenario(groups)
    names = [f"g{g:02d}" for g in range(groups)]
    players = parse_players(",".join(names), ["people", *names], scenario.spec.num_agents, ("a", "b"))
    game = SimulationGame(scenario, players, Worth.parse(METRIC), Null.parse("baseline:honest"), replicates=1)
    coalitions = all_coalitions(groups)
    start = time.perf_counter()
    worths = game(coalitions, 1)[:, 0, 0]
    batched = time.perf_counter() - start
    values = estimate(_Fixed(game, worths), "exact").values[0]

    chosen = np.random.default_rng(1).choice(len(coalitions), size=sample, replace=False)
    base = scenario.to_dict()
    runs_dir = Path(tempfile.mkdtemp(prefix="shapley-bench-"))
    start = time.perf_counter()
    singles = []
    for index in chosen:
        data = {**base, "population": [dict(g) for g in base["population"]]}
        for g, inside in zip(data["population"][1:], coalitions[index]):
            if not inside:
                g["policy"] = "honest"
        path = sim.run(sim.scenario_from_dict(data, base_dir=scenario.base_dir), runs_dir=runs_dir)
        final = sim.open_run(path).metrics().query(
            "metric == 'mean_values' and group == 'people' and dimension == 'traditional_secular'")
        singles.append(final[final["step"] == scenario.spec.steps]["value"].item())
    per_run = (time.perf_counter() - start) / sample
    same = bool(np.array_equal(np.array(singles), worths[chosen]))
    return {"groups": groups, "coalitions": len(coalitions), "agents": scenario.spec.num_agents,
            "steps": scenario.spec.steps, "batched_s": batched, "per_run_s": per_run,
            "runs_s": per_run * len(coalitions), "speedup": per_run * len(coalitions) / batched,
            "identical": same, "batch": game.batch, "values": values, "names": names}


class _Fixed:
    """The worths already computed, as a deterministic game (for the exact values)."""

    deterministic, replicates, outputs = True, 1, ("worth",)

    def __init__(self, game, worths):
        self.players = game.players
        self._worths = {row.tobytes(): w for row, w in zip(np.packbits(all_coalitions(len(game.players)), 1), worths)}

    def __call__(self, coalitions, replicates):
        return np.array([self._worths[row.tobytes()] for row in np.packbits(coalitions, 1)])


def error_curves(seeds: int, budgets: list[int]) -> tuple[dict, WeightedVotingGame]:
    rng = np.random.default_rng(7)
    weights = rng.integers(1, 10, size=20)
    game = WeightedVotingGame(weights.tolist(), int(weights.sum() // 2 + 1))
    targets = {"shapley": game.shapley_values(), "banzhaf": game.banzhaf_values()}
    curves: dict[str, list[float]] = {}
    for method in ("permutation", "tmc", "kernel", "banzhaf"):
        exact = targets["banzhaf" if method == "banzhaf" else "shapley"]
        curves[method] = []
        for budget in budgets:
            errors = [np.sqrt(np.mean((estimate(game, method, budget=budget, seed=s).values[0] - exact) ** 2))
                      for s in range(seeds)]
            curves[method].append(float(np.mean(errors)))
    return curves, game


def plot(curves: dict, budgets: list[int], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, errors in curves.items():
        label = "banzhaf (vs exact Banzhaf)" if method == "banzhaf" else method
        ax.loglog(budgets, errors, marker="o", label=label)
    ax.set_xlabel("evaluations (coalitions)")
    ax.set_ylabel("RMSE against the exact values")
    ax.set_title("20-player weighted voting game")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    groups, sample, seeds = (6, 8, 4) if args.quick else (12, 24, 10)
    budgets = [500, 1000, 2000, 5000, 10000, 20000] + ([] if args.quick else [50000])

    r = batched_versus_runs(groups, sample)
    print(f"exact Shapley, {r['groups']} groups, {r['coalitions']} coalitions, {r['agents']} agents, "
          f"{r['steps']} steps, 1 replicate:")
    print(f"  batched worlds ({r['batch']} per batch): {r['batched_s']:.1f} s")
    print(f"  one sim.run per coalition: {r['per_run_s']:.2f} s each (mean of {sample}), "
          f"{r['runs_s']:.0f} s for all {r['coalitions']} (extrapolated)")
    print(f"  speed-up {r['speedup']:.0f}x; sampled runs' worths identical to the batched ones: {r['identical']}")
    top = np.argsort(-r["values"])[:3]
    print("  largest values: " + ", ".join(f"{r['names'][i]} {r['values'][i]:.4f}" for i in top))

    curves, _ = error_curves(seeds, budgets)
    file = RESULTS / "shapley_error.png"
    plot(curves, budgets, file)
    print(f"\nRMSE against exact values, 20-player weighted voting game, mean of {seeds} seeds ({file}):\n")
    print("| evaluations | " + " | ".join(curves) + " |")
    print("| --- | " + " | ".join("---" for _ in curves) + " |")
    for i, budget in enumerate(budgets):
        print(f"| {budget} | " + " | ".join(f"{curves[m][i]:.4f}" for m in curves) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
