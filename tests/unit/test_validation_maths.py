"""LDS and the removal test (inflab.analysis.validation) against models whose per-example
effects are known: an additive model (the loss is a sum of per-pair effects, so the exact
effects have LDS 1) and ridge regression (retrained for real on every subset, scored with
its analytic influence function)."""

from __future__ import annotations

import numpy as np
import pytest

from inflab.analysis.validation import (
    analyse,
    average_ranks,
    draw_subset,
    lds,
    plan_retrainings,
    plan_subsets,
    removal_test,
    spearman,
    subset_masks,
    top_positive,
)


def test_spearman_matches_hand_computed_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their average rank: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4).
    # Centred: (-1.0, -1.0, 0.5, 1.5) . (-1.5, -0.5, 0.5, 1.5) = 4.5; norms^2 4.5 and 5.
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant: undefined, not 0
    assert spearman([1], [2]) is None


def test_subsets_are_drawn_from_recorded_seeds() -> None:
    subsets = plan_subsets(20, 5, 0.5, seed=7)
    assert [s.seed for s in subsets] == [7, 8, 9, 10, 11]
    assert all(len(s.keep) == 10 and list(s.keep) == sorted(set(s.keep)) for s in subsets)
    # Anyone can draw subset 3 again from its seed alone.
    assert draw_subset(20, 0.5, subsets[3].seed) == subsets[3]
    assert len({s.keep for s in subsets}) == 5


@pytest.mark.parametrize(("subsets", "alpha", "n", "named"), [
    (1, 0.5, 10, "subsets"), (0, 0.5, 10, "subsets"), (4, 0.0, 10, "alpha"), (4, 1.0, 10, "alpha"),
    (4, 1.5, 10, "alpha"), (4, 0.5, 1, "training pairs"),
])
def test_bad_settings_are_refused_naming_the_setting(subsets: int, alpha: float, n: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        plan_subsets(n, subsets, alpha)


def test_additive_model_exact_effects_score_one_and_random_scores_near_zero() -> None:
    """Loss of question i after training on S = c_i - sum_{j in S} effect[i, j]: the exact
    effects predict every retraining's ranking, random scores predict nothing."""
    rng = np.random.default_rng(0)
    m, n, k = 10, 40, 64
    effects = rng.normal(size=(m, n))
    masks = subset_masks(plan_subsets(n, k, 0.5, seed=1), n)
    losses = 5.0 - masks @ effects.T
    exact = lds(effects, masks, losses, bootstrap=200)
    assert exact.mean == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in exact.per_question)
    assert exact.low == pytest.approx(1.0) and exact.high == pytest.approx(1.0)

    random = lds(rng.normal(size=(m, n)), masks, losses, bootstrap=500)
    assert abs(random.mean) < 0.15
    # One fixed random matrix has some chance correlation of its own; the interval
    # (over subsets) is about that, and it is far from the exact effects'.
    assert random.high < 0.5
    # The opposite sign predicts the opposite ranking.
    assert lds(-effects, masks, losses, bootstrap=0).mean == pytest.approx(-1.0)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def test_ridge_regression_influence_function_predicts_real_retraining() -> None:
    """Ridge regression retrained on each subset for real; scores from the influence
    function at the full fit (Koh & Liang: upweighting pair j changes question i's loss by
    -g_i^T H^-1 g_j, so the score, positive when the pair helps, is g_i^T H^-1 g_j)."""
    rng = np.random.default_rng(0)
    d, n, m, lam = 5, 30, 8, 10.0
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = x @ w_true + rng.normal(scale=0.5, size=n)
    y[:4] += rng.normal(scale=4.0, size=4)  # a few mislabelled pairs that hurt
    xe = rng.normal(size=(m, d))
    # Targets the model cannot fit exactly (each 2 off the true line), so every question's
    # loss moves smoothly with the data: the regime where a first-order prediction holds.
    ye = xe @ w_true + 2.0 * rng.choice([-1.0, 1.0], size=m)

    w = _ridge(x, y, lam)
    # Per-example loss (w.x - y)^2 / 2 (+ the prior's share); gradient residual * x.
    hessian = x.T @ x + lam * np.eye(d)
    g_train = (x @ w - y)[:, None] * x
    g_eval = (xe @ w - ye)[:, None] * xe
    influence = g_eval @ np.linalg.solve(hessian, g_train.T)  # [m, n]

    def eval_losses(keep: tuple[int, ...]) -> np.ndarray:
        idx = list(keep)
        # The prior is scaled with the subset, so a subset's fit is the full objective's.
        w_s = _ridge(x[idx], y[idx], lam * len(idx) / n)
        return 0.5 * (xe @ w_s - ye) ** 2

    matrices = {"exact": influence, "random": rng.normal(size=(m, n))}
    plan = plan_retrainings(n, m, matrices, subsets=48, alpha=0.5, removal_k=3, seed=0)
    losses = {r.key: eval_losses(r.keep) for r in plan.retrainings}
    result = analyse(plan, matrices, losses, bootstrap=300)

    exact, random = result["exact"], result["random"]
    assert exact["lds"].mean > 0.8, exact["lds"]
    assert exact["lds"].low > random["lds"].high  # the intervals do not overlap
    assert abs(random["lds"].mean) < 0.25
    # Removing a question's most helpful pairs hurts it more than removing random ones.
    assert exact["removal"].mean_over_random > 0
    assert exact["removal"].win_rate >= 0.75
    assert exact["removal"].mean_increase_top > exact["removal"].mean_increase_random


def test_plan_shares_identical_removals_and_records_what_each_took_out() -> None:
    scores = np.array([[0.5, 2.0, -1.0, 1.0], [3.0, -2.0, 0.0, -1.0]])
    plan = plan_retrainings(4, 2, {"a": scores, "b": scores * 2, "c": -np.abs(scores)}, subsets=3, alpha=0.5,
                            removal_k=2, seed=5)
    kinds = [r.kind for r in plan.retrainings]
    assert kinds[:4] == ["full", "subset", "subset", "subset"]
    assert plan.removed["a"] == [(1, 3), (0,)]  # only positive scores are removed
    assert plan.removals["a"] == plan.removals["b"]  # same pairs removed: one retraining
    assert plan.removals["c"] == [None, None]  # nothing positive: no removal for it
    by_key = {r.key: r for r in plan.retrainings}
    assert by_key[plan.removals["a"][0]].keep == (0, 2)
    assert len(by_key) == len(plan.retrainings)
    assert [s.seed for s in plan.subsets] == [5, 6, 7]


def test_top_positive_and_removal_test_by_hand() -> None:
    assert top_positive(np.array([0.1, 0.3, 0.3, -1.0, np.nan]), 2) == (1, 2)
    result = removal_test(np.array([1.0, 1.0, 1.0]), [1.5, None, 0.9], [1.2, 1.1, 1.0])
    assert result.per_question == [pytest.approx(0.3), None, pytest.approx(-0.1)]
    assert result.mean_over_random == pytest.approx(0.1)
    assert result.mean_increase_top == pytest.approx(0.2)
    assert result.mean_increase_random == pytest.approx(0.1)
    assert result.win_rate == pytest.approx(0.5)
