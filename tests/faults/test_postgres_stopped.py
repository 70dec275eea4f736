"""PostgreSQL stopped for 10 s mid-run: the gateway's readiness goes false, the run's
events wait in JetStream, a pipeline's submission made meanwhile waits instead of being
dead-lettered, and once PostgreSQL is back the run completes with nothing lost and the
submission is accepted."""

from __future__ import annotations

import asyncio

import nats
import pytest

from fault_harness import (
    TINY_MODEL,
    EventWatch,
    assert_run_complete,
    experiment,
    submit,
    until,
    wait_run_ended,
)
from inflab.core.messages import RunSubmission, SubmissionOutcome
from inflab.core.nats_permissions import inbox_prefix

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]

OUTAGE_S = 10.0


async def test_postgres_stopped_mid_run_loses_nothing(stack) -> None:
    spec = experiment(TINY_MODEL, name="postgres stopped", epochs=3)
    subjects = stack.subjects
    async with stack.client() as client, stack.operator() as nc:
        js = nc.jetstream()
        token = (await client.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
        letters_before = (await js.stream_info(subjects.dead_letter_stream)).state.messages
        pipeline = await nats.connect(stack.nats_urls["pipeline"], inbox_prefix=inbox_prefix("pipeline"))
        try:
            run_id = await submit(client, spec)
            watch = await EventWatch(nc, subjects, run_id).start()
            loop = asyncio.get_running_loop()
            stopped_at: list[float] = []

            def stop_postgres(_: dict) -> None:
                stack.stop_postgres()
                stopped_at.append(loop.time())

            watch.on("train", "progress", stop_postgres)
            await watch.first("train", "progress", timeout=240)
            assert stopped_at, "PostgreSQL was not stopped"

            async def not_ready() -> bool:
                return await stack.readiness() == 503

            await until(not_ready, "readiness to go false", 30)

            # A pipeline submits while the database is away.
            submission = RunSubmission(experiment=experiment(TINY_MODEL, name="submitted in the outage"))
            outcomes: asyncio.Queue = asyncio.Queue()

            async def on_outcome(msg) -> None:
                outcomes.put_nowait(SubmissionOutcome.model_validate_json(msg.data))

            await pipeline.subscribe(subjects.submission_outcome(submission.submission_id), cb=on_outcome)
            await pipeline.jetstream().publish(subjects.run_submit, submission.model_dump_json().encode(),
                                               headers={"Authorization": f"Bearer {token}"})

            # The training goes on; its events wait in JetStream for the gateway.
            durable = subjects.durable("gateway_events")

            async def events_waiting() -> bool:
                info = await js.consumer_info(subjects.events_stream, durable)
                return (info.num_pending or 0) + (info.num_ack_pending or 0) > 0

            await until(events_waiting, "events to wait in JetStream", 60)
            # The outage lasts OUTAGE_S from the stop: its length is the fault, not a wait.
            await asyncio.sleep(max(0.0, stopped_at[0] + OUTAGE_S - loop.time()))
            assert await stack.readiness() == 503 and outcomes.empty()
            stack.start_postgres()

            await stack.gateway_ready(timeout=60)
            outcome = await asyncio.wait_for(outcomes.get(), 60)
            assert outcome.accepted and outcome.run_id == submission.submission_id, outcome
            await wait_run_ended(stack, run_id)
            await assert_run_complete(stack, client, run_id, spec)
            conn = await stack.db()
            try:
                status = await conn.fetchval("SELECT status FROM runs WHERE id = $1", submission.submission_id)
            finally:
                await conn.close()
            assert status in ("queued", "running", "completed"), status
            # The submitted run is not left to the next test.
            cancelled = await client.post(f"/api/runs/{submission.submission_id}/cancel")
            assert cancelled.status_code in (202, 409), cancelled.text
        finally:
            await pipeline.close()
        letters_after = (await js.stream_info(subjects.dead_letter_stream)).state.messages
    assert letters_after == letters_before  # nothing was dead-lettered for the outage
