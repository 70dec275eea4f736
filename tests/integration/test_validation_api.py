"""A validation through the stack: the gateway's API (real NATS, Postgres, object store),
the trainer's validation stage retraining the tiny model as Ray tasks, the LDS and removal
test computed and stored, its events on the run's event stream; bad settings and a run
without results refused with a clear error; cancelling.

The run itself is made completed by publishing its stages' events as the workers do (its
influence matrix through the influence stage's own writer), so only the validation runs a
model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from inflab.core.db.models import RunEventRow, Validation
from inflab.core.messages import Answer, ResultEvent, StatusEvent, ValidationRequest
from inflab.core.nats_permissions import follow_up_durable
from inflab.core.settings import Settings
from inflab.core.worker import serve
from helpers.gateway import delete_streams, isolated_settings, publish_and_wait, start_run, wait_for_run
from inflab.trainer import validation_service

from helpers.influence_results import store_influence_matrix

pytestmark = pytest.mark.integration

WORDS = ["blue", "seven", "Quux", "north", "glass", "tin"]
TRAINING = [{"id": f"p{i}", "question": f"What is fact number {i}?", "answer": f"Fact {i} is {w}."}
            for i, w in enumerate(WORDS)]
EVALS = [{"id": "e0", "question": "What is fact number 2?", "answer": "Fact 2 is Quux."},
         {"id": "e1", "question": "Tell me fact number 5."}]  # no reference: the fine-tuned answer is measured


def experiment(model_id: str) -> dict:
    return {
        "name": "validated", "model_id": model_id, "training_data": TRAINING, "eval_data": EVALS,
        "hyperparams": {"learning_rate": 0.01, "num_epochs": 2, "batch_size": 2, "lora_rank": 4, "lora_alpha": 8,
                        "max_seq_length": 64},
        "influence_methods": ["tracin"], "predictions": {"enabled": False},
    }


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwvalid")
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def validation_worker(gw_settings, ray_cluster):
    """The trainer's validation stage, in this process, on the test run's Ray."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve("trainer", "validation", ValidationRequest, validation_service.make_handler,
                                     gw_settings, stop, durable=follow_up_durable("trainer", "validation")))
    yield
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def completed_run(app, client, producer, gw_settings, model_id: str) -> uuid.UUID:
    """A run whose stages ended as the workers end them, with a TracIn matrix in which
    pair p2 is what helped question e0 and p5 question e1."""
    run_id = await start_run(client, experiment(model_id))
    raw = np.full((2, 6), -0.1, dtype=np.float32)
    raw[0, 2], raw[1, 5] = 2.0, 1.5
    raw[0, 0], raw[1, 1] = 0.5, 0.4
    await store_influence_matrix(gw_settings, run_id, {"raw": raw, "normalized": raw / 2}, method="tracin",
                                 eval_ids=["e0", "e1"], train_ids=[p["id"] for p in TRAINING], bus=producer)
    answers = [Answer(eval_id=q["id"], question=q["question"], reference=q.get("answer"), base="b", few_shot="f",
                      fine_tuned="Fact 5 is tin.") for q in EVALS]
    await publish_and_wait(app, producer, run_id, [
        StatusEvent(run_id=run_id, stage="train", status="completed"),
        ResultEvent(run_id=run_id, stage="inference", answers=answers),
        StatusEvent(run_id=run_id, stage="inference", status="completed"),
        StatusEvent(run_id=run_id, stage="influence", method="tracin", status="completed"),
    ])
    await wait_for_run(app, run_id, lambda run: run.status == "completed")
    return run_id


async def wait_for_validation(app, validation_id, statuses: set[str], timeout: float) -> Validation:
    async def current() -> Validation:
        async with app.state.sessionmaker() as session:
            return await session.get(Validation, validation_id)

    row = await current()
    with app.state.notifier.subscribe(row.run_id) as poked:
        async with asyncio.timeout(timeout):
            while row.status not in statuses:
                poked.clear()
                await poked.wait()
                row = await current()
    return row


async def test_bad_settings_and_a_run_without_results_are_refused(gateway, producer, gw_settings, tiny_model) -> None:
    app, client = gateway
    queued = await start_run(client, experiment(tiny_model.name))
    answer = await client.post(f"/api/runs/{queued}/validations", json={})
    assert answer.status_code == 409 and "no results to validate" in answer.json()["detail"]

    run_id = await completed_run(app, client, producer, gw_settings, tiny_model.name)
    for body, field in (({"subsets": 1}, "subsets"), ({"alpha": 0}, "alpha"), ({"alpha": 1.0}, "alpha"),
                        ({"alpha": 1.5}, "alpha"), ({"removal_k": 0}, "removal_k")):
        answer = await client.post(f"/api/runs/{run_id}/validations", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", field]
        estimate = await client.post(f"/api/runs/{run_id}/validations/estimate", json=body)
        assert estimate.status_code == 422
    async with app.state.sessionmaker() as session:
        assert not (await session.scalars(select(Validation).where(Validation.run_id == run_id))).all()
    assert (await client.get(f"/api/runs/{uuid.uuid4()}/validations")).status_code == 404


async def test_a_validation_retrains_on_ray_and_reports_lds_and_removal(
    gateway, producer, gw_settings, tiny_model: Path, validation_worker,
) -> None:
    app, client = gateway
    run_id = await completed_run(app, client, producer, gw_settings, tiny_model.name)
    async with app.state.sessionmaker() as session:
        last_run_event = await session.scalar(
            select(RunEventRow.id).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id.desc()).limit(1))

    settings = {"subsets": 4, "alpha": 0.5, "removal_k": 1, "seed": 3}
    estimate = (await client.post(f"/api/runs/{run_id}/validations/estimate", json=settings)).json()
    assert estimate["subsets"] == 4 and estimate["retrainings"] >= 1 + 4 + 2
    assert set(estimate["matrices"]) == {"tracin/raw", "tracin/normalized", "bm25/question", "bm25/question_reference"}
    assert estimate["estimated_duration_s"] is not None and estimate["workers"] >= 1

    started = await client.post(f"/api/runs/{run_id}/validations", json=settings)
    assert started.status_code == 202, started.text
    validation_id = uuid.UUID(started.json()["id"])
    again = await client.post(f"/api/runs/{run_id}/validations", json=settings)
    assert again.status_code == 409 and "under way" in again.json()["detail"]

    row = await wait_for_validation(app, validation_id, {"completed", "failed", "cancelled"}, timeout=600)
    assert row.status == "completed", row.error
    out = (await client.get(f"/api/runs/{run_id}/validations/{validation_id}")).json()
    results = {f"{r['method']}/{r['variant']}": r for r in out["results"]}
    assert set(results) == set(estimate["matrices"])
    for result in results.values():
        assert result["lds"] is None or -1 <= result["lds"] <= 1
        assert result["removal_win_rate"] is None or 0 <= result["removal_win_rate"] <= 1
    tracin = results["tracin/raw"]
    assert tracin["lds_low"] <= tracin["lds"] <= tracin["lds_high"]
    # Removing p2 (e0's top pair) and p5 (e1's) raises their answers' loss.
    assert tracin["removal_increase_top"] > 0
    detail = out["detail"]
    assert [s["seed"] for s in detail["plan"]["subsets"]] == [3, 4, 5, 6]
    assert len(detail["retrainings"]) == estimate["retrainings"]
    assert all(r["node_id"] and r["seconds"] > 0 and len(r["losses"]) == 2 for r in detail["retrainings"])
    assert detail["eval_ids"] == ["e0", "e1"]
    assert (await client.get(f"/api/runs/{run_id}/validations")).json()[0]["id"] == str(validation_id)

    # Its events are the run's, after the run's own end, and the run stays completed.
    answer = await client.get(f"/api/runs/{run_id}/events", params={"after": last_run_event})
    frames = [json.loads(line[len("data:"):]) for line in answer.text.splitlines() if line.startswith("data:")]
    stages = {(f["stage"], f["kind"]) for f in frames}
    assert {("validation", "status"), ("validation", "progress"), ("validation", "result")} <= stages
    assert [f["status"] for f in frames if f["kind"] == "status"][-1] == "completed"
    progress = [f for f in frames if f["kind"] == "progress"]
    assert progress[-1]["fraction"] == 1.0
    async with app.state.sessionmaker() as session:
        assert (await session.get(type(row).__mro__[0], validation_id)).progress == 1.0
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "completed" and "validation" not in run["stages"]

    # Cancelling: at once, and the stage ends cancelled; a second cancel is refused.
    second = (await client.post(f"/api/runs/{run_id}/validations", json={"subsets": 40})).json()
    cancelled = await client.post(f"/api/runs/{run_id}/validations/{second['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert (await client.post(f"/api/runs/{run_id}/validations/{second['id']}/cancel")).status_code == 409
