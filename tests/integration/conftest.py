"""Fixtures shared by the integration tests of the gateway. Each module defines its own
``gw_settings`` (isolated streams and database rows under its own name, plus whatever
settings it overrides); the in-process gateway and a worker's view of the bus come from
here."""

from __future__ import annotations

import pytest

from inflab.core.bus import Bus
from helpers.gateway import gateway_in_process


@pytest.fixture
async def gateway(gw_settings):
    """The gateway app and an HTTP client talking to it in process (its event persister
    and submission consumer running on the real NATS and Postgres)."""
    async with gateway_in_process(gw_settings) as (app, client):
        yield app, client


@pytest.fixture
async def producer(gw_settings):
    """A worker's view of the bus: publishes run events as the trainer and friends do."""
    bus = await Bus.connect(gw_settings, "test-producer", create_streams=True)
    yield bus
    await bus.close()
