"""The JetStream bus against a real NATS server: deduplicated publish, the worker loop,
dead-lettering of malformed and repeatedly failing messages."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from inflab.common.bus import Bus
from inflab.common.messages import DeadLetter, TrainRequest
from inflab.common.settings import Settings

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
    b = await Bus.connect(own, "trainer")
    yield b
    for stream in (b.subjects.jobs_stream, b.subjects.events_stream, b.subjects.dead_letter_stream):
        await b.js.delete_stream(stream)
    await b.close()


async def _dead_letters(bus: Bus, count: int) -> list[DeadLetter]:
    sub = await bus.js.pull_subscribe(bus.subjects.all_dead_letters, stream=bus.subjects.dead_letter_stream)
    msgs = await sub.fetch(count, timeout=30)
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
