"""Quality metrics of the influence benchmark: recall@k against ground truth, Spearman's rho
between two score matrices, and a BM25 baseline over the training text.

Plain numpy, no torch: the unit tests import this module alone.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np


def top_k(scores: np.ndarray, k: int) -> list[list[int]]:
    """Per row, the column indices of the ``k`` highest scores (ties: lower index first)."""
    scores = np.asarray(scores, dtype=np.float64)
    # A stable sort of the negated scores keeps ties in index order, so results are deterministic.
    return [list(np.argsort(-row, kind="stable")[:k]) for row in scores]


def recall_at_k(scores: np.ndarray, related: Sequence[Sequence[int]], k: int = 4) -> float:
    """Mean over rows (evaluation questions with ground truth) of
    |top-k ∩ related| / min(k, |related|). Rows without related items are skipped."""
    values = []
    for top, rel in zip(top_k(scores, k), related):
        rel = set(int(r) for r in rel)
        if not rel:
            continue
        values.append(len(set(int(t) for t in top) & rel) / min(k, len(rel)))
    if not values:
        raise ValueError("no row has ground truth")
    return float(np.mean(values))


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array, ties sharing the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between two score arrays of the same shape, over all entries (the
    matrices flattened: how well one method reproduces the other's whole ordering)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    ra, rb = _rankdata(a), _rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denom) if denom else float("nan")


def spearman_rows(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the per-row Spearman's rho (how each question's ranking agrees)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return float(np.mean([spearman(x, y) for x, y in zip(a, b)]))


# --------------------------------------------------------------------------- BM25
_TOKEN = re.compile(r"[a-z0-9]+")
#: A small English stop list: without it, "the"/"is"/"what" dominate short QA texts.
STOPWORDS = frozenset(
    "a an and are as at be by can did do does for from had has have how i in into is it its of on or "
    "that the their them there these they this to was were what when where which who why will with "
    "you your".split()
)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    """Okapi BM25 (k1=1.5, b=0.75, idf = ln((N - df + 0.5) / (df + 0.5) + 1), never negative):
    the classic lexical baseline, ~30 lines so the benchmark does not need a package."""

    def __init__(self, corpus: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(doc) for doc in corpus]
        self.lengths = np.array([len(doc) for doc in corpus], dtype=np.float64)
        self.avgdl = float(self.lengths.mean()) if len(corpus) else 0.0
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(corpus)
        self.idf = {term: math.log((n - f + 0.5) / (f + 0.5) + 1.0) for term, f in df.items()}

    def scores(self, query: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(self.docs), dtype=np.float64)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / (self.avgdl or 1.0))
        for term in query:
            idf = self.idf.get(term)
            if idf is None:
                continue
            tf = np.array([doc.get(term, 0) for doc in self.docs], dtype=np.float64)
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out


def bm25_matrix(train_texts: Sequence[str], query_texts: Sequence[str]) -> np.ndarray:
    """``[queries, train]`` BM25 scores of each query against each training text."""
    index = BM25([tokenize(t) for t in train_texts])
    return np.stack([index.scores(tokenize(q)) for q in query_texts]) if query_texts else np.zeros((0, len(train_texts)))
