"""Two trainer replicas and a NATS outage longer than the ack wait: the train request is
redelivered when NATS returns (its heartbeats stopped), possibly to the other replica,
while the first one's training may still be going. The run's lease (inflab.core.leases)
keeps the same run from being trained twice at once: the first replica stops its job
once it can no longer renew the lease, and whoever takes the redelivery resumes from the
last checkpoint. So the run's loss curve comes from one training at a time (its steps
rise within each delivery), the training completes once, and the run completes."""

from __future__ import annotations

import asyncio
import json

import pytest

from fault_harness import TINY_MODEL, EventWatch, assert_run_complete, experiment, submit, until, wait_run_ended

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]


async def test_two_trainers_never_train_the_same_run_at_once_across_a_nats_outage(stack) -> None:
    outage_s = stack.settings.ack_wait_s + 2.0  # longer than the ack wait: the request comes back
    second = stack.start_service("trainer-2", service="trainer")

    async def second_consuming() -> bool:
        assert second.alive, stack.log_tail("trainer-2")
        return "trainer consuming" in second.log.read_text()

    await until(second_consuming, "the second trainer to consume", 180)
    # Long enough that the training is still going when NATS comes back.
    spec = experiment(TINY_MODEL, name="two trainers", pairs=40, epochs=20)
    async with stack.client() as client, stack.operator() as nc:
        run_id = await submit(client, spec)
        watch = await EventWatch(nc, stack.subjects, run_id).start()
        down = asyncio.Event()
        watch.on("train", "progress", lambda _: (stack.stop_nats(), down.set()))
        await watch.first("train", "progress", timeout=240)
        assert down.is_set()
        # The outage's length is the fault itself, not a wait for something.
        await asyncio.sleep(outage_s)
        stack.start_nats()
        await wait_run_ended(stack, run_id, timeout=400)
        await assert_run_complete(stack, client, run_id, spec)
        conn = await stack.db()
        try:
            rows = await conn.fetch("SELECT kind, payload::text FROM run_events WHERE run_id = $1 AND stage = 'train' "
                                    "AND kind IN ('status', 'metric', 'log') ORDER BY id", run_id)
        finally:
            await conn.close()
    train = [(kind, json.loads(payload)) for kind, payload in rows]
    # Split at each delivery's "running": within one, the steps only rise. Two trainings at
    # once would interleave their steps.
    segments: list[list[int]] = []
    for kind, payload in train:
        if kind == "status" and payload["status"] == "running":
            segments.append([])
        elif kind == "metric":
            segments[-1].append(payload["step"])
    assert len(segments) >= 2, "the training was not redelivered"
    for steps in segments:
        assert steps == sorted(set(steps)), steps
    resumed = [p["message"] for k, p in train if k == "log" and p["message"].startswith("resumed from the checkpoint")]
    assert resumed, [p for k, p in train if k == "log"]
