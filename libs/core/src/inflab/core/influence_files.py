"""The influence matrix file (``runs/{run_id}/influence/{method}.safetensors``), readable
without the influence service: the gateway reads it to serve a matrix that a result event
carried only by reference.

One file holds every variant a method computed, one float32 tensor ``[M, N]`` per variant
(named by the variant), and in the safetensors metadata (string -> string, JSON-encoded
values) the method, the evaluation-question ids (rows), the training-pair ids (columns) and
the arguments. Any safetensors reader (Python, Rust, JS) can open it without this code.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "inflab.influence.v1"


@dataclass
class StoredMatrix:
    """One variant of a method's influence matrix as read from its file."""

    method: str
    variant: str
    scores: np.ndarray  # [len(eval_ids), len(train_ids)], float32
    eval_ids: list[str]
    train_ids: list[str]
    args: dict[str, Any] = field(default_factory=dict)


def encode(matrices: list[StoredMatrix]) -> bytes:
    """The file holding ``matrices``: the variants of one method, sharing its ids."""
    from safetensors.numpy import save

    if not matrices:
        raise ValueError("nothing to save")
    first = matrices[0]
    for s in matrices[1:]:
        if (s.method, s.eval_ids, s.train_ids) != (first.method, first.eval_ids, first.train_ids):
            raise ValueError("variants saved together must share method, eval_ids and train_ids")
    variants = [s.variant for s in matrices]
    if len(set(variants)) != len(variants):
        raise ValueError(f"duplicate variants {variants}")
    metadata = {
        "format": FORMAT,
        "method": first.method,
        "variants": json.dumps(variants),
        "eval_ids": json.dumps(list(first.eval_ids)),
        "train_ids": json.dumps(list(first.train_ids)),
        "args": json.dumps({s.variant: s.args for s in matrices}, default=str),
    }
    return save({s.variant: np.ascontiguousarray(s.scores, dtype=np.float32) for s in matrices}, metadata=metadata)


def metadata(data: bytes) -> dict[str, str]:
    """The safetensors metadata of ``data`` (an 8-byte little-endian header length, then a
    JSON header whose ``__metadata__`` entry holds the string map given to ``save``)."""
    if len(data) < 8:
        raise ValueError(f"not a safetensors file ({len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("not a safetensors file (header longer than the file)")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise ValueError(f"not a safetensors file (unreadable header: {exc})") from None
    return header.get("__metadata__", {}) if isinstance(header, dict) else {}


def decode(data: bytes) -> list[StoredMatrix]:
    """Every variant in a file written by :func:`encode`, in the order written."""
    from safetensors.numpy import load

    meta = metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"not an influence matrix file (format {meta.get('format')!r})")
    tensors = load(data)
    args = json.loads(meta["args"])
    eval_ids, train_ids = json.loads(meta["eval_ids"]), json.loads(meta["train_ids"])
    out = []
    for variant in json.loads(meta["variants"]):
        if variant not in tensors:
            raise ValueError(f"influence matrix file lists variant {variant!r} but holds no such tensor")
        scores = np.asarray(tensors[variant], dtype=np.float32)
        if scores.shape != (len(eval_ids), len(train_ids)):
            raise ValueError(
                f"variant {variant!r} has shape {scores.shape}, its ids say {(len(eval_ids), len(train_ids))}"
            )
        out.append(StoredMatrix(meta["method"], variant, scores, list(eval_ids), list(train_ids), args.get(variant, {})))
    return out


def read_variant(data: bytes, variant: str, eval_ids: list[str] | None = None,
                 train_ids: list[str] | None = None) -> StoredMatrix:
    """One variant of the file, checked against the ids its result named (rows and
    columns must be the same questions and pairs, in the same order)."""
    found = {m.variant: m for m in decode(data)}
    if variant not in found:
        raise ValueError(f"no variant {variant!r} in the influence matrix file (it has {sorted(found)})")
    matrix = found[variant]
    for name, expected, actual in (("evaluation ids", eval_ids, matrix.eval_ids),
                                   ("training ids", train_ids, matrix.train_ids)):
        if expected is not None and list(expected) != actual:
            raise ValueError(f"the file's {name} differ from the result's ({len(actual)} vs {len(expected)})")
    return matrix


def stats(scores: np.ndarray) -> dict[str, float | int | None]:
    """Basic statistics of a matrix over its finite cells (``nonfinite`` counts the rest)."""
    values = np.asarray(scores, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"min": None, "max": None, "mean": None, "std": None, "nonfinite": int(values.size)}
    out = {"min": float(finite.min()), "max": float(finite.max()), "mean": float(finite.mean()),
           "std": float(finite.std())}
    return {**{k: (v if math.isfinite(v) else None) for k, v in out.items()},
            "nonfinite": int(values.size - finite.size)}
