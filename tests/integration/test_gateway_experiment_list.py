"""The experiments library's list through the HTTP API, against real NATS and Postgres:
each row's run count and last run (its status moved by real events through NATS), search
in name and description, the four sorts in both directions, all in one SQL query."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import event

from inflab.core.messages import MetricEvent, StatusEvent
from inflab.core.settings import Settings
from helpers.gateway import delete_streams, isolated_settings, publish_and_wait, sign_up, wait_for_run

pytestmark = pytest.mark.integration


def experiment(name: str, description: str = "") -> dict:
    return {
        "name": name,
        "description": description,
        "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
        "eval_data": [{"question": "Who is Veltra's ruler?"}],
    }


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwlist")
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def library(gateway, producer):
    """Five experiments: never run; one queued run; a running run (with a loss); a failed
    run; and two runs, the newer cancelled. Names and descriptions for the search. Each
    test's library belongs to a new account, so the list holds these five alone."""
    app, client = gateway
    await sign_up(client, f"library-{uuid.uuid4().hex[:8]}@tests.invalid")
    ids: dict[str, str] = {}
    runs: dict[str, list[str]] = {}
    for key, name, description in (
        ("idle", "Zeta never ran", "nothing to see"),
        ("queued", "alpha queued", "Veltra facts"),
        ("running", "Gamma running", "100% synthetic"),
        ("failed", "beta failed", "veltra distractors"),
        ("twice", "Delta twice", "two runs"),
    ):
        created = await client.post("/api/experiments", json=experiment(name, description))
        assert created.status_code == 201, created.text
        ids[key] = created.json()["id"]
        runs[key] = []
        for _ in range(2 if key == "twice" else 0 if key == "idle" else 1):
            started = await client.post(f"/api/experiments/{ids[key]}/runs")
            assert started.status_code == 202, started.text
            runs[key].append(started.json()["run_id"])

    running = uuid.UUID(runs["running"][0])
    failed = uuid.UUID(runs["failed"][0])
    await publish_and_wait(app, producer, running, [
        StatusEvent(run_id=running, stage="train", status="running"),
        MetricEvent(run_id=running, stage="train", step=1, epoch=0.5, loss=2.5, learning_rate=1e-3),
    ])
    await publish_and_wait(app, producer, failed, [
        StatusEvent(run_id=failed, stage="train", status="failed", error="out of memory"),
    ])
    assert (await client.post(f"/api/runs/{runs['twice'][1]}/cancel")).status_code == 202
    await wait_for_run(app, uuid.UUID(runs["twice"][1]), lambda r: r.status == "cancelled")
    return ids, runs


async def listed(client, **params) -> list[dict]:
    response = await client.get("/api/experiments", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_rows_carry_their_run_count_and_last_run(gateway, library) -> None:
    _, client = gateway
    ids, runs = library
    rows = {row["id"]: row for row in await listed(client)}
    assert rows[ids["idle"]]["run_count"] == 0 and rows[ids["idle"]]["last_run"] is None
    assert rows[ids["twice"]]["run_count"] == 2
    last = rows[ids["twice"]]["last_run"]
    assert last["id"] == runs["twice"][1] and last["status"] == "cancelled" and last["finished_at"]
    running = rows[ids["running"]]["last_run"]
    assert (running["status"], running["loss"], running["finished_at"]) == ("running", 2.5, None)
    assert 0 <= running["progress"] <= 1 and running["created_at"]
    failed = rows[ids["failed"]]["last_run"]
    assert failed["status"] == "failed" and failed["finished_at"]
    assert rows[ids["queued"]]["last_run"]["status"] == "queued"
    assert rows[ids["queued"]]["run_count"] == 1


async def test_search_in_name_and_description(gateway, library) -> None:
    _, client = gateway
    ids, _ = library
    assert {r["id"] for r in await listed(client)} == set(ids.values())
    assert {r["id"] for r in await listed(client, q="veltra")} == {ids["queued"], ids["failed"]}
    assert [r["id"] for r in await listed(client, q="ZETA")] == [ids["idle"]]
    # LIKE's wildcards are searched for as text.
    assert [r["id"] for r in await listed(client, q="100%")] == [ids["running"]]
    assert await listed(client, q="_") == []
    assert await listed(client, q="no such experiment") == []


async def test_sorts_in_both_directions(gateway, library) -> None:
    _, client = gateway
    ids, _ = library
    by_id = {v: k for k, v in ids.items()}

    def keys(rows: list[dict]) -> list[str]:
        return [by_id[r["id"]] for r in rows]

    assert keys(await listed(client, sort="name")) == ["queued", "failed", "twice", "running", "idle"]
    assert keys(await listed(client, sort="name", order="desc")) == ["idle", "running", "twice", "failed", "queued"]
    # What needs attention first: running, queued, failed, cancelled, completed, never run.
    assert keys(await listed(client, sort="last_run_status")) == ["running", "queued", "failed", "twice", "idle"]
    assert keys(await listed(client, sort="last_run_status", order="desc"))[0] == "idle"
    created = keys(await listed(client, sort="created"))
    assert created == ["twice", "failed", "running", "queued", "idle"]  # newest first
    assert keys(await listed(client, sort="created", order="asc")) == created[::-1]
    # Renaming touches updated_at: the default sort puts that experiment first.
    await client.patch(f"/api/experiments/{ids['idle']}", json={"description": "touched"})
    assert keys(await listed(client))[0] == "idle"
    assert keys(await listed(client, sort="updated", order="asc"))[-1] == "idle"
    assert (await client.get("/api/experiments", params={"sort": "size"})).status_code == 422


async def test_the_list_is_one_query_whatever_its_length(gateway, library) -> None:
    app, client = gateway
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    engine = app.state.user_sessionmaker.kw["bind"].sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        rows = await listed(client)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(rows) == 5
    touching = [s for s in statements if "FROM experiments" in s or "FROM runs" in s]
    assert len(touching) == 1, touching
