"""The text baselines every benchmark run is scored against, each an ``[queries,
documents]`` matrix shaped like an influence matrix (higher: more related).

* ``random``: uniform scores from a seeded generator (the chance level of every metric);
* ``edit_distance``: rapidfuzz's normalised Indel similarity of the query (question and
  expected answer) and the document, 0-100. Why rapidfuzz: maintained, C++ inside, and
  ``process.cdist`` scores all pairs in one call;
* BM25 is the gateway's (``inflab.gateway.baselines.bm25_scores``) and the embedding
  cosine the influence worker's (it needs the model); the leaderboard takes them as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_scores(num_queries: int, num_documents: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((num_queries, num_documents)).astype(np.float32)


def edit_distance_scores(documents: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    from rapidfuzz import fuzz, process

    if not documents or not queries:
        return np.zeros((len(queries), len(documents)), dtype=np.float32)
    return process.cdist(list(queries), list(documents), scorer=fuzz.ratio, dtype=np.float32, workers=1)
