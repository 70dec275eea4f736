"""One fault stack for the whole fault suite (starting four services costs tens of seconds
here): every test uses runs of its own, and a test that kills or stops a part brings it
back before it ends, so the next test starts on a whole stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from fault_harness import TINY_MODEL, FaultStack


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fault_stack(tmp_path_factory, ray_cluster) -> AsyncIterator[FaultStack]:
    import ray

    from helpers.tiny_model import build_tiny_model

    stack = FaultStack(tmp_path_factory.mktemp("faults"), ray.get_runtime_context().gcs_address)
    build_tiny_model(stack.settings.models_dir / TINY_MODEL, seed=0)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(fault_stack: FaultStack) -> AsyncIterator[FaultStack]:
    """The shared stack, checked whole before the test and made whole again after it."""
    for name in ("gateway", "trainer", "inference", "influence"):
        proc = fault_stack.services.get(name)
        if proc is None or not proc.alive:
            fault_stack.start_service(name)
    await fault_stack.gateway_ready()
    yield fault_stack
    for name in [n for n in fault_stack.services if n not in ("gateway", "trainer", "inference", "influence")]:
        fault_stack.stop_service(name)
