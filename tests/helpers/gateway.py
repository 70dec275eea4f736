"""Running the gateway inside a test (or a script): in-process through ASGI, or on a real
port through uvicorn when true streaming matters (httpx's ASGI transport buffers a
response until it ends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import httpx
import nats
from fastapi import FastAPI
from nats.js.errors import NotFoundError
from sqlalchemy import func, select

from inflab.core.bus import Bus
from inflab.core.db.models import Run, RunEventRow
from inflab.core.messages import EventBase, LogEvent
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from inflab.gateway.app import create_app, end_streams
from inflab.gateway.server import GatewayServer, server_config


#: Meets the password rules; for test accounts only.
TEST_PASSWORD = "a test password, 1234"


async def sign_up(client: httpx.AsyncClient, email: str, password: str = TEST_PASSWORD) -> dict:
    """Register the account (or sign in, if it exists) and make ``client`` send its bearer
    access token from now on; the sign-in answer (``user``, ``access_token``...)."""
    credentials = {"email": email, "password": password}
    answer = await client.post("/api/auth/register", json=credentials)
    if answer.status_code == 409:
        answer = await client.post("/api/auth/login", json=credentials)
    assert answer.status_code in (200, 201), answer.text
    signed_in = answer.json()
    client.headers["Authorization"] = f"Bearer {signed_in['access_token']}"
    return signed_in


async def access_token(base_url: str, email: str) -> str:
    """A bearer access token for the account (registered if new) of a gateway at ``base_url``."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        return (await sign_up(client, email))["access_token"]


@contextlib.asynccontextmanager
async def gateway_in_process(
    settings: Settings, signed_in: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client that calls it without a socket,
    signed in as ``settings.local_user_email`` unless ``signed_in`` is False."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            if signed_in:
                await sign_up(client, settings.local_user_email)
            yield app, client


@contextlib.asynccontextmanager
async def gateway_server(settings: Settings, start_timeout_s: float = 20.0) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app served by uvicorn on a free loopback port; yields the app and its base URL."""
    config = server_config(settings, host="127.0.0.1", port=0, log_level="warning")
    app = config.app
    server = GatewayServer(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(start_timeout_s):
            # uvicorn exposes no start event; its flag flips once the lifespan and socket are up.
            while not server.started:
                if task.done():
                    await task  # raises what stopped it
                    raise RuntimeError("uvicorn exited during startup")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        # What a SIGTERM does, without the signal (uvicorn re-raises handled signals on exit).
        end_streams(app)
        server.should_exit = True
        await task


def isolated_settings(settings: Settings, name: str) -> Settings:
    """Settings with their own subjects, streams and local user: a test's runs then never
    reach workers another test has running, and what it lists is its own."""
    return settings.model_copy(
        update={
            "subject_prefix": f"{settings.subject_prefix}.{name}",
            "stream_prefix": f"{settings.stream_prefix}_{name.upper()}",
            "local_user_email": f"{name}-{settings.stream_prefix.lower()}@tests.invalid",
        }
    )


async def delete_streams(settings: Settings) -> None:
    """Remove the streams (and so the consumers) of ``settings``' prefix: tests tidy up
    the shared NATS server after themselves."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        for name in (subjects.jobs_stream, subjects.events_stream, subjects.control_stream,
                     subjects.dead_letter_stream, subjects.submissions_stream, f"KV_{subjects.leases_bucket}"):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def start_run(client: httpx.AsyncClient, experiment: dict) -> UUID:
    """Create the experiment and start a run of it, through the API; the run's id."""
    created = await client.post("/api/experiments", json=experiment)
    assert created.status_code == 201, created.text
    run = await client.post(f"/api/experiments/{created.json()['id']}/runs")
    assert run.status_code == 202, run.text
    return UUID(run.json()["run_id"])


async def wait_for_run(app: FastAPI, run_id: UUID, predicate: Callable[[Run], bool], timeout: float = 10) -> Run:
    """The run once ``predicate`` holds, re-checked each time the persister pokes it."""
    with app.state.notifier.subscribe(run_id) as poked:
        async with asyncio.timeout(timeout):
            while True:
                poked.clear()
                async with app.state.sessionmaker() as session:
                    run = await session.get(Run, run_id)
                if predicate(run):
                    return run
                await poked.wait()


async def wait_for_event(app: FastAPI, run_id: UUID, event_id: UUID, timeout: float = 10) -> None:
    """Until the event is stored. Events of one run are applied in order, so a marker event
    published last says every earlier one has been handled."""

    async def stored() -> bool:
        async with app.state.sessionmaker() as session:
            return bool(await session.scalar(select(func.count()).where(RunEventRow.event_id == event_id)))

    with app.state.notifier.subscribe(run_id) as poked:
        async with asyncio.timeout(timeout):
            while True:
                poked.clear()
                if await stored():
                    return
                await poked.wait()


async def publish_and_wait(app: FastAPI, bus: Bus, run_id: UUID, events: list[EventBase]) -> None:
    """Publish events as a worker would, then wait until ``app`` has stored them all (a
    marker published last is stored after every earlier event of the run)."""
    marker = LogEvent(run_id=run_id, stage="train", message="marker")
    for event in [*events, marker]:
        await bus.publish_event(event)
    await wait_for_event(app, run_id, marker.event_id)


async def run_level_statuses(app: FastAPI, run_id: UUID) -> list[str]:
    """The run's own status events, in order: ``["queued", "completed"]`` for a run that
    ended once."""
    async with app.state.sessionmaker() as session:
        rows = await session.scalars(
            select(RunEventRow.payload["status"].astext)
            .where(RunEventRow.run_id == run_id, RunEventRow.stage == "run", RunEventRow.kind == "status")
            .order_by(RunEventRow.id)
        )
        return list(rows)
