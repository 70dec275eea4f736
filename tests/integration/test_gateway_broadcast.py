"""SSE fan-out through the broadcaster, against real NATS and Postgres: many streams of one
run cost one Postgres read per change (not one per stream), each stream still gets every
event once and in order (joining late, resuming, or falling behind and catching up from
Postgres), and a user's open streams are capped. And the database pool, sized from
settings, answers 503 rather than fail when it is exhausted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from inflab.core.messages import LogEvent, ProgressEvent, StatusEvent
from inflab.core.settings import Settings
from inflab.gateway import broadcast
from inflab.gateway.persistence import persist_events
from helpers.gateway import delete_streams, gateway_in_process, gateway_server, isolated_settings, sign_up, start_run

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "fan-out",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    # A long heartbeat: every read below is one a change caused.
    own = isolated_settings(settings, "gwfan").model_copy(update={
        "sse_heartbeat_s": 30.0, "sse_max_streams_per_user": 3, "metrics_token": SecretStr(METRICS_TOKEN)})
    yield own
    asyncio.run(delete_streams(own))


METRICS_TOKEN = "fan-out-scraper"


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """The unlabelled samples of the gateway's /metrics (histograms by their count and sum)."""
    text = (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if not s.labels}


def frames_of(body: str) -> list[int]:
    return [int(line[4:]) for line in body.splitlines() if line.startswith("id: ")]


async def stored_ids(app, run_id: uuid.UUID) -> list[int]:
    from sqlalchemy import select

    from inflab.core.db.models import RunEventRow

    async with app.state.sessionmaker() as session:
        return list(await session.scalars(
            select(RunEventRow.id).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id)))


def run_events(run_id: uuid.UUID, steps: int) -> list:
    train = dict(run_id=run_id, stage="train")
    return [StatusEvent(**train, status="running"),
            *(ProgressEvent(**train, fraction=s / steps, step=s, total=steps) for s in range(1, steps + 1)),
            StatusEvent(**train, status="failed", error="ends the test")]  # so the run fails (an event more)


async def test_many_streams_of_one_run_share_one_read_per_change(gw_settings, producer) -> None:
    settings = gw_settings.model_copy(update={"sse_max_streams_per_user": 100})
    async with gateway_server(settings) as (app, base_url), httpx.AsyncClient(base_url=base_url) as client:
        await sign_up(client, settings.local_user_email)
        run_id = await start_run(client, EXPERIMENT)
        broadcaster = app.state.broadcaster
        opened = asyncio.Event()
        bodies: dict[int, str] = {}

        async def follow(n: int, after: int | None = None) -> None:
            headers = {"Last-Event-ID": str(after)} if after is not None else {}
            body = ""
            async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_text():
                    body += chunk
                    if broadcaster.streams == 20:
                        opened.set()
            bodies[n] = body

        async with asyncio.timeout(60):
            streams = [asyncio.create_task(follow(n)) for n in range(20)]
            await opened.wait()  # all 20 follow the run (each has its queued event)
            reads_before = broadcaster.reads
            events = run_events(run_id, 30)
            for event in events[:16]:
                await producer.publish_event(event)
            # One more joins half-way, resuming after the first of the run's events.
            queued = (await stored_ids(app, run_id))[0]
            streams.append(asyncio.create_task(follow(20, after=queued)))
            for event in events[16:]:
                await producer.publish_event(event)
            await asyncio.gather(*streams)
        stored = await stored_ids(app, run_id)
        assert len(stored) == 1 + len(events) + 1  # queued, the events, the run's end
        for n in range(20):
            assert frames_of(bodies[n]) == stored, n
        assert frames_of(bodies[20]) == stored[1:]
        # One feed read per stored batch at most (a read is shared by all 21 streams),
        # where one read per stream per event would be 21 x 33.
        assert broadcaster.reads - reads_before <= len(events) + 2
        assert broadcaster.streams == 0 and not broadcaster.feeds
        # What /metrics says of it: the persister's backlog worked off, its batches, the
        # fan-out's reads and frames, and how late the live events were read.
        figures = await scrape(client)
        assert figures["inflab_persister_pending_events"] == 0
        assert figures["inflab_persister_batch_events_sum"] == len(events)
        assert figures["inflab_sse_feed_reads_total"] == broadcaster.reads
        assert figures["inflab_sse_frames_total"] >= 20 * len(stored)
        assert figures["inflab_sse_read_lag_seconds_count"] >= len(events)
        assert figures["inflab_sse_runs_followed"] == 0 and figures["inflab_sse_clients"] == 0


@pytest.mark.parametrize("recent", [broadcast.RECENT, 2], ids=["from memory", "from postgres"])
async def test_a_stream_that_falls_behind_catches_up(gw_settings, monkeypatch, recent) -> None:
    monkeypatch.setattr(broadcast, "MAX_QUEUED_READS", 2)
    monkeypatch.setattr(broadcast, "RECENT", recent)  # what the feed keeps in memory
    async with gateway_in_process(gw_settings) as (app, client):
        run_id = await start_run(client, EXPERIMENT)
        broadcaster = app.state.broadcaster
        slow = broadcaster.stream(run_id, 0)
        received = [await anext(slow)]  # joined: the queued event
        events = run_events(run_id, 6)
        for event in events:  # stored one by one, each read by the feed, none taken by the stream
            reads = broadcaster.reads
            async with app.state.sessionmaker() as session:
                assert await persist_events(session, [event]) == [event]
            app.state.notifier.notify(run_id)
            async with asyncio.timeout(10):
                while broadcaster.reads == reads:
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            received += [chunk async for chunk in slow]
        assert frames_of(b"".join(received).decode()) == await stored_ids(app, run_id)
        assert broadcaster.caught_up == 1
        assert not broadcaster.feeds


@pytest.mark.parametrize("after", [0, 1], ids=["from the start", "resumed"])
async def test_an_ended_run_longer_than_one_slice_is_replayed_whole(gw_settings, monkeypatch, after) -> None:
    """A stream opened on an ended run whose events fill more than one read: the feed's first
    read already sees the run ended, but the stream goes on to the terminal event."""
    monkeypatch.setattr(broadcast, "BATCH", 4)
    async with gateway_in_process(gw_settings) as (app, client):
        run_id = await start_run(client, EXPERIMENT)
        async with app.state.sessionmaker() as session:
            await persist_events(session, run_events(run_id, 9))
        stored = await stored_ids(app, run_id)
        assert len(stored) > 2 * broadcast.BATCH
        start = stored[0] if after else 0
        async with asyncio.timeout(10):
            received = [chunk async for chunk in app.state.broadcaster.stream(run_id, start)]
        assert frames_of(b"".join(received).decode()) == [i for i in stored if i > start]


async def test_open_streams_are_capped_per_user(gw_settings) -> None:
    async with gateway_server(gw_settings) as (app, base_url), httpx.AsyncClient(base_url=base_url) as client:
        await sign_up(client, gw_settings.local_user_email)
        run_id = await start_run(client, EXPERIMENT)
        url = f"/api/runs/{run_id}/events"
        async with (client.stream("GET", url) as first, client.stream("GET", url) as second,
                    client.stream("GET", url) as third):
            assert {first.status_code, second.status_code, third.status_code} == {200}
            refused = await client.get(url)
            assert refused.status_code == 429
            assert "INFLAB_SSE_MAX_STREAMS_PER_USER" in refused.json()["detail"]
            figures = await scrape(client)
            assert figures["inflab_sse_streams_refused_total"] == 1
            assert figures["inflab_sse_clients"] == 3 and figures["inflab_sse_runs_followed"] == 1
            # Another user is not held up by this one's streams.
            async with httpx.AsyncClient(base_url=base_url) as other:
                await sign_up(other, f"other-{gw_settings.local_user_email}")
                other_run = await start_run(other, EXPERIMENT)
                async with other.stream("GET", f"/api/runs/{other_run}/events") as theirs:
                    assert theirs.status_code == 200
        # Closed streams give their places back.
        async with asyncio.timeout(10):
            while app.state.broadcaster.streams:
                await asyncio.sleep(0.02)
        async with client.stream("GET", url) as again:
            assert again.status_code == 200


async def test_an_exhausted_database_pool_is_a_503_not_a_500(gw_settings) -> None:
    """Every pooled connection taken for longer than INFLAB_DB_POOL_TIMEOUT_S: the request
    is answered 503 with Retry-After (overloaded, retry), not a 500 or a reset."""
    small = gw_settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 0, "db_pool_timeout_s": 30})
    async with gateway_in_process(small) as (app, client):
        pool = app.state.sessionmaker.kw["bind"].pool
        held = [app.state.sessionmaker() for _ in range(2)]
        for session in held:
            await session.connection()  # every connection of the pool, held
        pool._timeout = 0.3  # QueuePool's wait, shortened once the pool is ours
        try:
            busy = await client.get("/api/runs")
        finally:
            pool._timeout = 30
            for session in held:
                await session.close()
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert "busy" in busy.json()["detail"]
        assert (await client.get("/api/runs")).status_code == 200
