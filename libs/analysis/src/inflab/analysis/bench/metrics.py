"""Retrieval metrics of an attribution against ground truth, per query and averaged.

For one query: ``scores[j]`` ranks the training documents (higher first) and ``relevant[j]``
says which are relevant. Ties are handled without an arbitrary order:

* recall@k and precision@k are their expected values when tied documents are ordered at
  random: a tie group straddling position k puts ``(slots left) / (group size)`` of its
  relevant documents in the top k;
* MRR and mAP use fractional ranks: the documents of a tie group share the mean of the
  positions they occupy (``r = 3.5`` for two documents tied at positions 3 and 4).
  MRR = 1 / the best relevant rank; AP = the mean over relevant documents d of
  (relevant documents ranked at or above r_d) / r_d;
* ROC-AUC is the Mann-Whitney probability that a relevant document outscores an
  irrelevant one, ties counting one half.

A query without relevant documents (or, for ROC-AUC, without irrelevant ones) has no
value for that metric and is left out of the averages (counted in ``n``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

KS = (1, 5, 10)


def _groups(scores: np.ndarray) -> list[np.ndarray]:
    """Indices of ``scores`` in tie groups, best group first."""
    order = np.argsort(-scores, kind="stable")
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or scores[order[end]] != scores[order[start]]:
            groups.append(order[start:end])
            start = end
    return groups


def expected_hits_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    hits, seen = 0.0, 0
    for group in _groups(scores):
        if seen >= k:
            break
        rel = float(relevant[group].sum())
        take = min(len(group), k - seen)
        hits += rel * take / len(group)
        seen += len(group)
    return hits


def fractional_ranks(scores: np.ndarray) -> np.ndarray:
    ranks = np.zeros(len(scores))
    position = 0
    for group in _groups(scores):
        ranks[group] = position + (len(group) + 1) / 2.0
        position += len(group)
    return ranks


def query_metrics(scores: Sequence[float], relevant: Sequence[bool], ks: Sequence[int] = KS) -> dict[str, float | None]:
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant, dtype=bool)
    if s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and relevant {r.shape} differ in shape")
    n_rel = int(r.sum())
    out: dict[str, float | None] = {}
    for k in ks:
        hits = expected_hits_at(s, r, k) if n_rel else None
        out[f"recall@{k}"] = None if hits is None else hits / n_rel
        out[f"precision@{k}"] = None if hits is None else hits / min(k, len(s))
    if not n_rel:
        out.update({"mrr": None, "map": None, "roc_auc": None})
        return out
    ranks = fractional_ranks(s)
    rel_ranks = np.sort(ranks[r])
    out["mrr"] = 1.0 / float(rel_ranks[0])
    out["map"] = float(np.mean([(rel_ranks <= rank).sum() / rank for rank in rel_ranks]))
    pos, neg = s[r], s[~r]
    if len(neg) == 0:
        out["roc_auc"] = None
    else:
        greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        out["roc_auc"] = float(greater) / (len(pos) * len(neg))
    return out


def summarise(per_query: Sequence[dict[str, float | None]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and standard deviation (population) of every metric over the queries that have it."""
    names = list(per_query[0]) if per_query else []
    out: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        values = [q[name] for q in per_query if q.get(name) is not None]
        out[name] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "n": len(values),
        }
    return out


def evaluate(scores: np.ndarray, relevant: np.ndarray, correct: Sequence[bool] | None = None,
             ks: Sequence[int] = KS) -> dict[str, Any]:
    """``scores`` and ``relevant`` are ``[queries, documents]``; ``correct[i]``: the
    fine-tuned model answers query i correctly. Returns the per-query metrics, their
    summary over all queries and over the correctly answered ones, and the accuracy."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not np.isfinite(scores).all():
        scores = np.nan_to_num(scores, nan=-math.inf)
    per_query = [query_metrics(scores[i], relevant[i], ks) for i in range(scores.shape[0])]
    out: dict[str, Any] = {"per_query": per_query, "all": summarise(per_query)}
    if correct is not None:
        mask = list(bool(c) for c in correct)
        if len(mask) != scores.shape[0]:
            raise ValueError("correct: one flag per query")
        out["accuracy"] = sum(mask) / len(mask) if mask else None
        out["correct"] = summarise([q for q, ok in zip(per_query, mask) if ok]) if any(mask) else None
        out["correct_queries"] = sum(mask)
    return out
