"""The JetStream bus against a real NATS server: deduplicated publish, the worker loop,
dead-lettering of malformed and repeatedly failing messages, and of job requests the
gateway did not sign (or that name another run's files); a worker waits for the streams
the gateway creates; a stage forwarding what an ML core emits (typed events publish as the
stage's own, exactly as the same item as a dict does)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest
from nats.errors import TimeoutError as NatsTimeout

from inflab.core.bus import Bus
from inflab.core.events import StageEvents
from inflab.core.job_signing import SIGNATURE_HEADER, JobSigner, new_key_pair
from inflab.core.messages import (
    CheckpointRef, DeadLetter, InferenceRequest, LogEvent, ProgressEvent, StatusEvent, TrainRequest, parse_event,
)
from inflab.core.objectstore import checkpoint_prefix
from inflab.core.settings import Settings
from inflab.trainer.core_events import NO_RUN, TRAIN_EVENTS, CoreEvents, step_event_id

pytestmark = pytest.mark.integration


def _request() -> TrainRequest:
    return TrainRequest.model_validate(
        {
            "run_id": str(uuid.uuid4()),
            "spec": {
                "training_data": [{"id": "a", "question": "q?", "answer": "a."}],
                "eval_data": [{"id": "e", "question": "q?"}],
            },
        }
    )


@pytest.fixture
async def bus(settings: Settings):
    # A stream namespace of its own per test, so leftovers of one test never reach another.
    tag = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={"subject_prefix": f"{settings.subject_prefix}{tag}", "stream_prefix": f"{settings.stream_prefix}{tag}"}
    )
    b = await Bus.connect(own, "trainer", create_streams=True)
    yield b
    for stream in (b.subjects.jobs_stream, b.subjects.events_stream, b.subjects.dead_letter_stream,
                   b.subjects.control_stream, b.subjects.submissions_stream):
        await b.js.delete_stream(stream)
    await b.close()


async def _dead_letters(bus: Bus, count: int) -> list[DeadLetter]:
    """The first ``count`` dead letters of the stream, once there are that many."""
    sub = await bus.js.pull_subscribe(bus.subjects.all_dead_letters, stream=bus.subjects.dead_letter_stream)
    msgs = []
    try:
        async with asyncio.timeout(30):
            while len(msgs) < count:
                with contextlib.suppress(NatsTimeout):
                    msgs += await sub.fetch(count - len(msgs), timeout=1)
    finally:
        await sub.unsubscribe()
    return [DeadLetter.model_validate_json(m.data) for m in msgs]


async def test_publish_with_same_id_is_deduplicated(bus: Bus):
    request = _request()
    assert await bus.publish(bus.subjects.train_request, request, msg_id=str(request.run_id))
    assert not await bus.publish(bus.subjects.train_request, request, msg_id=str(request.run_id))
    info = await bus.js.stream_info(bus.subjects.jobs_stream)
    assert info.state.messages == 1


async def test_worker_handles_good_messages_and_dead_letters_bad_ones(bus: Bus):
    handled: list[TrainRequest] = []
    stop = asyncio.Event()
    good = _request()

    async def handler(msg: TrainRequest, raw) -> None:
        handled.append(msg)
        stop.set()

    await bus.js.publish(bus.subjects.train_request, b"\xff not json")
    await bus.js.publish(bus.subjects.train_request, json.dumps({"run_id": "x"}).encode())
    await bus.publish(bus.subjects.train_request, good)
    await asyncio.wait_for(bus.consume(bus.subjects.train_request, TrainRequest, handler, stop), 30)

    assert [m.run_id for m in handled] == [good.run_id]
    letters = await _dead_letters(bus, 2)
    assert all(letter.service == "trainer" for letter in letters)
    assert "Invalid JSON" in letters[0].reason
    assert "run_id" in letters[1].reason and "spec" in letters[1].reason


async def test_failing_handler_is_retried_then_dead_lettered(bus: Bus):
    attempts: list[int] = []
    stop = asyncio.Event()

    async def handler(msg: TrainRequest, raw) -> None:
        attempts.append(raw.metadata.num_delivered)
        if len(attempts) >= bus.settings.max_deliver:
            asyncio.get_running_loop().call_soon(stop.set)
        raise RuntimeError("boom")

    await bus.publish(bus.subjects.train_request, _request())
    await asyncio.wait_for(bus.consume(bus.subjects.train_request, TrainRequest, handler, stop), 60)

    assert attempts == list(range(1, bus.settings.max_deliver + 1))
    [letter] = await _dead_letters(bus, 1)
    assert "boom" in letter.reason and letter.deliveries == bus.settings.max_deliver


async def test_a_message_whose_handler_never_finishes_is_dead_lettered_before_running_again(bus: Bus):
    """A handler that never finishes with a message (its process dies on it: here the
    consumer is cancelled mid-handler every time) gets it ``max_deliver`` times; the next
    delivery is dead-lettered without reaching the handler."""
    calls: list[int] = []
    started = asyncio.Event()

    async def never_finishes(msg: TrainRequest, raw) -> None:
        calls.append(raw.metadata.num_delivered)
        started.set()
        await asyncio.Event().wait()

    await bus.publish(bus.subjects.train_request, _request())
    for _ in range(bus.settings.max_deliver):
        started.clear()
        task = asyncio.create_task(bus.consume(bus.subjects.train_request, TrainRequest, never_finishes,
                                               asyncio.Event()))
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(bus.subjects.train_request, TrainRequest, never_finishes, stop))
    [letter] = await _dead_letters(bus, 1)
    stop.set()
    await asyncio.wait_for(task, 10)

    assert calls == list(range(1, bus.settings.max_deliver + 1))
    assert letter.deliveries == bus.settings.max_deliver + 1
    assert f"more than INFLAB_MAX_DELIVER ({bus.settings.max_deliver})" in letter.reason


async def test_a_worker_runs_only_requests_the_gateway_signed(bus: Bus):
    """Unsigned, signed with another key, signed for another subject, or signed and then
    altered: dead-lettered with the reason and never handled. A signed request whose
    checkpoint lies outside its run's prefix is refused too."""
    s = bus.subjects
    handled: list[TrainRequest] = []
    stop = asyncio.Event()

    async def handler(msg: TrainRequest, raw) -> None:
        handled.append(msg)
        stop.set()

    gateway = JobSigner(bus.settings.job_signing_key.get_secret_value())
    impostor = JobSigner(new_key_pair()[0])
    body = _request().model_dump_json().encode()
    forged = [
        (body, {}),
        (body, {SIGNATURE_HEADER: impostor.sign(s.train_request, body)}),
        (body, {SIGNATURE_HEADER: gateway.sign(s.inference_request, body)}),
        (body.replace(b'"q?"', b'"what?"', 1), {SIGNATURE_HEADER: gateway.sign(s.train_request, body)}),
        (body, {SIGNATURE_HEADER: "hmac:abc"}),
    ]
    for data, headers in forged:
        await bus.js.publish(s.train_request, data, headers=headers or None)
    genuine = _request()
    await bus.publish_request("train", genuine, msg_id=str(genuine.run_id))
    await asyncio.wait_for(bus.consume(s.train_request, TrainRequest, handler, stop, signed=True), 30)

    assert [m.run_id for m in handled] == [genuine.run_id]
    reasons = [letter.reason for letter in await _dead_letters(bus, len(forged))]
    assert "unsigned job request" in reasons[0]
    assert all("not the gateway's" in reason for reason in reasons[1:4]), reasons
    assert "unknown scheme 'hmac'" in reasons[4]

    # The gateway's signature does not make another run's checkpoint acceptable.
    run_id = uuid.uuid4()
    outside = {"run_id": str(run_id), "spec": genuine.spec.model_dump(mode="json"),
               "adapter": {"step": 1, "epoch": 1, "key": f"runs/{uuid.uuid4()}/checkpoints/1", "learning_rate": 1e-3}}
    data = json.dumps(outside).encode()
    await bus.js.publish(s.inference_request, data, headers={SIGNATURE_HEADER: gateway.sign(s.inference_request, data)})
    seen: list[InferenceRequest] = []
    done = asyncio.Event()

    async def on_inference(msg: InferenceRequest, raw) -> None:
        seen.append(msg)

    consumer = asyncio.create_task(bus.consume(s.inference_request, InferenceRequest, on_inference, done, signed=True))
    [letter] = (await _dead_letters(bus, len(forged) + 1))[-1:]
    done.set()
    await asyncio.wait_for(consumer, 10)
    assert seen == [] and "adapter.key" in letter.reason and "not under this run's prefix" in letter.reason


async def test_a_worker_waits_for_the_gateway_to_create_the_streams(settings: Settings):
    tag = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={"subject_prefix": f"{settings.subject_prefix}{tag}", "stream_prefix": f"{settings.stream_prefix}{tag}"}
    )
    worker = await Bus.connect(own, "trainer")
    handled: list[TrainRequest] = []
    stop = asyncio.Event()

    async def handler(msg: TrainRequest, raw) -> None:
        handled.append(msg)
        stop.set()

    consuming = asyncio.create_task(worker.consume(worker.subjects.train_request, TrainRequest, handler, stop,
                                                   signed=True))
    gateway = await Bus.connect(own, "gateway", create_streams=True)
    try:
        request = _request()
        await gateway.publish_request("train", request, msg_id=str(request.run_id))
        await asyncio.wait_for(consuming, 30)
        assert [m.run_id for m in handled] == [request.run_id]
    finally:
        for stream in (gateway.subjects.jobs_stream, gateway.subjects.events_stream, gateway.subjects.control_stream,
                       gateway.subjects.dead_letter_stream, gateway.subjects.submissions_stream):
            await gateway.js.delete_stream(stream)
        await gateway.close()
        await worker.close()


# --------------------------------------------------------------------------- forwarding
async def _published(bus: Bus, run_id: uuid.UUID, send, count: int) -> list:
    """The first ``count`` events published on the run's subjects while ``send()`` runs."""
    received: asyncio.Queue = asyncio.Queue()
    sub = await bus.nc.subscribe(bus.subjects.event(run_id, "*", "*"), cb=received.put)
    try:
        await send()
        async with asyncio.timeout(15):
            return [parse_event((await received.get()).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_typed_events_publish_as_the_stage_s_own(bus: Bus) -> None:
    run_id = uuid.uuid4()
    stage = StageEvents(bus, run_id, "train")
    core = CoreEvents("train")  # a core that was not told its run
    job = CoreEvents("train", run_id)  # a job knows its run
    metric = {"step": 3, "epoch": 1.5, "loss": 0.25, "learning_rate": 1e-3, "grad_norm": 0.5}
    ref = CheckpointRef(step=4, epoch=2, key=checkpoint_prefix(run_id, 4), learning_rate=1e-3, loss=0.2)

    async def send() -> None:
        await stage.forward(core.make(ProgressEvent, fraction=0.5, step=3, total=6, epoch=1.5, eta_s=2.0))
        await stage.forward(job.metric({"kind": "metric", **metric}))
        await stage.forward({"kind": "metric", **metric})  # the same metric as a dict
        await stage.forward(job.checkpoint(ref))
        await stage.forward(core.make(StatusEvent, status="checkpointing"))
        await stage.forward(core.make(StatusEvent, status="completed"))  # the service's to say
        await stage.forward(core.make(LogEvent, level="warning", message="done"))

    progress, typed, plain, checkpoint, status, refused, log = await _published(bus, run_id, send, 7)
    assert core.run_id == NO_RUN
    for event in (progress, typed, plain, checkpoint, status, refused, log):
        assert (event.run_id, event.stage, event.method) == (run_id, "train", None)
    assert (progress.kind, progress.fraction, progress.step, progress.total, progress.eta_s) == ("progress", 0.5, 3, 6, 2.0)
    assert typed.model_dump(exclude={"time", "event_id"}) == plain.model_dump(exclude={"time", "event_id"})
    # A training's metric and checkpoint ids come from the run and the step: sent again
    # after a resume, they are stored once.
    assert typed.event_id == step_event_id(run_id, "metric", 3) == uuid.uuid5(TRAIN_EVENTS, f"{run_id}:metric:3")
    assert checkpoint.kind == "checkpoint" and checkpoint.checkpoint == ref
    assert checkpoint.event_id == uuid.uuid5(TRAIN_EVENTS, f"{run_id}:checkpoint:4")
    assert status.kind == "status" and status.status == "checkpointing"
    assert refused.kind == "log" and refused.level == "debug" and "'status'" in refused.message
    assert (log.kind, log.level, log.message) == ("log", "warning", "done")


async def test_a_typed_event_keeps_an_id_its_emitter_chose(bus: Bus) -> None:
    run_id = uuid.uuid4()
    chosen = uuid.uuid4()
    event = CoreEvents("train").make(ProgressEvent, event_id=chosen, fraction=1.0)

    async def send() -> None:
        await StageEvents(bus, run_id, "train").forward(event)

    (published,) = await _published(bus, run_id, send, 1)
    assert (published.event_id, published.run_id, published.stage) == (chosen, run_id, "train")
