"""Influence results at the product's scale, through real NATS, Postgres and the object
store: a 1000 training pairs x 100 evaluation questions matrix makes a result event far
under NATS's 1 MB payload limit (inline it would not fit), the gateway stores its summary,
and the results API still serves the whole matrix, read from the safetensors file.

Events are built by the influence service's own code (``to_message``, ``StageEvents``)
and published on the bus as the worker does; every wait is on the stored event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from nats.errors import MaxPayloadError
from sqlalchemy import select

from inflab.core.db.models import InfluenceMatrixRow
from inflab.core.events import StageEvents
from inflab.core.objectstore import ObjectStore, influence_key
from inflab.core.settings import Settings
from helpers.gateway import (
    delete_streams,
    isolated_settings,
    start_run,
    wait_for_event,
    wait_for_run,
)
from inflab.influence.methods.base import InfluenceScores
from inflab.influence.results import to_message, to_safetensors_bytes

pytestmark = pytest.mark.integration

M, N = 100, 1000
EVAL_IDS = [f"eval-question-{i:04d}" for i in range(M)]
TRAIN_IDS = [f"training-pair-{j:05d}" for j in range(N)]
EXPERIMENT = {
    "name": "large influence",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwinf")
    yield own
    asyncio.run(delete_streams(own))


def _variants() -> list[InfluenceScores]:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(M, N)).astype(np.float32)
    normalized = raw / np.abs(raw).max()
    return [InfluenceScores("tracin", "raw", raw, EVAL_IDS, TRAIN_IDS, {"checkpoints": 3}),
            InfluenceScores("tracin", "normalized", normalized, EVAL_IDS, TRAIN_IDS, {"checkpoints": 3})]


async def _stored(app, run_id: uuid.UUID) -> dict[str, InfluenceMatrixRow]:
    async with app.state.sessionmaker() as session:
        rows = await session.scalars(select(InfluenceMatrixRow).where(InfluenceMatrixRow.run_id == run_id))
        return {r.variant: r for r in rows}


async def test_a_large_matrix_travels_by_key_and_the_api_serves_it_whole(gateway, producer, gw_settings) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    variants = _variants()
    key = influence_key(run_id, "tracin")
    ObjectStore(gw_settings.objects_url).put(key, to_safetensors_bytes(variants))  # as the job stores it

    limit = gw_settings.influence_inline_max_cells
    assert M * N > limit
    events = StageEvents(producer, run_id, "influence", method="tracin")
    built = [events.build("result", influence=to_message(v, key, inline_max_cells=limit)) for v in variants]
    max_payload = producer.nc.max_payload
    for event in built:
        size = len(event.model_dump_json().encode())
        assert size < 1_000_000 and size < max_payload, size
        assert event.influence.scores is None and event.influence.shape == [M, N]
        assert len(event.influence.top_k) == M

    # The same matrix inline is what used to fail: NATS refuses it.
    inline = events.build("result", influence=to_message(variants[0], key, inline_max_cells=M * N))
    if len(inline.model_dump_json().encode()) > max_payload:
        with pytest.raises(MaxPayloadError):
            await producer.publish_event(inline)

    for event in built:
        await producer.publish_event(event)
    await wait_for_event(app, run_id, built[-1].event_id, timeout=30)

    # Postgres keeps the summary; the matrix stays in the object store.
    stored = await _stored(app, run_id)
    assert set(stored) == {"raw", "normalized"}
    for variant, row in stored.items():
        assert row.scores == [] and row.key == key and len(row.train_ids) == N
        assert row.top_k == [t.model_dump(mode="json") for t in built[[v.variant for v in variants].index(variant)]
                             .influence.top_k]

    response = await client.get(f"/api/runs/{run_id}/results")
    assert response.status_code == 200, response.text
    served = {m["variant"]: m for m in response.json()["influence"]}
    assert set(served) == {"raw", "normalized"}
    for v in variants:
        matrix = served[v.variant]
        assert matrix["shape"] == [M, N] and matrix["eval_ids"] == EVAL_IDS and matrix["train_ids"] == TRAIN_IDS
        np.testing.assert_array_equal(np.asarray(matrix["scores"], dtype=np.float32), v.scores)
        assert matrix["stats"]["max"] == pytest.approx(float(v.scores.max()))
        assert matrix["args"]["top_k"] == 5 and len(matrix["top_k"]) == M


async def test_a_matrix_missing_from_the_object_store_is_a_clear_error(gateway, producer, gw_settings) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    small = InfluenceScores("datainf", "raw", np.ones((2, 3), np.float32), ["e0", "e1"], ["t0", "t1", "t2"])
    key = influence_key(run_id, "datainf")  # never stored
    event = StageEvents(producer, run_id, "influence", method="datainf").build(
        "result", influence=to_message(small, key, inline_max_cells=0))
    await producer.publish_event(event)
    await wait_for_event(app, run_id, event.event_id)

    response = await client.get(f"/api/runs/{run_id}/results")
    assert response.status_code == 502
    assert response.json()["detail"] == f"influence matrix datainf/raw ({key}): not found in the object store"

    # A file whose ids are not the result's is refused too, naming what differs.
    other = InfluenceScores("datainf", "raw", np.ones((2, 3), np.float32), ["e0", "e1"], ["t0", "t1", "x"])
    ObjectStore(gw_settings.objects_url).put(key, to_safetensors_bytes(other))
    response = await client.get(f"/api/runs/{run_id}/results")
    assert response.status_code == 502
    assert "training ids differ" in response.json()["detail"]

    # Once the right file is there, the matrix is served.
    ObjectStore(gw_settings.objects_url).put(key, to_safetensors_bytes(small))
    response = await client.get(f"/api/runs/{run_id}/results")
    assert response.status_code == 200 and response.json()["influence"][0]["scores"] == [[1.0] * 3] * 2


async def test_the_demo_draws_a_matrix_that_travelled_by_key(gateway, producer, gw_settings, tmp_path) -> None:
    """What `inflab demo` does with the results API's answer: results.json and the heatmap,
    for a matrix the event carried only by key (the demo's own run is small enough to go
    inline; a limit of 0 sends even it by key)."""
    from inflab.devtools.demo import build_results_document, draw_heatmap, write_results
    from inflab.core.messages import Answer

    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    scores = InfluenceScores("tracin", "normalized", np.array([[0.5, -0.25, 0.0]], np.float32), ["ev0"],
                             ["tr0", "tr1", "tr2"])
    key = influence_key(run_id, "tracin")
    ObjectStore(gw_settings.objects_url).put(key, to_safetensors_bytes(scores))
    answer = Answer(eval_id="ev0", question="Who is Veltra's ruler?", base="A king.", few_shot="A queen?",
                    fine_tuned="Queen Ismene.")
    inference = StageEvents(producer, run_id, "inference").build("result", answers=[answer])
    influence = StageEvents(producer, run_id, "influence", method="tracin").build(
        "result", influence=to_message(scores, key, inline_max_cells=0))
    assert influence.influence.scores is None
    for event in (inference, influence):
        await producer.publish_event(event)
    await wait_for_event(app, run_id, influence.event_id)

    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    document = build_results_document(results, model_id="tiny", timings={})
    assert document["influence"]["matrix"] == [[0.5, -0.25, 0.0]]
    written = write_results(document, tmp_path)
    heatmap = draw_heatmap(document, tmp_path)
    assert written.is_file() and heatmap.path.is_file() and heatmap.width_px > 100


async def test_an_event_still_too_large_fails_the_stage_saying_why(gateway, producer, gw_settings) -> None:
    """Ids alone can pass the limit (10,000 training pairs with 120-character ids are ~1.2
    MB): the influence service then fails the stage naming the sizes and where the matrix
    is, rather than retrying a job that cannot succeed."""
    from inflab.influence.service import publish_results

    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    train_ids = [f"{j:05d}-" + "x" * 114 for j in range(10_000)]
    scores = InfluenceScores("tracin", "raw", np.zeros((2, len(train_ids)), np.float32), ["e0", "e1"], train_ids)
    key = influence_key(run_id, "tracin")
    matrix = to_message(scores, key, inline_max_cells=gw_settings.influence_inline_max_cells)
    events = StageEvents(producer, run_id, "influence", method="tracin")

    assert await publish_results(events, [matrix]) is False
    run = await wait_for_run(app, run_id, lambda r: r.stages.get("influence.tracin") == "failed", timeout=30)
    # The stage's failure shows at once; the run ends once its other stages have.
    error = run.stage_errors["influence.tracin"]
    assert run.status == "queued" and run.error is None
    assert error.startswith("publishing the raw result: the event is ")
    assert f"over the NATS server's max_payload ({producer.nc.max_payload}); the matrix is stored at {key}" in error
