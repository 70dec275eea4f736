"""Dead letters and stream retention against the real NATS and Postgres: a job request a
worker rejects (here the trainer, for a model id the gateway would have refused) fails
its run with the reason, through the gateway's consumer of the dead-letter stream; the
dead letter keeps its run id but none of the training text; the events, control and
dead-letter streams carry the retention settings ask for, also once they exist."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from inflab.core.bus import Bus, Rejected
from inflab.core.messages import DeadLetter, InferenceRequest, InfluenceRequest, TrainRequest
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings, start_run, wait_for_run
from inflab.inference.service import InferenceService
from inflab.influence.service import InfluenceService
from inflab.trainer.service import TrainerService

pytestmark = pytest.mark.integration

SECRET_QUESTION = "What is the launch code of project Veltra?"
SECRET_ANSWER = "It is 0451, and nobody may read it in a dead letter."
EXPERIMENT = {
    "name": "rejected",
    "training_data": [{"question": SECRET_QUESTION, "answer": SECRET_ANSWER}],
    "eval_data": [{"question": "Which code does Veltra launch with?", "answer": "0451."}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwdl")
    yield own
    asyncio.run(delete_streams(own))


async def _take_train_request(bus: Bus, durable: str) -> TrainRequest:
    sub = await bus.js.pull_subscribe(bus.subjects.train_request, durable=durable, stream=bus.subjects.jobs_stream)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    [msg] = await sub.fetch(1, timeout=1)
                except NatsTimeout:
                    continue
                await msg.ack()
                return TrainRequest.model_validate_json(msg.data)
    finally:
        await sub.unsubscribe()


async def test_a_rejected_job_request_fails_its_run_with_the_reason(gw_settings) -> None:
    subjects = Subjects.from_settings(gw_settings)
    async with gateway_in_process(gw_settings) as (app, client):
        run_id = await start_run(client, EXPERIMENT)
        worker = await Bus.connect(gw_settings, "trainer")
        letters: asyncio.Queue = asyncio.Queue()
        nc = await nats.connect(gw_settings.nats_url)
        stop = asyncio.Event()
        consumer = None
        try:
            await nc.subscribe(subjects.dead_letter("trainer"), cb=letters.put)
            durable = subjects.durable("trainer")
            # The gateway's own request for the run, taken off the queue as the trainer would.
            genuine = await _take_train_request(worker, durable)
            assert genuine.run_id == run_id
            # In its place one naming a path as the model, signed as a genuine request is (a
            # gateway that let it through, or a worker whose allow-list is narrower).
            forged = genuine.model_copy(update={"spec": genuine.spec.model_copy(update={"model_id": "/etc"})})
            await app.state.bus.publish_request("train", forged, msg_id=f"forged-{uuid.uuid4()}")
            trainer = TrainerService(worker, gw_settings)
            consumer = asyncio.create_task(worker.consume(subjects.train_request, TrainRequest, trainer.on_train_request,
                                                          stop, durable=durable, signed=True))

            letter = DeadLetter.model_validate_json((await asyncio.wait_for(letters.get(), 20)).data)
            assert letter.service == "trainer" and letter.run_id == run_id
            assert letter.reason.startswith("model_id: not a model this deployment allows")
            # The payload says what the request was, without the researcher's text.
            assert SECRET_QUESTION not in letter.payload and SECRET_ANSWER not in letter.payload
            assert "0451" not in letter.payload
            payload = json.loads(letter.payload)
            assert payload["run_id"] == str(run_id) and payload["spec"]["model_id"] == "/etc"
            assert payload["spec"]["training_data"] == "<1 items left out>"

            run = await wait_for_run(app, run_id, lambda r: r.status == "failed")
            assert run.stages["train"] == "failed"
            assert run.error.startswith("train failed: the trainer rejected the train request: model_id: not a model")
            shown = (await client.get(f"/api/runs/{run_id}")).json()
            assert shown["status"] == "failed" and "model_id" in shown["error"]
        finally:
            stop.set()
            if consumer is not None:
                await consumer
            await worker.close()
            await nc.close()

    # The other workers refuse the same ids with the same check.
    bus = await Bus.connect(gw_settings, "test")
    try:
        spec = forged.spec
        adapter = {"step": 1, "epoch": 1, "key": f"runs/{run_id}/checkpoints/00000001", "learning_rate": 0.001}
        with pytest.raises(Rejected, match="model_id"):
            await InferenceService(bus, gw_settings).on_inference_request(
                InferenceRequest(run_id=run_id, spec=spec, adapter=adapter))
        with pytest.raises(Rejected, match="model_id"):
            await InfluenceService(bus, gw_settings).on_influence_request(
                InfluenceRequest(run_id=run_id, spec=spec, method="tracin", checkpoints=[adapter]))
    finally:
        await bus.close()


async def test_streams_carry_the_retention_settings_ask_for(gw_settings) -> None:
    own = gw_settings.model_copy(update={
        "stream_prefix": f"{gw_settings.stream_prefix}_RET", "subject_prefix": f"{gw_settings.subject_prefix}.ret",
        "events_max_age_s": 3600, "events_max_bytes": 10_000_000,
        "control_max_age_s": 7200, "control_max_bytes": 20_000_000,
        "deadletter_max_age_s": 10800, "deadletter_max_bytes": 30_000_000,
    })
    subjects = Subjects.from_settings(own)
    try:
        bus = await Bus.connect(own, "gateway", create_streams=True)

        async def retention() -> dict[str, tuple[float, int]]:
            out = {}
            for name in (subjects.events_stream, subjects.control_stream, subjects.dead_letter_stream):
                config = (await bus.js.stream_info(name)).config
                out[name] = (config.max_age, config.max_bytes)
            return out

        assert await retention() == {
            subjects.events_stream: (3600, 10_000_000),
            subjects.control_stream: (7200, 20_000_000),
            subjects.dead_letter_stream: (10800, 30_000_000),
        }
        await bus.close()

        # Existing streams follow a change of settings when a service next starts.
        changed = own.model_copy(update={"events_max_age_s": 1800, "deadletter_max_bytes": 0})
        bus = await Bus.connect(changed, "gateway", create_streams=True)
        after = await retention()
        assert after[subjects.events_stream] == (1800, 10_000_000)
        assert after[subjects.dead_letter_stream] == (10800, -1)  # 0 in settings: no limit
        await bus.close()
    finally:
        await delete_streams(own)


async def test_a_stream_the_server_has_no_room_for_stops_the_gateway_naming_it(gw_settings) -> None:
    """max_bytes is reserved when a stream is made: a server without the room refuses, and
    starting must fail saying so rather than run without the stream."""
    huge = gw_settings.model_copy(update={
        "stream_prefix": f"{gw_settings.stream_prefix}_HUGE", "subject_prefix": f"{gw_settings.subject_prefix}.huge",
        "events_max_bytes": 2**50,
    })
    try:
        with pytest.raises(RuntimeError, match=f"could not create stream {Subjects.from_settings(huge).events_stream}"):
            await Bus.connect(huge, "gateway", create_streams=True)
    finally:
        await delete_streams(huge)
