"""The lexical baseline served beside a run's attributions: BM25 of every training pair
(question and answer text) against each evaluation question, so a researcher can tell an
attribution from plain word overlap.

Two variants, each an ``[evaluation questions, training pairs]`` matrix shaped like an
influence matrix:

* ``question``: the query is the evaluation question;
* ``question_reference``: the query is the question and its reference answer (the question
  alone where it has none).

Scoring is bm25s's ``lucene`` BM25 (k1 1.5, b 0.75), per query term occurrence:

    score(q, d) = sum over the query's terms t of
                  ln(1 + (N - df_t + 0.5) / (df_t + 0.5)) * tf_td / (tf_td + k1 (1 - b + b |d| / avgdl))

with ``N`` training pairs, ``df_t`` the pairs holding ``t``, ``tf_td`` its count in pair
``d`` and ``|d|`` the pair's length in terms. The idf never goes negative (unlike
Robertson's original), so a word in most pairs still counts a little rather than against.
Terms are bm25s's tokenizer's, with single characters kept (``\\w+``, so "3" and "a
3-legged" count) and its English stop words dropped.

Why bm25s: maintained, numpy only, and its sparse index scores a query against all pairs
in one vectorised pass, where
rank-bm25 loops over the documents in Python for every query term. Computed on request
from the run's config snapshot (it never changes), off the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from inflab.core.messages import RunSpec

log = logging.getLogger(__name__)

METHOD = "bm25"
VARIANTS = ("question", "question_reference")
K1 = 1.5
B = 0.75
#: Single characters are words too (numbers, "x", ...), unlike bm25s's default pattern.
TOKEN_PATTERN = r"(?u)\b\w+\b"
ARGS = {
    "scoring": "bm25s lucene: idf ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b |d| / avgdl))",
    "k1": K1,
    "b": B,
    "tokens": "lower-cased \\w+ words, English stop words dropped (bm25s)",
    "documents": "training pair question + answer",
}


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(list(texts), token_pattern=TOKEN_PATTERN, stopwords="en", return_ids=False,
                          show_progress=False)


def bm25_scores(documents: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    """``[len(queries), len(documents)]`` BM25 scores (float32)."""
    import bm25s

    out = np.zeros((len(queries), len(documents)), dtype=np.float32)
    if not documents or not queries:
        return out
    index = bm25s.BM25(method="lucene", k1=K1, b=B)
    index.index(tokenize(documents), show_progress=False)
    for row, terms in enumerate(tokenize(queries)):
        # Words no training pair holds score nothing; a query of none (only stop words)
        # scores 0 everywhere.
        ids = index.get_tokens_ids([t for t in terms if t])
        if ids:
            out[row] = index.get_scores_from_ids(ids)
    return out


def run_baselines(spec: RunSpec) -> list[dict]:
    """The run's BM25 matrices, one per variant, as ``BaselineMatrix`` fields."""
    documents = [f"{p.question} {p.answer}" for p in spec.training_data]
    queries = {
        "question": [q.question for q in spec.eval_data],
        "question_reference": [f"{q.question} {q.answer}" if q.answer and q.answer.strip() else q.question
                               for q in spec.eval_data],
    }
    eval_ids, train_ids = [q.id for q in spec.eval_data], [p.id for p in spec.training_data]
    return [
        {
            "method": METHOD,
            "variant": variant,
            "eval_ids": eval_ids,
            "train_ids": train_ids,
            "shape": [len(eval_ids), len(train_ids)],
            "scores": bm25_scores(documents, queries[variant]).astype(float).tolist(),
            "args": {**ARGS, "query": "evaluation question" if variant == "question"
                     else "evaluation question + reference answer (the question alone without one)"},
        }
        for variant in VARIANTS
    ]
