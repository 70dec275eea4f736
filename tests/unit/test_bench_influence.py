"""The influence benchmark's own arithmetic: recall@k, Spearman's rho, BM25, the DataInf
reference formula, the generated --scale workload and the targets summary. Fast: no model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds benchmarks/

from benchmarks import metrics  # noqa: E402


# --------------------------------------------------------------------------- recall@k
def test_recall_at_k_counts_hits_in_the_top_k():
    scores = np.array([
        [9.0, 8.0, 1.0, 0.0, 7.0],  # top-2: 0, 1
        [0.0, 1.0, 2.0, 3.0, 4.0],  # top-2: 4, 3
    ])
    related = [[0, 2], [3, 4]]
    assert metrics.recall_at_k(scores, related, k=2) == pytest.approx((1 / 2 + 2 / 2) / 2)
    # Fewer related items than k: divided by |related|, so a perfect ranking scores 1.
    assert metrics.recall_at_k(scores, [[0], [4]], k=2) == 1.0


def test_recall_at_k_skips_rows_without_ground_truth_and_breaks_ties_by_index():
    scores = np.zeros((2, 4))
    assert metrics.recall_at_k(scores, [[0, 1], []], k=2) == 1.0  # ties: lowest indices first
    with pytest.raises(ValueError):
        metrics.recall_at_k(scores, [[], []], k=2)


# --------------------------------------------------------------------------- Spearman
def test_spearman_is_one_for_monotone_transforms_and_minus_one_for_reversals():
    x = np.array([[0.1, 3.0, -2.0], [5.0, 4.0, 0.0]])
    assert metrics.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert metrics.spearman(x, -x) == pytest.approx(-1.0)
    assert metrics.spearman_rows(x, 2 * x + 1) == pytest.approx(1.0)


def test_spearman_matches_the_textbook_formula_and_handles_ties():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    d = np.array([1, -1, 1, -1, 0])
    n = len(a)
    assert metrics.spearman(a, b) == pytest.approx(1 - 6 * (d**2).sum() / (n * (n**2 - 1)))
    # Ties get average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    tied = np.array([0.0, 1.0, 1.0, 2.0])
    r = np.array([1, 2.5, 2.5, 4]) - 2.5
    s = np.array([1, 2, 3, 4]) - 2.5
    assert metrics.spearman(tied, np.arange(4.0)) == pytest.approx((r @ s) / np.sqrt((r @ r) * (s @ s)))
    with pytest.raises(ValueError):
        metrics.spearman(np.zeros(3), np.zeros(4))


def test_spearman_agrees_with_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    b[0] = a[0]
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)


# --------------------------------------------------------------------------- BM25
CORPUS = [
    "What is magma called at the surface? Magma at the surface is called lava.",
    "Why do volcanoes erupt? Gas pressure builds up until the rock bursts out.",
    "How do bees make honey? Bees turn flower nectar into honey in wax combs.",
    "What do worker bees do? Worker bees gather nectar and pollen for the hive.",
    "How fast does light travel? Light travels at about 300,000 km per second.",
]


def test_bm25_ranks_the_topical_documents_first():
    scores = metrics.bm25_matrix(CORPUS, ["molten rock called lava at a volcano", "where does honey come from bees"])
    assert scores.shape == (2, len(CORPUS))
    assert list(metrics.top_k(scores, 2)[0]) == [0, 1]
    assert set(metrics.top_k(scores, 2)[1]) == {2, 3}
    assert metrics.recall_at_k(scores, [[0, 1], [2, 3]], k=2) == 1.0


def test_bm25_scores_follow_the_okapi_formula():
    docs = [["lava", "rock"], ["rock", "rock", "gas"], ["honey"]]
    index = metrics.BM25(docs, k1=1.5, b=0.75)
    n, avgdl = 3, 2.0
    idf_rock = np.log((n - 2 + 0.5) / (2 + 0.5) + 1)
    tf, dl = 2, 3
    expected = idf_rock * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))
    assert index.scores(["rock"])[1] == pytest.approx(expected)
    assert index.scores(["absent"]).tolist() == [0.0, 0.0, 0.0]
    assert metrics.tokenize("What IS the Lava?") == ["lava"]  # lower-cased, stop words dropped


def test_bm25_ranking_agrees_with_rank_bm25_when_installed():
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs = [metrics.tokenize(t) for t in CORPUS]
    ours = metrics.BM25(docs)
    theirs = rank_bm25.BM25Okapi(docs)
    for query in (["lava", "magma"], ["bees", "nectar"], ["light", "second"]):
        assert list(np.argsort(-ours.scores(query), kind="stable")[:2]) == \
            list(np.argsort(-theirs.get_scores(query), kind="stable")[:2])


# --------------------------------------------------------------------------- DataInf reference
def test_datainf_reference_is_exact_for_one_training_example():
    """With n = 1 the DataInf approximation of (g g^T + lambda I)^-1 is exact (Sherman-Morrison)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("inflab.influence")
    from benchmarks.peers.reference import datainf_reference

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    blocks = [4, 2]
    got = datainf_reference(g, v, blocks, damping=0.3)
    expected = np.zeros((3, 1))
    off = 0
    for size in blocks:
        G, V = g[:, off:off + size], v[:, off:off + size]
        H = G.T @ G + 0.3 * torch.eye(size, dtype=torch.float64)
        expected += (V @ torch.linalg.solve(H, G.T)).numpy()
        off += size
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_datainf_reference_default_damping_is_a_tenth_of_the_mean_squared_entry():
    torch = pytest.importorskip("torch")
    pytest.importorskip("inflab.influence")
    from benchmarks.peers.reference import datainf_reference

    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    lam = 0.1 * (1 + 4) / 2 / 2  # mean over examples and entries of g^2
    explicit = datainf_reference(g, v, [2], damping=lam)
    np.testing.assert_allclose(datainf_reference(g, v, [2]), explicit)


# --------------------------------------------------------------------------- workload + targets
def _workload():
    from benchmarks.workload import Workload

    return Workload("w", [{"id": "t0", "question": "q", "answer": "a"}], [], {"r": 8}, {"lr": 2e-4}, 64)


def test_generated_workload_is_deterministic_and_sized():
    from benchmarks.workload import generated_workload

    a = generated_workload(50, 7, _workload(), seed=1)
    b = generated_workload(50, 7, _workload(), seed=1)
    assert (len(a.train), len(a.evals)) == (50, 7)
    assert a.train == b.train and a.evals == b.evals
    assert len({t["id"] for t in a.train}) == 50
    assert generated_workload(50, 7, _workload(), seed=2).train != a.train


def test_workload_digest_changes_with_the_settings():
    w = _workload()
    d = w.digest("m")
    w.settings["lr"] = 1e-3
    assert w.digest("m") != d and len(d) == 16


def test_targets_judge_each_goal():
    from benchmarks.influence import targets

    result = {
        "comparisons": {
            "ours:tracin": {"vs_bergson": 0.7},
            "ours:datainf": {"vs_lower_bound": 1.1},
            "ours:ekfac": {"vs_kronfluence": 0.5, "spearman": {"raw vs kronfluence": {"all_entries": 0.995}}},
        },
        "methods": {"ours:tracin": {"recall_at_4": {"raw": 0.2, "normalized": 0.8}},
                    "ours:ekfac": {"recall_at_4": {"normalized": 0.5}}},
        "baselines": {"bm25": {"recall_at_4": 0.75}},
        "scale": {"points": [
            {"n_train": 250, "n_eval": 25, "methods": {"tracin": {"wall_s": 10.0, "peak_rss_gb": 2.0}}},
            {"n_train": 1000, "n_eval": 100, "methods": {"tracin": {"wall_s": 41.0, "peak_rss_gb": 3.0}}},
        ], "growth": {"tracin": {"time_ratio": 4.1, "size_ratio": 4.0}}},
        "representation": {"methods": {"ours:delta_h": {"vs_floor": 0.45}, "ours:act_grad": {"vs_floor": 0.8}}},
    }
    t = targets(result)
    assert list(t) == ["tracin_vs_bergson", "datainf_vs_lower_bound", "ekfac_vs_kronfluence",
                       "scale_rss_and_linear_time", "delta_h_vs_floor", "act_grad_vs_floor",
                       "normalized_recall_vs_bm25"]
    assert t["delta_h_vs_floor"]["met"] is True and t["act_grad_vs_floor"]["met"] is False
    assert t["tracin_vs_bergson"]["met"] is True
    assert t["datainf_vs_lower_bound"]["met"] is False
    assert t["ekfac_vs_kronfluence"]["met"] is True
    assert t["scale_rss_and_linear_time"]["met"] is True
    assert t["normalized_recall_vs_bm25"] == {
        "goal": "best normalised method's recall@4 >= BM25's",
        "value": {"best": "ours:tracin", "recall_at_4": 0.8, "bm25": 0.75},
        "met": True,
    }
    assert all(set(v) == {"goal", "value", "met"} for v in t.values())
    # Unmeasured goals say so (None), rather than pretending to pass or fail.
    assert targets({})["tracin_vs_bergson"]["met"] is None


def test_a_missed_representation_target_says_what_it_costs_in_forward_passes():
    from benchmarks.influence import cost_model, targets

    methods = {"floor1": {"wall_s": 44.0}, "forward1": {"wall_s": 20.0},
               "ours:delta_h": {"wall_s": 42.0, "vs_floor": 42 / 44}, "ours:act_grad": {"wall_s": 20.0, "vs_floor": 20 / 44}}
    costs = cost_model(methods)
    assert costs["floor1_in_forwards"] == pytest.approx(2.2)
    # delta_h is two forwards at least (base and fine-tuned): 40 s of the bound's 44.
    assert costs["methods"]["delta_h"] == {"in_forwards": pytest.approx(2.1), "least_vs_floor": pytest.approx(40 / 44, abs=1e-3)}
    assert costs["methods"]["act_grad"]["least_vs_floor"] is None
    result = {"representation": {"methods": methods, "cost_model": costs}}
    judged = targets(result)
    assert judged["delta_h_vs_floor"]["met"] is False
    assert judged["delta_h_vs_floor"]["least_possible"] == pytest.approx(40 / 44, abs=1e-3)
    assert "2.1 forwards" in judged["delta_h_vs_floor"]["why_missed"]
    assert judged["act_grad_vs_floor"]["met"] is True and "why_missed" not in judged["act_grad_vs_floor"]
