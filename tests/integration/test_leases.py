"""The trainers' leases on runs against a real NATS: one holder at a time, released for the
next, and a holder whose entry expired and was taken stops (its body is cancelled and
LeaseLost raised). Two trainers across a NATS outage: tests/faults/test_trainer_lease.py."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from nats.js.errors import KeyNotFoundError

from inflab.core.bus import Bus
from inflab.core.leases import LeaseHeld, LeaseLost, RunLease

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(settings):
    tag = uuid.uuid4().hex[:8]
    own = settings.model_copy(update={"subject_prefix": f"{settings.subject_prefix}{tag}",
                                      "stream_prefix": f"{settings.stream_prefix}{tag}", "ack_wait_s": 1.0})
    bus = await Bus.connect(own, "trainer", create_streams=True)
    yield bus
    with contextlib.suppress(Exception):
        await bus.js.delete_key_value(bus.subjects.leases_bucket)
    await bus.close()


async def test_one_holder_at_a_time_and_the_next_after_release(bus: Bus) -> None:
    run_id = uuid.uuid4()
    lease = await RunLease.acquire(bus, run_id)
    with pytest.raises(LeaseHeld, match=f"run {run_id} is being trained by .+:"):
        await RunLease.acquire(bus, run_id)
    async with lease.kept():
        pass  # released when the body ends
    again = await RunLease.acquire(bus, run_id)  # over the delete marker
    await again.release()


async def test_a_lease_that_expired_and_was_taken_stops_its_holder(bus: Bus) -> None:
    run_id = uuid.uuid4()
    first = await RunLease.acquire(bus, run_id)
    kv = await bus.js.key_value(bus.subjects.leases_bucket)

    async def expired() -> None:  # the server removes the entry after the bucket's TTL (1 s)
        while True:
            try:
                await kv.get(str(run_id))
            except KeyNotFoundError:
                return
            await asyncio.sleep(0.1)

    await asyncio.wait_for(expired(), 10)
    second = await RunLease.acquire(bus, run_id)
    body_cancelled = False
    with pytest.raises(LeaseLost, match="was lost"):
        async with first.kept():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert body_cancelled
    # The second holder keeps it (renewing it): nobody else gets it.
    async with second.kept():
        with pytest.raises(LeaseHeld):
            await RunLease.acquire(bus, run_id)
