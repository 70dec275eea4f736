"""Steering a run through the gateway, against real NATS and Postgres: ``PATCH .../params``
and ``POST .../cancel`` put a ControlMessage on the run's control subject (read back here
from the control stream, as the trainer reads it), refuse what cannot be done (404, 409,
422 naming the field), and a run no trainer holds is cancelled at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from inflab.core.messages import ControlMessage, StatusEvent
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
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
    "name": "control",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwctl")
    yield own
    asyncio.run(delete_streams(own))


async def control_messages(settings: Settings, run_id: uuid.UUID, count: int, timeout: float = 10) -> list:
    """The first ``count`` messages on the run's control subject, from the start of the
    control stream (an ephemeral consumer, as a trainer picking the job up later reads it)."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subjects.control(run_id), stream=subjects.control_stream)
        messages: list = []
        async with asyncio.timeout(timeout):
            while len(messages) < count:
                try:
                    batch = await sub.fetch(count - len(messages), timeout=1)
                except NatsTimeout:
                    continue
                for msg in batch:
                    await msg.ack()
                    messages.append(msg)
        return messages
    finally:
        await nc.close()


# --------------------------------------------------------------------------- params
async def test_a_parameter_change_is_published_on_the_runs_control_subject(gateway, gw_settings, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [StatusEvent(run_id=run_id, stage="train", status="running")])

    response = await client.patch(f"/api/runs/{run_id}/params", json={"learning_rate": 5e-4})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["run_id"] == str(run_id) and accepted["action"] == "update_params"
    assert accepted["run_status"] == "running"

    [msg] = await control_messages(gw_settings, run_id, 1)
    assert msg.subject == Subjects.from_settings(gw_settings).control(run_id)
    assert msg.headers["Nats-Msg-Id"] == accepted["request_id"]  # a retried publish is deduplicated
    message = ControlMessage.model_validate_json(msg.data)
    assert (message.request_id, message.run_id, message.action) == (
        uuid.UUID(accepted["request_id"]), run_id, "update_params")
    assert message.params.learning_rate == 5e-4 and message.params.weight_decay is None


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"learning_rate": -0.1}, ["body", "learning_rate"], "greater than 0"),
        ({"learning_rate": "abc"}, ["body", "learning_rate"], "number"),
        ({"weight_decay": 2}, ["body", "weight_decay"], "less than or equal to 1"),
        ({"lora_rank": 16}, ["body", "lora_rank"], "cannot change while a run trains"),
        ({"learning_rate": 1e-4, "batch_size": 8}, ["body", "batch_size"], "cannot change while a run trains"),
        ({"colour": "green"}, ["body", "colour"], "not a hyperparameter"),
        ({}, ["body"], "at least one"),
        ([1, 2], ["body"], "dictionary"),
    ],
    ids=["negative-lr", "lr-abc", "weight-decay-2", "lora-rank", "batch-size", "unknown", "empty", "not-an-object"],
)
async def test_an_invalid_parameter_change_is_422_naming_the_field(gateway, body, loc, says) -> None:
    _, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    response = await client.patch(f"/api/runs/{run_id}/params", json=body)
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert tuple(loc) in errors and says in errors[tuple(loc)], errors


async def test_a_refused_change_publishes_nothing(gateway, gw_settings) -> None:
    _, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    assert (await client.patch(f"/api/runs/{run_id}/params", json={"learning_rate": -1})).status_code == 422
    accepted = (await client.patch(f"/api/runs/{run_id}/params", json={"weight_decay": 0.01})).json()
    # The run's first control message is the valid one.
    [msg] = await control_messages(gw_settings, run_id, 1)
    assert str(ControlMessage.model_validate_json(msg.data).request_id) == accepted["request_id"]


async def test_no_parameter_change_once_training_has_ended(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        StatusEvent(run_id=run_id, stage="train", status="running"),
        StatusEvent(run_id=run_id, stage="train", status="completed"),
    ])
    response = await client.patch(f"/api/runs/{run_id}/params", json={"learning_rate": 5e-4})
    assert response.status_code == 409 and "training has already ended" in response.json()["detail"]


# --------------------------------------------------------------------------- cancel
async def test_cancelling_a_queued_run_ends_it_at_once_and_tells_a_later_trainer(
    gateway, gw_settings, producer
) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    response = await client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["action"] == "cancel" and accepted["run_status"] == "cancelled"

    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "cancelled" and run["error"] is None and run["finished_at"] is not None
    assert set(run["stages"].values()) == {"cancelled"}
    assert run["actual_duration_s"] is None  # it never ran
    assert await run_level_statuses(app, run_id) == ["queued", "cancelled"]

    # The trainer that takes the job later finds the cancel in the control stream...
    [msg] = await control_messages(gw_settings, run_id, 1)
    message = ControlMessage.model_validate_json(msg.data)
    assert (message.action, str(message.request_id)) == ("cancel", accepted["request_id"])
    # ...and reports its stage cancelled without training: still one end of the run.
    await publish_and_wait(app, producer, run_id, [StatusEvent(run_id=run_id, stage="train", status="cancelled")])
    assert await run_level_statuses(app, run_id) == ["queued", "cancelled"]

    # A finished run cannot be steered.
    for method, path, body in (("POST", "cancel", None), ("PATCH", "params", {"learning_rate": 1e-4})):
        again = await client.request(method, f"/api/runs/{run_id}/{path}", json=body)
        assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]


async def test_cancelling_a_training_run_is_the_trainers_to_finish(gateway, gw_settings, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        StatusEvent(run_id=run_id, stage="train", status="running"),
        StatusEvent(run_id=run_id, stage="train", status="checkpointing"),
    ])

    response = await client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["run_status"] == "running"
    [msg] = await control_messages(gw_settings, run_id, 1)
    assert ControlMessage.model_validate_json(msg.data).action == "cancel"
    assert (await client.get(f"/api/runs/{run_id}")).json()["status"] == "running"

    # The trainer stops at its next step and says so.
    await producer.publish_event(StatusEvent(run_id=run_id, stage="train", status="cancelled"))
    run = await wait_for_run(app, run_id, lambda r: r.status == "cancelled")
    assert run.stages["train"] == "cancelled" and run.actual_duration_s is not None
    assert await run_level_statuses(app, run_id) == ["queued", "cancelled"]


async def test_cancelling_after_training_ends_the_run_at_once(gateway, producer) -> None:
    """Inference and influence do not listen for control: the gateway ends the run."""
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish_and_wait(app, producer, run_id, [
        StatusEvent(run_id=run_id, stage="train", status="running"),
        StatusEvent(run_id=run_id, stage="train", status="completed"),
        StatusEvent(run_id=run_id, stage="inference", status="running"),
    ])
    response = await client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["run_status"] == "cancelled"
    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["stages"] == {"train": "completed", "inference": "running", "influence.tracin": "cancelled"}
    assert await run_level_statuses(app, run_id) == ["queued", "cancelled"]


async def test_nats_down_is_503_and_changes_nothing(gateway) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await app.state.bus.nc.close()
    for method, path, body in (("POST", "cancel", None), ("PATCH", "params", {"learning_rate": 1e-4})):
        response = await client.request(method, f"/api/runs/{run_id}/{path}", json=body)
        assert response.status_code == 503, response.text
    assert (await client.get(f"/api/runs/{run_id}")).json()["status"] == "queued"
