"""Influence matrices as the results API serves them: always complete.

A result event carries its matrix inline only when it is small
(``INFLAB_INFLUENCE_INLINE_MAX_CELLS``); the persister stores what the event carried, so a
stored row without ``scores`` is read here from the safetensors file at its ``key`` (the
``variant`` tensor), checked against the row's ids.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import numpy as np
from fastapi import Depends, Request
from pydantic import Field

from inflab.core import influence_files
from inflab.core.db.models import InfluenceMatrixRow
from inflab.core.messages import InfluenceMatrix, InfluenceStats
from inflab.core.objectstore import ObjectStore

log = logging.getLogger(__name__)


class InfluenceMatrixOut(InfluenceMatrix):
    """The contract's ``InfluenceMatrix`` with the matrix always present."""

    #: ``scores[i][j]``: influence of training pair j on evaluation question i.
    scores: list[list[float]]
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=2, max_length=2)
    stats: InfluenceStats


class MatrixUnavailable(Exception):
    """The matrix of a stored result could not be read from the object store."""


async def get_object_store(request: Request) -> ObjectStore:
    """The deployment's object store, opened on first use (a gateway that never serves a
    large matrix never needs it)."""
    store = getattr(request.app.state, "object_store", None)
    if store is None:
        store = request.app.state.object_store = ObjectStore(request.app.state.settings.objects_url)
    return store


ObjectStoreDep = Annotated[ObjectStore, Depends(get_object_store)]


def _decode(data: bytes, row: InfluenceMatrixRow) -> list[list[float]]:
    matrix = influence_files.read_variant(data, row.variant, row.eval_ids, row.train_ids)
    return matrix.scores.astype(float).tolist()


async def read_scores(store: ObjectStore, row: InfluenceMatrixRow) -> list[list[float]]:
    """The full matrix of ``row``: inline if its event carried it, else from ``row.key``."""
    if row.scores:  # [] when the event carried the matrix only by key
        return row.scores
    what = f"influence matrix {row.method}/{row.variant} ({row.key})"
    try:
        data = await store.get_async(row.key)
    except FileNotFoundError:
        raise MatrixUnavailable(f"{what}: not found in the object store") from None
    except Exception as exc:
        log.exception("reading %s", what)
        raise MatrixUnavailable(f"{what}: could not read it from the object store ({type(exc).__name__})") from exc
    try:
        # Decoding and listing 100k cells takes tens of milliseconds: off the event loop.
        return await asyncio.to_thread(_decode, data, row)
    except ValueError as exc:
        raise MatrixUnavailable(f"{what}: {exc}") from None


async def matrix_out(store: ObjectStore, row: InfluenceMatrixRow) -> InfluenceMatrixOut:
    scores = await read_scores(store, row)
    return InfluenceMatrixOut(
        method=row.method, variant=row.variant, eval_ids=row.eval_ids, train_ids=row.train_ids,
        shape=[len(row.eval_ids), len(row.train_ids)], scores=scores, key=row.key, args=row.args,
        top_k=row.top_k, stats=InfluenceStats(**influence_files.stats(np.asarray(scores, dtype=np.float64))),
    )
