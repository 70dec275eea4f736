"""schemathesis against the gateway's own /openapi.json: every operation gets generated
valid and invalid requests; none may answer 5xx or with a body that breaks its documented
schema. Bounded (a few examples per operation, no shrinking) so it runs in well under a
minute on a loaded 2-core box; run it longer with INFLAB_FUZZ_EXAMPLES."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from inflab.core.settings import Settings
from helpers import gateway as testing
from helpers.gateway import delete_streams, gateway_server, isolated_settings

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("INFLAB_FUZZ_EXAMPLES", "8"))


@pytest.fixture(scope="module")
def served(settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    """The gateway on a free port, in its own thread and event loop (schemathesis calls are
    synchronous); its base URL and the headers a signed-in client sends."""
    own = isolated_settings(settings, "gwfuzz").model_copy(update={"max_request_bytes": 256 * 1024})
    started: queue.Queue = queue.Queue()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with gateway_server(own) as (_, url):
                headers = {}
                # Once accounts exist, the fuzzing client signs in like any other.
                sign_up = getattr(testing, "access_token", None)
                if sign_up is not None:
                    headers["Authorization"] = f"Bearer {await sign_up(url, own.local_user_email)}"
                started.put((url, headers, asyncio.get_running_loop(), stop))
                await stop.wait()
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fuzzed-gateway")
    thread.start()
    got = started.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    url, headers, loop, stop = got
    try:
        yield url, headers
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        asyncio.run(delete_streams(own))


def test_no_5xx_and_every_response_matches_its_schema(served):
    url, headers = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    started = time.monotonic()
    for operation in operations:
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests every run: a failure reproduces
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                case.call_and_validate(
                    base_url=url, headers=headers, timeout=10,
                    checks=[not_a_server_error, response_schema_conformance],
                )

            try:
                check()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters and no body): only positive cases.
                assert mode is GenerationMode.NEGATIVE, operation.label
    elapsed = time.monotonic() - started
    print(f"fuzzed {len(operations)} operations x {EXAMPLES} examples x 2 modes in {elapsed:.1f}s")
