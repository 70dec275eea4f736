"""The gateway SIGKILLed mid-run: the trainer's events keep flowing into JetStream while no
gateway runs (the training ends meanwhile), the restarted gateway persists that backlog
and queues the next stages, and an SSE client whose stream broke resumes with
``Last-Event-ID`` and misses nothing."""

from __future__ import annotations

import asyncio

import pytest

from fault_harness import (
    TINY_MODEL,
    EventWatch,
    assert_run_complete,
    experiment,
    follow_sse,
    submit,
    until,
    wait_run_ended,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]


async def test_a_gateway_killed_mid_run_persists_the_backlog_and_sse_resumes(stack) -> None:
    spec = experiment(TINY_MODEL, name="gateway killed", epochs=3)
    durable = stack.subjects.durable("gateway_events")
    async with stack.client() as client, stack.operator() as nc:
        run_id = await submit(client, spec)
        watch = await EventWatch(nc, stack.subjects, run_id).start()
        before: list[int] = []
        stream = asyncio.create_task(follow_sse(client, run_id, before))
        watch.on("train", "progress", lambda _: stack.kill("gateway"))
        await watch.first("train", "progress", timeout=240)
        assert not stack.services["gateway"].alive
        assert await asyncio.wait_for(stream, 30) is False, "the stream ended instead of breaking"
        assert before, "the stream had sent nothing before the kill"

        # No gateway: the training goes on and ends, its events kept in JetStream.
        await watch.first("train", "status", timeout=240, status="completed")
        js = nc.jetstream()
        backlog = (await js.consumer_info(stack.subjects.events_stream, durable)).num_pending
        assert backlog > 0

        stack.start_service("gateway")  # as the supervisor does
        await stack.gateway_ready()
        after: list[int] = []
        assert await asyncio.wait_for(follow_sse(client, run_id, after, last_event_id=before[-1]), 300) is True
        await wait_run_ended(stack, run_id)
        await assert_run_complete(stack, client, run_id, spec, sse_ids=before + after)

        async def drained() -> bool:
            return (await js.consumer_info(stack.subjects.events_stream, durable)).num_pending == 0

        await until(drained, "the gateway to have stored every event", 30)
