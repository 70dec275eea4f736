"""Storing an influence matrix of any shape for a run through the real results path, as
the influence stage does (for tests that need a large or hand-made matrix without running
a model, e.g. the browser tests' 100 x 1000 heatmap):

1. the matrix (one tensor per variant) is written with the influence stage's own writer
   (``inflab.influence.results.to_safetensors_bytes``) at the run's result key
   (``runs/{run_id}/influence/{method}.safetensors``) in the deployment's object store;
2. one ``result`` event per variant, built by the stage's ``to_message`` (summary, top-k,
   statistics; the matrix inline only up to ``inline_max_cells``), is published on the
   bus as the stage's events (``StageEvents``);
3. the gateway's persister stores it, and ``GET /api/runs/{id}/results`` serves the full
   matrix (from the object store when the event carried it by key).

Usage (inside an async test, against any stack whose settings you have)::

    matrix = random_matrix(100, 1000)
    published = await store_influence_matrix(settings, run_id, {"raw": matrix},
                                             eval_ids=..., train_ids=...)
    # then wait for the results API (wait_for_results) or for published[-1].event_id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import httpx
import numpy as np

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.messages import ResultEvent
from inflab.core.objectstore import ObjectStore, influence_key
from inflab.core.settings import Settings


def random_matrix(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A reproducible ``[rows, columns]`` float32 matrix with both signs and a few strong
    cells, so a heatmap of it has something to show."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(rows, columns))
    strong = rng.random(size=(rows, columns)) < 0.01
    matrix[strong] *= 8
    return matrix.astype(np.float32)


def default_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


async def store_influence_matrix(
    settings: Settings,
    run_id: UUID,
    variants: Mapping[str, np.ndarray],
    *,
    method: str = "tracin",
    eval_ids: Sequence[str] | None = None,
    train_ids: Sequence[str] | None = None,
    args: dict[str, Any] | None = None,
    inline_max_cells: int = 0,
    top_k: int = 5,
    bus: Bus | None = None,
) -> list[ResultEvent]:
    """Store ``variants`` (variant name -> ``[evaluation questions, training pairs]``
    matrix, all one shape) as ``method``'s result for ``run_id``; the published result
    events, in order. Ids default to ``ev0000...`` / ``tr0000...``; give the run's own for
    the texts to match. ``inline_max_cells`` 0 sends every matrix by key (the path large
    matrices take); ``bus`` defaults to a connection of its own, closed afterwards."""
    # The influence stage's own writer (imported here: it pulls in the stage's methods).
    from inflab.influence.methods.base import InfluenceScores
    from inflab.influence.results import to_message, to_safetensors_bytes

    if not variants:
        raise ValueError("no variant to store")
    shapes = {np.shape(m) for m in variants.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"the variants must be 2-D matrices of one shape, got {sorted(shapes)}")
    rows, columns = next(iter(shapes))
    eval_ids = list(eval_ids) if eval_ids is not None else default_ids("ev", rows)
    train_ids = list(train_ids) if train_ids is not None else default_ids("tr", columns)
    scores = [InfluenceScores(method, variant, np.asarray(matrix, dtype=np.float32), eval_ids, train_ids,
                              dict(args or {}))
              for variant, matrix in variants.items()]

    key = influence_key(run_id, method)
    await ObjectStore(settings.objects_url).put_async(key, to_safetensors_bytes(scores))
    own_bus = bus is None
    bus = bus or await Bus.connect(settings, "test-influence-results")
    try:
        events = StageEvents(bus, run_id, "influence", method=method)
        published = [
            events.build("result", influence=to_message(s, key, inline_max_cells=inline_max_cells, top_k=top_k))
            for s in scores
        ]
        for event in published:
            await bus.publish_event(event)
    finally:
        if own_bus:
            await bus.close()
    return published


async def wait_for_results(
    client: httpx.AsyncClient, run_id: UUID, method: str, variants: Sequence[str], timeout: float = 60.0
) -> dict[str, Any]:
    """``GET /api/runs/{id}/results`` once it serves every one of ``method``'s
    ``variants`` (the persister stores events asynchronously; a browser test has no
    in-process notifier to wait on, so this asks again every 0.1 s, up to ``timeout``)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/api/runs/{run_id}/results")
            response.raise_for_status()
            results = response.json()
            have = {m["variant"] for m in results["influence"] if m["method"] == method}
            if set(variants) <= have:
                return results
            await asyncio.sleep(0.1)
