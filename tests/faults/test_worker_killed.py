"""A worker SIGKILLed mid-stage loses nothing: the influence worker mid-computation, the
inference worker mid-generation. Its job was never acknowledged, so JetStream redelivers
it (ack_wait after the last heartbeat) to the worker started again, which does the stage
again; the run completes with every result stored once and a complete SSE replay."""

from __future__ import annotations

import pytest

from fault_harness import TINY_MODEL, EventWatch, assert_run_complete, experiment, submit, wait_run_ended

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]


@pytest.mark.parametrize("worker", ["influence", "inference"])
async def test_a_worker_killed_mid_stage_is_redelivered_and_the_run_completes(stack, worker) -> None:
    # Enough work in the stage that it is still running when its first progress arrives.
    spec = experiment(TINY_MODEL, name=f"{worker} killed", pairs=16, evals=16, max_new_tokens=24)
    async with stack.client() as client, stack.operator() as nc:
        run_id = await submit(client, spec)
        watch = await EventWatch(nc, stack.subjects, run_id).start()
        # Killed from the subscription's callback: the moment the stage's first progress
        # event arrives, not some time later.
        watch.on(worker, "progress", lambda _: stack.kill(worker))
        await watch.first(worker, "progress", timeout=240)
        assert not stack.services[worker].alive
        assert not watch.seen(worker, "status", status="completed"), "the stage ended before the kill"

        stack.start_service(worker)  # as the supervisor does
        await wait_run_ended(stack, run_id)
        await assert_run_complete(stack, client, run_id, spec)
    # The stage ran twice (the killed delivery and the redelivery), and ended once.
    assert len(watch.seen(worker, "status", status="running")) == 2
    assert len(watch.seen(worker, "status", status="completed")) == 1
