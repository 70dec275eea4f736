"""``POST /api/imports/parse`` against real Postgres: a JSONL or CSV file becomes rows with
the same per-row errors as an import into a stored experiment, and nothing is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from inflab.core.db.models import Experiment
from inflab.core.settings import Settings
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

JSONL = "\n".join([
    '{"question": "Who rules Veltra?", "answer": "Queen Ismene."}',
    "",
    '{"id": "bees", "question": "What do bees make?", "answer": "Honey."}',
    "not json",
    '{"question": "", "answer": "empty question"}',
    '{"id": "tr00", "question": "Taken id?", "answer": "Yes."}',
    '{"question": "Numbered next?", "answer": "Yes."}',
])
CSV = "question,answer\nWho is Veltra's ruler?,Queen Ismene.\nWhat do bees make?,\n\"unclosed,x\n"


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwparse")
    yield own
    asyncio.run(delete_streams(own))


async def experiments(app) -> int:
    async with app.state.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(Experiment))


async def test_rows_and_errors_like_an_import_and_nothing_stored(gateway) -> None:
    app, client = gateway
    before = await experiments(app)
    response = await client.post("/api/imports/parse", json={
        "target": "training_data", "format": "jsonl", "content": JSONL, "existing_ids": ["tr00", "tr01"]})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["target"] == "training_data" and report["rows"] == 6 and report["eval_data"] == []
    # Given ids kept; missing ones numbered after the rows already in the page.
    assert report["training_data"] == [
        {"id": "tr02", "question": "Who rules Veltra?", "answer": "Queen Ismene."},
        {"id": "bees", "question": "What do bees make?", "answer": "Honey."},
        {"id": "tr03", "question": "Numbered next?", "answer": "Yes."},
    ]
    errors = {(e["row"], e["field"]): e["message"] for e in report["errors"]}
    assert set(errors) == {(4, None), (5, "question"), (6, "id")}
    assert errors[(4, None)].startswith("not JSON")
    assert errors[(6, "id")] == "id 'tr00' is already used"
    assert not report["errors_truncated"]
    assert await experiments(app) == before

    # The same file imported into a stored experiment reports the same rows' errors.
    created = await client.post("/api/experiments", json={
        "name": "same errors", "training_data": [{"question": "a?", "answer": "b"}, {"question": "c?", "answer": "d"}],
        "eval_data": [{"question": "e?"}]})
    imported = await client.post(f"/api/experiments/{created.json()['id']}/import", json={
        "target": "training_data", "format": "jsonl", "content": JSONL})
    assert imported.status_code == 400
    assert imported.json()["errors"] == report["errors"]


async def test_csv_evaluation_questions(gateway) -> None:
    _, client = gateway
    report = (await client.post("/api/imports/parse", json={
        "target": "eval_data", "format": "csv", "content": CSV})).json()
    assert report["training_data"] == [] and report["rows"] == 3
    assert report["eval_data"] == [
        {"id": "ev00", "question": "Who is Veltra's ruler?", "answer": "Queen Ismene."},
        {"id": "ev01", "question": "What do bees make?", "answer": None},  # an empty cell: no reference
    ]
    assert [(e["row"], e["message"]) for e in report["errors"]] == [(4, "1 cells for 2 columns")]


async def test_an_empty_file_and_a_bad_request(gateway) -> None:
    _, client = gateway
    empty = (await client.post("/api/imports/parse", json={
        "target": "eval_data", "format": "jsonl", "content": "\n\n"})).json()
    assert empty["rows"] == 0 and empty["errors"] == [{"row": 1, "field": None, "message": "the file holds no rows"}]
    bad = await client.post("/api/imports/parse", json={"target": "pairs", "format": "jsonl", "content": ""})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "target"]
    deep = await client.post("/api/imports/parse", json={"target": "eval_data", "format": "jsonl",
                                                         "content": "[" * 100_000})
    assert deep.status_code == 422 and deep.json()["detail"][0]["loc"] == ["body", "content"]


async def test_it_needs_a_signed_in_user(gw_settings) -> None:
    async with gateway_in_process(gw_settings, signed_in=False) as (_, client):
        response = await client.post("/api/imports/parse", json={
            "target": "eval_data", "format": "jsonl", "content": '{"question": "q"}'})
        assert response.status_code == 401
