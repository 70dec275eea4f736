"""Influence matrices as safetensors files (``runs/{run_id}/influence/{method}.safetensors``).

One file holds every variant a method computed, one float32 tensor ``[M, N]`` per variant
(named by the variant), and in the safetensors metadata (string -> string, JSON-encoded
values) the method, the evaluation-question ids (rows), the training-pair ids (columns) and
the arguments. Any safetensors reader (Python, Rust, JS) can open it without this code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np
from safetensors.numpy import load, save

from inflab.common.messages import InfluenceMatrix, RankedTrainingPair, TopInfluences
from inflab.influence.methods.base import InfluenceScores

FORMAT = "inflab.influence.v1"
#: Training pairs listed per evaluation question and sign in a result's summary.
DEFAULT_TOP_K = 5


def to_safetensors_bytes(scores: InfluenceScores | Sequence[InfluenceScores]) -> bytes:
    """Serialise one influence matrix, or the variants of one method (same ids), to bytes."""
    items = [scores] if isinstance(scores, InfluenceScores) else list(scores)
    if not items:
        raise ValueError("nothing to save")
    first = items[0]
    for s in items[1:]:
        if (s.method, s.eval_ids, s.train_ids) != (first.method, first.eval_ids, first.train_ids):
            raise ValueError("variants saved together must share method, eval_ids and train_ids")
    variants = [s.variant for s in items]
    if len(set(variants)) != len(variants):
        raise ValueError(f"duplicate variants {variants}")
    metadata = {
        "format": FORMAT,
        "method": first.method,
        "variants": json.dumps(variants),
        "eval_ids": json.dumps(first.eval_ids),
        "train_ids": json.dumps(first.train_ids),
        "args": json.dumps({s.variant: s.args for s in items}, default=str),
    }
    return save({s.variant: np.ascontiguousarray(s.scores, dtype=np.float32) for s in items}, metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    # The safetensors layout: an 8-byte little-endian header length, then a JSON header
    # whose "__metadata__" entry holds the string map given to ``save``.
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def from_safetensors_bytes(data: bytes) -> list[InfluenceScores]:
    """The influence matrices of a file written by :func:`to_safetensors_bytes`."""
    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not an influence matrix file (format {meta.get('format')!r})")
    tensors = load(data)
    args = json.loads(meta["args"])
    eval_ids, train_ids = json.loads(meta["eval_ids"]), json.loads(meta["train_ids"])
    return [
        InfluenceScores(meta["method"], v, tensors[v], list(eval_ids), list(train_ids), args.get(v, {}))
        for v in json.loads(meta["variants"])
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


def to_message(scores: InfluenceScores, key: str, top_k: int | None = DEFAULT_TOP_K) -> InfluenceMatrix:
    """The ``InfluenceMatrix`` of a result event; ``key`` is where the file was stored;
    ``top_k`` sizes the per-question summary (None: no summary)."""
    return InfluenceMatrix(
        method=scores.method,
        variant=scores.variant,
        eval_ids=list(scores.eval_ids),
        train_ids=list(scores.train_ids),
        scores=scores.scores.astype(float).tolist(),
        key=key,
        args=json.loads(json.dumps({**scores.args, **({"top_k": top_k} if top_k else {})}, default=str)),
        top_k=top_influences(scores, top_k) if top_k else None,
    )
