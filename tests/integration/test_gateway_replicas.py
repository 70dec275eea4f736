"""Two gateway replicas, each its own OS process (``python -m inflab.gateway``) on one
machine, sharing one NATS and one Postgres: an SSE stream on either replica sees every
event of the run, whichever replica stored it (pokes cross replicas through NATS, well
inside the one-minute heartbeat); rate limits, quotas and idempotency keys hold across
them (their state is in Postgres, under row locks).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from inflab.core.db.models import RunEventRow
from inflab.core.db.session import make_engine, make_sessionmaker
from inflab.core.messages import ProgressEvent, StatusEvent
from inflab.core.settings import Settings
from helpers.gateway import TEST_PASSWORD, delete_streams, isolated_settings

from helpers.gateway_process import GatewayProcess

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "two replicas",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwrep").model_copy(update={
        "sse_heartbeat_s": 60.0,
        # Clients name their address (X-Forwarded-For from loopback), so the limits below
        # count only this test's requests, not the whole suite's from 127.0.0.1.
        "forwarded_allow_ips": "127.0.0.1",
        "register_max_per_window": 3,
        "max_active_runs_per_user": 2,
    })
    yield own
    asyncio.run(delete_streams(own))


def address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def register(url: str, email: str, client_address: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers={"X-Forwarded-For": client_address}) as client:
        return await client.post("/api/auth/register", json={"email": email, "password": TEST_PASSWORD})


def sse_ids(body: str) -> list[int]:
    return [int(line[4:]) for line in body.splitlines() if line.startswith("id: ")]


async def test_two_replicas_share_streams_limits_and_idempotency(gw_settings, producer, tmp_path) -> None:
    log = tmp_path / "gateways.log"
    replicas = [GatewayProcess(gw_settings, log), GatewayProcess(gw_settings, log)]
    engine = make_engine(gw_settings.database_url)
    try:
        await asyncio.gather(*(replica.ready() for replica in replicas))
        a, b = (replica.url for replica in replicas)

        # Rate limits: three registrations per address per window, counted across replicas.
        sender, tag = address(), uuid.uuid4().hex[:8]
        statuses = [(await register(url, f"limit-{tag}-{n}@tests.invalid", sender)).status_code
                    for n, url in enumerate([a, b, a, b])]
        assert statuses == [201, 201, 201, 429]

        signed_in = await register(a, f"replicas-{tag}@tests.invalid", address())
        assert signed_in.status_code == 201, signed_in.text
        auth = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        async with httpx.AsyncClient(base_url=a, headers=auth) as on_a, \
                httpx.AsyncClient(base_url=b, headers=auth) as on_b:
            experiment = (await on_a.post("/api/experiments", json=EXPERIMENT)).json()["id"]
            path = f"/api/experiments/{experiment}/runs"

            # Idempotency: the same key sent to both at once starts one run.
            key = {"Idempotency-Key": str(uuid.uuid4())}
            first, second = await asyncio.gather(on_a.post(path, headers=key), on_b.post(path, headers=key))
            assert (first.status_code, second.status_code) == (202, 202)
            run_id = first.json()["run_id"]
            assert second.json()["run_id"] == run_id
            assert sorted(r.headers.get("Idempotent-Replayed", "") for r in (first, second)) == ["", "true"]

            # Quotas: one run more fits (two active at most); of two asked at once, one is refused.
            more = await asyncio.gather(on_a.post(path, headers={"Idempotency-Key": str(uuid.uuid4())}),
                                        on_b.post(path, headers={"Idempotency-Key": str(uuid.uuid4())}))
            assert sorted(r.status_code for r in more) == [202, 429]

            # SSE: a stream on each replica; the events are stored by whichever replica
            # fetches them, and both streams get every one, in order, then end.
            bodies = {"a": "", "b": ""}
            opened = {"a": asyncio.Event(), "b": asyncio.Event()}

            async def follow(name: str, client: httpx.AsyncClient) -> None:
                async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_text():
                        bodies[name] += chunk
                        if sse_ids(bodies[name]):
                            opened[name].set()

            train = dict(run_id=uuid.UUID(run_id), stage="train")
            events = [StatusEvent(**train, status="running"),
                      *(ProgressEvent(**train, fraction=s / 40, step=s, total=40) for s in range(1, 41)),
                      StatusEvent(**train, status="failed", error="the test ends the run here")]
            async with asyncio.timeout(30):
                streams = [asyncio.create_task(follow("a", on_a)), asyncio.create_task(follow("b", on_b))]
                await opened["a"].wait()
                await opened["b"].wait()
                for event in events:
                    await producer.publish_event(event)
                await asyncio.gather(*streams)

        async with make_sessionmaker(engine)() as session:
            stored = list(await session.scalars(
                select(RunEventRow.id).where(RunEventRow.run_id == uuid.UUID(run_id)).order_by(RunEventRow.id)))
        assert len(stored) == 1 + len(events) + 1  # queued, the events, the run's end
        assert sse_ids(bodies["a"]) == stored
        assert sse_ids(bodies["b"]) == stored
    finally:
        for replica in replicas:
            replica.stop()
        await engine.dispose()
