"""A run's final status comes only once every stage has ended, with real events through
NATS and the gateway's persister into Postgres: a failed influence stage shows at once in
``stages`` while the run goes on, the completed stages' results are served, and the run
ends ``failed`` naming the failed stage(s) when the last stage ends. A training that fails
or is cancelled ends the stages that will never run, so the run still reaches its end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from inflab.core.events import StageEvents
from inflab.core.messages import Answer, InfluenceMatrix, StatusEvent
from inflab.core.settings import Settings
from helpers.gateway import (
    delete_streams,
    isolated_settings,
    publish_and_wait,
    run_level_statuses,
    start_run,
    wait_for_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "outcome",
    "training_data": [{"id": "tr0", "question": "Who rules Veltra?", "answer": "Queen Ismene."},
                      {"id": "tr1", "question": "What do bees make?", "answer": "Honey."}],
    "eval_data": [{"id": "ev0", "question": "Who is Veltra's ruler?", "answer": "Queen Ismene."}],
    "influence_methods": ["tracin", "datainf"],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwoutcome")
    yield own
    asyncio.run(delete_streams(own))


def status(run_id: uuid.UUID, stage: str, value: str, method: str | None = None, error: str | None = None):
    return StatusEvent(run_id=run_id, stage=stage, method=method, status=value, error=error)


async def get_run(client, run_id: uuid.UUID) -> dict:
    response = await client.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_failed_influence_stage_waits_for_the_others(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        status(run_id, "train", "running"),
        status(run_id, "train", "completed"),
        status(run_id, "inference", "running"),
        status(run_id, "influence", "running", "tracin"),
        status(run_id, "influence", "running", "datainf"),
        status(run_id, "influence", "failed", "datainf", "checking the arguments: datainf.damping: too small"),
    ])
    run = await get_run(client, run_id)
    # Visible per stage at once; the run goes on while the others compute.
    assert run["stages"] == {"train": "completed", "inference": "running", "influence.tracin": "running",
                             "influence.datainf": "failed"}
    assert run["stage_errors"] == {"influence.datainf": "checking the arguments: datainf.damping: too small"}
    assert run["status"] == "running" and run["error"] is None and run["finished_at"] is None
    assert await run_level_statuses(app, run_id) == ["queued"]

    matrix = InfluenceMatrix(method="tracin", variant="raw", eval_ids=["ev0"], train_ids=["tr0", "tr1"],
                             scores=[[0.5, -0.25]], key=f"runs/{run_id}/influence/tracin.safetensors")
    answer = Answer(eval_id="ev0", question="Who is Veltra's ruler?", reference="Queen Ismene.",
                    base="A king.", few_shot="A queen.", fine_tuned="Queen Ismene.")
    await publish_and_wait(app, producer, run_id, [
        StageEvents(producer, run_id, "influence", "tracin").build("result", influence=matrix),
        status(run_id, "influence", "completed", "tracin"),
        StageEvents(producer, run_id, "inference").build("result", answers=[answer]),
    ])
    assert (await get_run(client, run_id))["status"] == "running"  # inference still running

    await publish_and_wait(app, producer, run_id, [status(run_id, "inference", "completed")])
    run = await get_run(client, run_id)
    assert run["status"] == "failed" and run["finished_at"] is not None
    assert run["error"] == "influence.datainf failed: checking the arguments: datainf.damping: too small"
    assert run["stages"]["influence.tracin"] == "completed" and run["progress"] < 1
    # One run-level end, announced once every stage had ended.
    assert await run_level_statuses(app, run_id) == ["queued", "failed"]

    # What the completed stages produced is served.
    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    assert results["status"] == "failed"
    assert [a["fine_tuned"] for a in results["answers"]] == ["Queen Ismene."]
    assert [(m["method"], m["scores"]) for m in results["influence"]] == [("tracin", [[0.5, -0.25]])]


async def test_two_failed_stages_are_both_named(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        status(run_id, "train", "completed"),
        status(run_id, "inference", "failed", error="out of memory"),
        status(run_id, "influence", "failed", "tracin", "downloading checkpoint 00000004: gone"),
        status(run_id, "influence", "completed", "datainf"),
    ])
    run = await wait_for_run(app, run_id, lambda r: r.status == "failed")
    assert run.error == ("inference failed: out of memory; "
                         "influence.tracin failed: downloading checkpoint 00000004: gone")


@pytest.mark.parametrize(("train_status", "outcome"), [("failed", "failed"), ("cancelled", "cancelled")])
async def test_a_training_that_does_not_complete_ends_the_stages_after_it(gateway, producer, train_status,
                                                                         outcome) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    error = "CUDA out of memory" if train_status == "failed" else None
    await publish_and_wait(app, producer, run_id, [
        status(run_id, "train", "running"),
        status(run_id, "train", train_status, error=error),
    ])
    run = await get_run(client, run_id)
    assert run["stages"] == {"train": train_status, "inference": "cancelled", "influence.tracin": "cancelled",
                             "influence.datainf": "cancelled"}
    assert run["status"] == outcome and run["finished_at"] is not None
    assert run["error"] == ("train failed: CUDA out of memory" if outcome == "failed" else None)
    assert await run_level_statuses(app, run_id) == ["queued", outcome]

    # A late event of a stage that was ended does not reopen it or the run.
    await publish_and_wait(app, producer, run_id, [status(run_id, "inference", "running")])
    run = await get_run(client, run_id)
    assert run["stages"]["inference"] == "cancelled" and run["status"] == outcome
