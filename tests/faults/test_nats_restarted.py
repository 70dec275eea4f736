"""nats-server restarted mid-run (same port, same file store): every service reconnects
without restarting, the file-backed streams and durable consumers are still there with
their messages, and no stage fails because of the blip; the run completes."""

from __future__ import annotations

import json

import pytest

from fault_harness import TINY_MODEL, EventWatch, assert_run_complete, experiment, submit, wait_run_ended

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]


async def test_a_nats_restart_mid_run_fails_no_stage(stack) -> None:
    spec = experiment(TINY_MODEL, name="nats restarted", epochs=3)
    pids = {name: proc.process.pid for name, proc in stack.services.items()}
    durables = [stack.subjects.durable(name) for name in ("trainer", "inference", "influence")]
    async with stack.client() as client, stack.operator() as nc:
        js = nc.jetstream()
        run_id = await submit(client, spec)
        watch = await EventWatch(nc, stack.subjects, run_id).start()
        seen: dict[str, int] = {}
        before: set[str] = set()

        def restart_nats(_: dict) -> None:
            # From the subscription's callback: the restart lands while training runs.
            before.update(payload["event_id"] for _, _, payload in watch.events)
            stack.stop_nats()
            stack.start_nats()

        watch.on("train", "progress", restart_nats)
        await watch.first("train", "progress", timeout=240)
        await wait_run_ended(stack, run_id)  # our own client reconnected too, and its subscription
        await assert_run_complete(stack, client, run_id, spec)

        # The same streams and durables, with their history: the stream was not made again
        # (its first message is still the first), it holds every event acknowledged before
        # the restart and more since, and the train request of this run was delivered
        # before the restart, by the durable that still exists. (Events around the restart
        # itself are counted elsewhere: a publish retried across it reaches core subscribers
        # twice, and assert_run_complete checks what the run stored.)
        events = await js.stream_info(stack.subjects.events_stream)
        assert before and events.state.first_seq == 1 and events.state.messages > len(before)
        for durable in durables:
            seen[durable] = (await js.consumer_info(stack.subjects.jobs_stream, durable)).delivered.stream_seq
        assert seen[stack.subjects.durable("trainer")] > 0, seen
        conn = await stack.db()
        try:
            statuses = [json.loads(row[0]) for row in await conn.fetch(
                "SELECT payload::text FROM run_events WHERE run_id = $1 AND kind = 'status'", run_id)]
        finally:
            await conn.close()
    assert not [s for s in statuses if s["status"] == "failed"], statuses
    # Nobody restarted: every service rode out the blip in the same process.
    assert {name: proc.process.pid for name, proc in stack.services.items() if proc.alive} == pids
