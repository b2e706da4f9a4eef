"""Shapley estimators on analytic games with known values: exactness, coverage of the reported intervals,
the axioms, Shapley versus Banzhaf, stopping rules, and agreement with shap's KernelSHAP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.shapley import estimate
from sim.shapley.estimators import all_coalitions, exact_values, minimum_budget
from sim.shapley.games import (AirportGame, FunctionGame, GloveGame, NoisyGame, UnanimityGame,
                               WeightedVotingGame)

GAMES = {
    "airport": lambda seed: AirportGame([1, 2, 2, 5, 7, 7, 9, 12]),
    "glove": lambda seed: GloveGame(3, 4),
    "voting": lambda seed: WeightedVotingGame([5, 4, 3, 2, 2, 1, 1], 10),
    "unanimity": lambda seed: UnanimityGame(7, [0, 2, 3]),
    "noisy": lambda seed: NoisyGame(AirportGame([1, 2, 2, 5, 7, 7, 9]), sigma=0.5, seed=seed, replicates=6),
}
SAMPLERS = ("permutation", "tmc", "kernel")


def coverage(game_name: str, method: str, seeds, **options) -> float:
    """Share of (seed, player) pairs whose exact value lies in the estimate's reported 95% interval."""
    covered = []
    for seed in seeds:
        game = GAMES[game_name](seed)
        exact = game.banzhaf_values() if method == "banzhaf" else game.shapley_values()
        result = estimate(game, method, seed=seed, **options)
        covered.extend(np.abs(result.values[0] - exact) <= 1.96 * result.se[0] + 1e-9)
    return float(np.mean(covered))


# ------------------------------------------------------------------ exact values


def test_exact_enumeration_equals_the_closed_forms_and_the_counting_oracles():
    for game in (AirportGame([3, 1, 4, 1, 5, 9, 2]), GloveGame(3, 4), WeightedVotingGame([5, 4, 3, 2, 2, 1, 1], 10),
                 UnanimityGame(6, [1, 4])):
        result = estimate(game, "exact")
        np.testing.assert_allclose(result.values[0], game.shapley_values(), rtol=0, atol=1e-12)
        assert result.stopped == "exact" and result.n_evaluations == 2 ** game.n
        assert np.all(result.se == 0) and abs(result.efficiency_residual[0]) < 1e-12
    np.testing.assert_allclose(GloveGame(1, 2).shapley_values(), [2 / 3, 1 / 6, 1 / 6])  # the textbook case
    np.testing.assert_allclose(AirportGame([1, 2, 3]).shapley_values(), [1 / 3, 1 / 3 + 1 / 2, 1 / 3 + 1 / 2 + 1])
    voting = WeightedVotingGame([4, 3, 2, 1, 1], 6)
    np.testing.assert_allclose(voting.shapley_values(), [0.4, 7 / 30, 7 / 30, 1 / 15, 1 / 15])
    coalitions = all_coalitions(voting.n)
    np.testing.assert_allclose(exact_values(voting.worth(coalitions), voting.n, "banzhaf"), voting.banzhaf_values())


def test_exact_on_a_noisy_game_reports_the_noise_of_v_over_replicates():
    game = NoisyGame(AirportGame([1, 2, 2, 5, 7]), sigma=0.3, seed=1, replicates=10)
    result = estimate(game, "exact")
    assert result.n_evaluations == 32 * 10 and result.noise_in_se
    assert np.all(result.se > 0)
    assert np.all(np.abs(result.values[0] - game.shapley_values()) <= 4 * result.se[0])
    alone = estimate(game, "exact", replicates=1)
    assert not alone.noise_in_se and np.all(alone.se == 0)


@pytest.mark.parametrize("game_name", sorted(GAMES))
@pytest.mark.parametrize("method", SAMPLERS)
def test_sampling_estimators_cover_the_exact_values_in_most_seeds(game_name, method):
    assert coverage(game_name, method, range(40)) >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("game_name", sorted(GAMES))
@pytest.mark.parametrize("method", SAMPLERS)
def test_sampling_estimators_cover_the_exact_values_in_most_of_200_seeds(game_name, method):
    assert coverage(game_name, method, range(200)) >= 0.9


@pytest.mark.parametrize("seeds", [range(40), pytest.param(range(200), marks=pytest.mark.slow)], ids=["40", "200"])
def test_banzhaf_by_maximum_sample_reuse_covers_the_exact_banzhaf_values(seeds):
    assert coverage("voting", "banzhaf", seeds) >= 0.9


def test_leave_one_out_is_v_of_n_minus_v_of_n_without_i():
    game = AirportGame([1, 2, 2, 5, 9])
    result = estimate(game, "loo")
    np.testing.assert_allclose(result.values[0], [0, 0, 0, 0, 4])
    assert result.efficiency_residual[0] == pytest.approx(4 - 9)


# ------------------------------------------------------------------ the axioms


def test_efficiency():
    game = WeightedVotingGame([5, 4, 3, 2, 2, 1, 1], 10)
    for method in ("exact", "permutation", "kernel"):
        assert abs(estimate(game, method, seed=3).efficiency_residual[0]) < 1e-10, method
    truncated = estimate(GloveGame(3, 4), "tmc", seed=3, tolerance=0.0)
    assert abs(truncated.efficiency_residual[0]) < 1e-10  # a monotone game loses nothing when truncated at 0


def test_symmetry():
    game = GloveGame(3, 4)
    exact = estimate(game, "exact").values[0]
    assert np.ptp(exact[:3]) < 1e-12 and np.ptp(exact[3:]) < 1e-12
    sampled = estimate(game, "permutation", seed=5, budget=4000)
    gap = abs(sampled.values[0, 0] - sampled.values[0, 1])
    assert gap <= 3 * math.hypot(sampled.se[0, 0], sampled.se[0, 1])


def test_dummy_player():
    game = UnanimityGame(6, [0, 2, 3])
    for method in ("exact", "permutation", "tmc"):
        result = estimate(game, method, seed=2)
        assert np.all(result.values[0, [1, 4, 5]] == 0) and np.all(result.se[0, [1, 4, 5]] == 0), method
    kernel = estimate(game, "kernel", seed=2, budget=3000)
    assert np.all(np.abs(kernel.values[0, [1, 4, 5]]) <= 3 * kernel.se[0, [1, 4, 5]] + 1e-12)


def test_additivity():
    a, b = AirportGame([1, 3, 3, 6, 8, 2]), WeightedVotingGame([3, 2, 2, 1, 1, 1], 6)
    both = FunctionGame(lambda c: a.worth(c) + b.worth(c), 6)
    np.testing.assert_allclose(estimate(both, "exact").values, estimate(a, "exact").values
                               + estimate(b, "exact").values, atol=1e-12)
    # the same permutations for the three games: the estimate of the sum is the sum of the estimates
    sampled = [estimate(g, "permutation", seed=7, budget=600).values for g in (both, a, b)]
    np.testing.assert_allclose(sampled[0], sampled[1] + sampled[2], atol=1e-12)


# ------------------------------------------------------------------ Shapley is not Banzhaf


def test_sampling_permutations_gives_shapley_where_sampling_coalitions_gives_banzhaf():
    game = UnanimityGame(5, [0, 1, 2])  # Shapley 1/3 on the carrier, Banzhaf 1/4
    shapley = estimate(game, "permutation", seed=1, budget=3000)
    assert np.all(np.abs(shapley.values[0, :3] - 1 / 3) <= 1.96 * shapley.se[0, :3] + 1e-12)
    assert np.all(np.abs(shapley.values[0, :3] - 1 / 4) > 5 * shapley.se[0, :3])
    banzhaf = estimate(game, "banzhaf", seed=1, budget=3000)
    assert np.all(np.abs(banzhaf.values[0, :3] - 1 / 4) <= 3 * banzhaf.se[0, :3])
    # the pitfall: a coalition containing player 0 drawn uniformly, its marginal contribution averaged
    rng = np.random.default_rng(0)
    others = rng.random((20000, 5)) < 0.5
    with_0, without_0 = others.copy(), others.copy()
    with_0[:, 0], without_0[:, 0] = True, False
    pitfall = (game.worth(with_0) - game.worth(without_0)).mean()
    assert abs(pitfall - 1 / 4) < 0.02 and abs(pitfall - 1 / 3) > 0.05


# ------------------------------------------------------------------ stopping, budget, rank stability


def test_a_standard_error_target_stops_the_sampling():
    result = estimate(AirportGame([1, 2, 2, 5, 7, 7, 9, 12, 4, 6, 3, 8, 10, 11, 13, 14]), "permutation", se=0.05,
                      seed=0)
    assert result.stopped == "se" and result.se.max() <= 0.05 and result.units >= 10


def test_the_budget_is_never_passed_and_a_budget_too_small_is_refused():
    game = AirportGame(list(range(1, 19)))
    for method in SAMPLERS + ("banzhaf",):
        result = estimate(game, method, budget=900, seed=1)
        assert result.n_evaluations <= 900 and result.stopped == "budget", method
    with pytest.raises(ValueError, match="budget of 30 evaluations is too small"):
        estimate(game, "permutation", budget=30)
    assert minimum_budget("permutation", 18, 1) == 2 + 2 * 17


def test_rank_stability_is_one_for_clear_gaps_and_lower_for_ties():
    clear = estimate(AirportGame([1, 10, 100, 1000, 10000]), "permutation", seed=0, round_size=4)
    assert clear.rounds > 10 and clear.rank_stability == 1.0
    tied = estimate(GloveGame(3, 4), "permutation", seed=0, round_size=4)
    assert tied.rank_stability < 1.0 and tied.rank_window == 10


def test_a_game_must_return_worths_of_the_right_shape():
    game = FunctionGame(lambda c: np.zeros((len(c), 3)), 4)
    with pytest.raises(ValueError, match=r"must return worths \[C, R, M\]"):
        estimate(game, "exact")
    nan = FunctionGame(lambda c: np.full(len(c), np.nan), 3)
    with pytest.raises(ValueError, match="not a finite number"):
        estimate(nan, "exact")


def test_a_game_with_several_outputs_gets_values_per_output():
    airport, voting = AirportGame([1, 2, 4, 8]), WeightedVotingGame([3, 2, 1, 1], 4)
    both = FunctionGame(lambda c: np.stack([airport.worth(c), voting.worth(c)], 1)[:, None, :], 4,
                        outputs=("airport", "voting"))
    result = estimate(both, "exact")
    np.testing.assert_allclose(result.values, [airport.shapley_values(), voting.shapley_values()], atol=1e-12)
    assert set(result.table()["output"]) == {"airport", "voting"}


def test_the_table_has_intervals_shares_and_ranks():
    table = estimate(AirportGame([1, 2, 4]), "exact").table()
    assert list(table.columns) == ["output", "player", "value", "se", "ci_low", "ci_high", "share", "rank"]
    assert table["rank"].tolist() == [3, 2, 1]
    assert table["share"].sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ another library


def test_kernelshap_of_the_shap_library_agrees_on_a_deterministic_game():
    shap = pytest.importorskip("shap")
    game = WeightedVotingGame([5, 4, 3, 2, 2, 1, 1], 10)
    explainer = shap.KernelExplainer(lambda x: game.worth(x > 0.5), np.zeros((1, game.n)))
    theirs = np.asarray(explainer.shap_values(np.ones((1, game.n)), nsamples=2 ** game.n, silent=True)).ravel()
    np.testing.assert_allclose(theirs, game.shapley_values(), atol=1e-6)
    ours = estimate(game, "kernel", seed=0, budget=6000)
    assert np.all(np.abs(ours.values[0] - theirs) <= 4 * ours.se[0])  # seven players: 4 se, not 1.96
    assert np.all(np.abs(estimate(game, "exact").values[0] - theirs) < 1e-6)
