"""API token scopes and expiry against the real gateway, NATS and Postgres: ``submit``
submits runs (over HTTP and NATS) and reads those runs only, ``read`` only reads, ``full``
does what a session does but manage the account; an expired token is refused;
``last_used_at`` is written at most once a minute; an open event stream ends when the
session or token that opened it does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import nats
import pytest
from sqlalchemy import select, update

from inflab.core.db.models import ApiToken
from inflab.core.messages import DeadLetter, RunSubmission
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import (
    delete_streams,
    gateway_in_process,
    gateway_server,
    isolated_settings,
    sign_up,
    start_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "scopes",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def scope_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "scopes").model_copy(update={"sse_heartbeat_s": 0.2})
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def gateway(scope_settings):
    async with gateway_in_process(scope_settings, signed_in=False) as (app, client):
        await sign_up(client, f"{uuid.uuid4().hex[:10]}@example.org")
        yield app, client


async def new_token(client: httpx.AsyncClient, scope: str, **extra) -> dict[str, str]:
    created = await client.post("/api/tokens", json={"name": scope, "scope": scope, **extra})
    assert created.status_code == 201, created.text
    assert created.json()["scope"] == scope
    return {"Authorization": f"Bearer {created.json()['token']}"}


async def test_a_submit_token_submits_runs_and_reads_those_runs_only(gateway) -> None:
    _, client = gateway
    submit = await new_token(client, "submit")
    # What the account already has: the submit token sees none of it.
    own_experiment = (await client.post("/api/experiments", json=EXPERIMENT)).json()["id"]
    own_run = await start_run(client, EXPERIMENT)

    created = await client.post("/api/experiments", json=EXPERIMENT, headers=submit)
    assert created.status_code == 201
    experiment_id = created.json()["id"]
    started = await client.post(f"/api/experiments/{experiment_id}/runs", headers=submit)
    assert started.status_code == 202
    run_id = started.json()["run_id"]
    for path in (f"/api/runs/{run_id}", f"/api/runs/{run_id}/results", f"/api/runs/{run_id}/predictions",
                 f"/api/runs/{run_id}/predictions/epochs"):
        assert (await client.get(path, headers=submit)).status_code == 200, path

    assert (await client.get(f"/api/runs/{own_run}", headers=submit)).status_code == 404
    assert (await client.post(f"/api/experiments/{own_experiment}/runs", headers=submit)).status_code == 404
    refused = [
        ("GET", "/api/runs"), ("GET", "/api/experiments"), ("GET", f"/api/experiments/{experiment_id}"),
        ("PATCH", f"/api/experiments/{experiment_id}"), ("DELETE", f"/api/experiments/{experiment_id}"),
        ("POST", f"/api/runs/{run_id}/cancel"), ("PATCH", f"/api/runs/{run_id}/params"),
        ("GET", "/api/auth/me"), ("GET", "/api/tokens"), ("POST", "/api/estimates"), ("GET", "/api/limits/none"),
    ]
    for method, path in refused:
        answer = await client.request(method, path, headers=submit, json={})
        if path == "/api/limits/none":
            assert answer.status_code == 404  # no route: nothing to refuse
            continue
        assert answer.status_code == 403, (method, path, answer.status_code)
        assert "submit" in answer.json()["detail"]
    # The session still sees everything, the submitted run included.
    assert {r["id"] for r in (await client.get("/api/runs")).json()} >= {run_id, str(own_run)}


async def test_a_read_token_only_reads(gateway) -> None:
    _, client = gateway
    read = await new_token(client, "read")
    run_id = await start_run(client, EXPERIMENT)
    for path in ("/api/runs", "/api/experiments", f"/api/runs/{run_id}", "/api/auth/me", "/api/limits"):
        assert (await client.get(path, headers=read)).status_code == 200, path
    for method, path in (("POST", "/api/experiments"), ("POST", f"/api/runs/{run_id}/cancel"),
                         ("PATCH", "/api/auth/me"), ("POST", "/api/estimates")):
        answer = await client.request(method, path, headers=read, json=EXPERIMENT)
        assert answer.status_code == 403 and "read-only" in answer.json()["detail"], (method, path)


async def test_a_full_token_does_not_manage_the_account(gateway) -> None:
    _, client = gateway
    full = await new_token(client, "full")
    assert (await client.post("/api/experiments", json=EXPERIMENT, headers=full)).status_code == 201
    assert (await client.post("/api/estimates", json=EXPERIMENT, headers=full)).status_code == 200
    for method, path, body in (("POST", "/api/tokens", {"name": "more"}),
                               ("POST", "/api/auth/password", {"current_password": "x", "new_password": "y"}),
                               ("POST", "/api/auth/logout-all", None)):
        assert (await client.request(method, path, headers=full, json=body)).status_code == 403, path


async def test_token_expiry_and_bad_token_requests(gateway) -> None:
    app, client = gateway
    created = await client.post("/api/tokens", json={"name": "week", "expires_in_days": 7})
    expires_at = datetime.fromisoformat(created.json()["expires_at"])
    assert timedelta(days=7) - timedelta(minutes=1) < expires_at - datetime.now(timezone.utc) <= timedelta(days=7)
    week = {"Authorization": f"Bearer {created.json()['token']}"}
    assert (await client.get("/api/experiments", headers=week)).status_code == 200
    async with app.state.sessionmaker() as session:
        await session.execute(update(ApiToken).where(ApiToken.id == uuid.UUID(created.json()["id"]))
                              .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        await session.commit()
    assert (await client.get("/api/experiments", headers=week)).status_code == 401
    for bad in ({"name": "x", "scope": "admin"}, {"name": "x", "expires_in_days": 0},
                {"name": "x", "expires_in_days": 100_000}):
        refused = await client.post("/api/tokens", json=bad)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] in ("scope", "expires_in_days")


async def test_last_used_at_is_written_at_most_once_a_minute(gateway) -> None:
    app, client = gateway
    created = (await client.post("/api/tokens", json={"name": "busy"})).json()
    token_id, bearer = uuid.UUID(created["id"]), {"Authorization": f"Bearer {created['token']}"}

    async def last_used() -> datetime | None:
        async with app.state.sessionmaker() as session:
            return await session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id))

    assert await last_used() is None
    await client.get("/api/runs", headers=bearer)
    first = await last_used()
    assert first is not None
    await client.get("/api/runs", headers=bearer)
    assert await last_used() == first
    async with app.state.sessionmaker() as session:
        await session.execute(update(ApiToken).where(ApiToken.id == token_id)
                              .values(last_used_at=first - timedelta(minutes=2)))
        await session.commit()
    await client.get("/api/runs", headers=bearer)
    assert await last_used() > first - timedelta(minutes=2)


async def test_over_nats_a_read_token_cannot_submit_and_a_submit_token_reads_its_run(gateway, scope_settings) -> None:
    _, client = gateway
    subjects = Subjects.from_settings(scope_settings)
    submit_header = (await new_token(client, "submit"))["Authorization"]
    read_header = (await new_token(client, "read"))["Authorization"]
    nc = await nats.connect(scope_settings.nats_url)
    letters: asyncio.Queue[DeadLetter] = asyncio.Queue()

    async def on_letter(msg) -> None:
        letters.put_nowait(DeadLetter.model_validate_json(msg.data))

    try:
        await nc.subscribe(subjects.dead_letter("gateway"), cb=on_letter)
        js = nc.jetstream()
        await js.publish(subjects.run_submit, RunSubmission(experiment=EXPERIMENT).model_dump_json().encode(),
                         headers={"Authorization": read_header})
        assert "read-only" in (await asyncio.wait_for(letters.get(), 10)).reason

        submission = RunSubmission(experiment=EXPERIMENT)
        await js.publish(subjects.run_submit, submission.model_dump_json().encode(),
                         headers={"Authorization": submit_header})
        # One submission at a time: once a marker after it is dead-lettered, it is handled.
        await js.publish(subjects.run_submit, RunSubmission(experiment=EXPERIMENT).model_dump_json().encode())
        assert "no API token" in (await asyncio.wait_for(letters.get(), 10)).reason
    finally:
        await nc.close()
    run = await client.get(f"/api/runs/{submission.submission_id}", headers={"Authorization": submit_header})
    assert run.status_code == 200 and run.json()["status"] == "queued"
    assert (await client.get("/api/runs", headers={"Authorization": submit_header})).status_code == 403


async def _stream_ends(client: httpx.AsyncClient, path: str, headers: dict, end_it) -> None:
    """Open the event stream, see it send, call ``end_it``, and see the stream close."""
    async with client.stream("GET", path, headers=headers) as stream:
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith("id: ")
        await end_it()
        async with asyncio.timeout(10):  # a few heartbeats of 0.2 s
            async for _ in lines:
                pass


async def test_an_event_stream_ends_when_its_token_is_revoked_or_its_session_ends(scope_settings) -> None:
    async with gateway_server(scope_settings) as (_, url), httpx.AsyncClient(base_url=url, timeout=15) as client:
        await sign_up(client, f"{uuid.uuid4().hex[:10]}@example.org")
        run_id = await start_run(client, EXPERIMENT)
        created = (await client.post("/api/tokens", json={"name": "watcher", "scope": "read"})).json()

        async def revoke() -> None:
            assert (await client.delete(f"/api/tokens/{created['id']}")).status_code == 204

        await _stream_ends(client, f"/api/runs/{run_id}/events", {"Authorization": f"Bearer {created['token']}"},
                           revoke)

        other = (await client.post("/api/auth/login", json={
            "email": (await client.get("/api/auth/me")).json()["email"], "password": "a test password, 1234"})).json()

        async def sign_out_everywhere() -> None:
            assert (await client.post("/api/auth/logout-all")).status_code == 204

        await _stream_ends(client, f"/api/runs/{run_id}/events", {"Authorization": f"Bearer {other['access_token']}"},
                           sign_out_everywhere)
