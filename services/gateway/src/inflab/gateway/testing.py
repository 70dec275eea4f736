"""Running the gateway inside a test (or a script): in-process through ASGI, or on a real
port through uvicorn when true streaming matters (httpx's ASGI transport buffers a
response until it ends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import nats
from fastapi import FastAPI
from nats.js.errors import NotFoundError

from inflab.common.settings import Settings
from inflab.common.subjects import Subjects
from inflab.gateway.app import create_app, end_streams
from inflab.gateway.server import GatewayServer, server_config


@contextlib.asynccontextmanager
async def gateway_in_process(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client that calls it without a socket."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
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
        for name in (subjects.jobs_stream, subjects.events_stream, subjects.dead_letter_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()
