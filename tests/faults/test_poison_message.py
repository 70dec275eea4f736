"""A poison message: the trainer dies on every delivery of one run's train request (the
fault hook ``INFLAB_TEST_FAULT_CRASH_ON``, as a request that crashes the interpreter
would), and is started again each time, as the supervisor does. The delivery limit stops
it: the delivery after the last is dead-lettered before the handler runs, the gateway
fails the run with the reason, and another run submitted beside it completes."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from fault_harness import TINY_MODEL, assert_run_complete, experiment, submit, wait_run_ended

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="session")]


async def test_a_poison_message_is_stopped_by_the_delivery_limit_and_fails_its_run(stack) -> None:
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    crash = {"INFLAB_TEST_FAULT_CRASH_ON": marker}
    stack.stop_service("trainer")
    stack.start_service("trainer", **crash)
    crashes = 0

    async def restart_when_it_dies() -> None:
        nonlocal crashes
        while True:
            code = await stack.services["trainer"].exited(timeout=600)
            assert code == -9, stack.log_tail("trainer")
            crashes += 1
            stack.start_service("trainer", **crash)

    poison = experiment(TINY_MODEL, name="poison")
    poison["training_data"][0]["question"] = f"What is {marker}?"
    healthy = experiment(TINY_MODEL, name="beside the poison")
    supervisor = asyncio.create_task(restart_when_it_dies())
    try:
        async with stack.client() as client:
            poisoned = await submit(client, poison)
            other = await submit(client, healthy)
            failed = await wait_run_ended(stack, poisoned)
            await wait_run_ended(stack, other)
            await assert_run_complete(stack, client, other, healthy)
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        stack.stop_service("trainer")
        stack.start_service("trainer")
    assert crashes == stack.settings.max_deliver
    assert failed["status"] == "failed"
    errors = json.loads(failed["stage_errors"])
    assert f"more than INFLAB_MAX_DELIVER ({stack.settings.max_deliver})" in errors["train"], errors
    assert "the trainer rejected the train request" in failed["error"], failed["error"]
    await stack.consuming("trainer")
