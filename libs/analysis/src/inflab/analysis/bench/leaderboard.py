"""A benchmark run's leaderboard: every method's (and baseline's) score matrix against the
ground truth, averaged over the queries the fine-tuned model answers correctly and over
all queries, best first.

Rows are ranked by mean recall@5 over the correctly answered queries when the run knows
which those are (its ``embedding`` baseline records it) and at least one is, else over all
queries; then by MRR and mAP; full ties keep the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inflab.analysis.bench.metrics import KS, evaluate

#: The metric the leaderboard is ordered by.
RANK_BY = "recall@5"
#: Then these, for rows equal in it.
TIE_BREAKERS = ("mrr", "map")
#: Documents listed per query in the drill-down.
TOP_DOCUMENTS = 10


@dataclass
class Entry:
    """One score matrix to rank: a method's variant or a baseline."""

    method: str
    variant: str
    kind: str  # "method" or "baseline"
    scores: np.ndarray  # [queries, documents]
    label: str = ""
    args: dict[str, Any] = field(default_factory=dict)


def relevance(query_ids: Sequence[str], document_ids: Sequence[str], relevant: dict[str, Sequence[str]]) -> np.ndarray:
    column = {d: j for j, d in enumerate(document_ids)}
    out = np.zeros((len(query_ids), len(document_ids)), dtype=bool)
    for i, q in enumerate(query_ids):
        for d in relevant.get(q, ()):
            if d in column:
                out[i, column[d]] = True
    return out


def leaderboard(entries: Sequence[Entry], query_ids: Sequence[str], document_ids: Sequence[str],
                relevant: dict[str, Sequence[str]], correct: dict[str, bool] | None) -> dict[str, Any]:
    """The leaderboard as JSON-ready dicts (see the module doc)."""
    truth = relevance(query_ids, document_ids, relevant)
    flags = None if correct is None else [bool(correct.get(q, False)) for q in query_ids]
    by_correct = flags is not None and any(flags)
    rows = []
    for entry in entries:
        scores = np.asarray(entry.scores, dtype=np.float64)
        if scores.shape != truth.shape:
            raise ValueError(f"{entry.method}/{entry.variant}: scores {scores.shape}, expected {truth.shape}")
        result = evaluate(scores, truth, flags, KS)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_DOCUMENTS]
        rows.append({
            "method": entry.method,
            "variant": entry.variant,
            "kind": entry.kind,
            "label": entry.label or entry.method,
            "all": result["all"],
            "correct": result.get("correct"),
            "per_query": [
                {"query_id": q, "metrics": m, "top_documents": [document_ids[j] for j in top[i]]}
                for i, (q, m) in enumerate(zip(query_ids, result["per_query"]))
            ],
        })

    def key(row: dict[str, Any]) -> tuple[float, ...]:
        part = row["correct"] if by_correct and row["correct"] else row["all"]
        values = [part.get(name, {}).get("mean") for name in (RANK_BY, *TIE_BREAKERS)]
        return tuple(-1.0 if v is None else v for v in values)

    rows.sort(key=key, reverse=True)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {
        "ranked_by": f"{RANK_BY} over {'correctly answered' if by_correct else 'all'} queries",
        "accuracy": None if flags is None else sum(flags) / len(flags),
        "correct_queries": None if flags is None else sum(flags),
        "rows": rows,
    }
