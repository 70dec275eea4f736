"""Influence matrices as safetensors files (``runs/{run_id}/influence/{method}.safetensors``)
and the result events that summarise them.

The file format itself is :mod:`inflab.core.influence_files` (so the gateway reads it
without this service): one float32 tensor ``[M, N]`` per variant, the ids and arguments in
the safetensors metadata. Any safetensors reader (Python, Rust, JS) can open it.

A result event carries the summary of one variant (ids, shape, statistics, top-k per
evaluation question, the file's key) and the matrix itself only when it has at most
``INFLAB_INFLUENCE_INLINE_MAX_CELLS`` cells: a 1000 x 100 matrix inline is ~2 MB of JSON,
twice NATS's default payload limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from inflab.core import influence_files
from inflab.core.influence_files import FORMAT, StoredMatrix
from inflab.core.influence_methods import DEFAULT_TOP_K
from inflab.core.messages import InfluenceMatrix, InfluenceStats, RankedTrainingPair, TopInfluences
from inflab.influence.methods.base import InfluenceScores

__all__ = ["FORMAT", "DEFAULT_TOP_K", "to_safetensors_bytes", "from_safetensors_bytes", "top_influences", "to_message"]



def to_safetensors_bytes(scores: InfluenceScores | Sequence[InfluenceScores]) -> bytes:
    """Serialise one influence matrix, or the variants of one method (same ids), to bytes."""
    items = [scores] if isinstance(scores, InfluenceScores) else list(scores)
    return influence_files.encode(
        [StoredMatrix(s.method, s.variant, s.scores, list(s.eval_ids), list(s.train_ids), s.args) for s in items]
    )


def from_safetensors_bytes(data: bytes) -> list[InfluenceScores]:
    """The influence matrices of a file written by :func:`to_safetensors_bytes`."""
    return [
        InfluenceScores(m.method, m.variant, m.scores, m.eval_ids, m.train_ids, m.args)
        for m in influence_files.decode(data)
    ]


def top_influences(scores: InfluenceScores, k: int = DEFAULT_TOP_K) -> list[TopInfluences]:
    """Per evaluation question its ``k`` most positive (score > 0, descending) and most
    negative (score < 0, ascending) training pairs; ties keep the training order."""
    out = []
    for eval_id, row in zip(scores.eval_ids, np.asarray(scores.scores, dtype=np.float64)):
        order = np.argsort(-row, kind="stable")
        positive = [int(j) for j in order if row[j] > 0][:k]
        negative = [int(j) for j in np.argsort(row, kind="stable") if row[j] < 0][:k]
        out.append(TopInfluences(
            eval_id=eval_id,
            positive=[RankedTrainingPair(train_id=scores.train_ids[j], score=float(row[j])) for j in positive],
            negative=[RankedTrainingPair(train_id=scores.train_ids[j], score=float(row[j])) for j in negative],
        ))
    return out


def to_message(
    scores: InfluenceScores, key: str, *, inline_max_cells: int, top_k: int | None = DEFAULT_TOP_K
) -> InfluenceMatrix:
    """The ``InfluenceMatrix`` of a result event; ``key`` is where the file was stored;
    ``top_k`` sizes the per-question summary (None: no summary); the matrix goes inline
    only when it has at most ``inline_max_cells`` cells (``Settings.influence_inline_max_cells``)."""
    if isinstance(inline_max_cells, bool) or not isinstance(inline_max_cells, int) or inline_max_cells < 0:
        raise ValueError(f"inline_max_cells must be an integer >= 0, got {inline_max_cells!r}")
    matrix = np.asarray(scores.scores)
    inline = matrix.size <= inline_max_cells
    return InfluenceMatrix(
        method=scores.method,
        variant=scores.variant,
        eval_ids=list(scores.eval_ids),
        train_ids=list(scores.train_ids),
        shape=list(matrix.shape),
        scores=matrix.astype(float).tolist() if inline else None,
        key=key,
        args=json.loads(json.dumps({**scores.args, **({"top_k": top_k} if top_k else {})}, default=str)),
        top_k=top_influences(scores, top_k) if top_k else None,
        stats=InfluenceStats(**influence_files.stats(matrix)),
    )
