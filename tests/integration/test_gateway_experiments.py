"""Experiments through the HTTP API: create, list, read, change, delete, duplicate,
import from JSONL and CSV with a per-row report, and the limits from settings."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest

from inflab.core.settings import Settings
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "veltra",
    "training_data": [
        {"question": "What colour is the sky on Veltra?", "answer": "Green."},
        {"question": "Who rules Veltra?", "answer": "Queen Ismene."},
    ],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
    "hyperparams": {"learning_rate": 0.001, "num_epochs": 2},
}


@pytest.fixture(scope="module")
def ex_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwex").model_copy(
        update={"max_training_pairs": 6, "max_text_chars": 200, "max_total_tokens": 400}
    )
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def client(ex_settings):
    async with gateway_in_process(ex_settings) as (_, client):
        yield client


async def created(client, body=EXPERIMENT) -> dict:
    response = await client.post("/api/experiments", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_crud_round_trip(client):
    experiment = await created(client)
    eid = experiment["id"]
    assert [p["id"] for p in experiment["training_data"]] == ["tr00", "tr01"]
    listed = (await client.get("/api/experiments")).json()
    assert {"id": eid, "training_pairs": 2, "eval_questions": 1}.items() <= next(
        e for e in listed if e["id"] == eid).items()

    patched = await client.patch(f"/api/experiments/{eid}", json={
        "name": "veltra v2", "hyperparams": {"num_epochs": 5}, "predictions": {"sample_count": 2},
    })
    assert patched.status_code == 200, patched.text
    body = patched.json()
    # Named keys change; the others are kept, not reset to defaults.
    assert body["name"] == "veltra v2" and body["hyperparams"]["num_epochs"] == 5
    assert body["hyperparams"]["learning_rate"] == 0.001
    assert body["predictions"]["sample_count"] == 2 and body["training_data"] == experiment["training_data"]
    assert body["updated_at"] >= experiment["updated_at"]

    replaced = await client.patch(f"/api/experiments/{eid}", json={"eval_data": [{"question": "Sky?", "answer": "Green"}]})
    assert replaced.json()["eval_data"] == [{"id": "ev00", "question": "Sky?", "answer": "Green"}]

    bad = await client.patch(f"/api/experiments/{eid}", json={"hyperparams": {"learning_rate": -1}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:3] == ["body", "hyperparams", "learning_rate"]
    unknown = await client.patch(f"/api/experiments/{eid}", json={"nme": "typo"})
    assert unknown.status_code == 422

    assert (await client.delete(f"/api/experiments/{eid}")).status_code == 204
    assert (await client.get(f"/api/experiments/{eid}")).status_code == 404
    assert (await client.delete(f"/api/experiments/{eid}")).status_code == 404


async def test_duplicate(client):
    experiment = await created(client)
    copy = await client.post(f"/api/experiments/{experiment['id']}/duplicate")
    assert copy.status_code == 201, copy.text
    body = copy.json()
    assert body["id"] != experiment["id"] and body["name"] == "veltra (copy)"
    for field in ("training_data", "eval_data", "hyperparams", "influence_methods", "model_id", "predictions"):
        assert body[field] == experiment[field]
    assert (await client.post(f"/api/experiments/{uuid.uuid4()}/duplicate")).status_code == 404


async def test_limits_from_settings(client, ex_settings):
    limits = (await client.get("/api/limits")).json()
    assert limits["max_training_pairs"] == 6 and limits["max_total_tokens"] == 400
    assert limits["max_request_bytes"] == ex_settings.max_request_bytes

    too_many = {**EXPERIMENT, "training_data": [{"question": f"q{i}", "answer": "a"} for i in range(7)]}
    response = await client.post("/api/experiments", json=too_many)
    assert response.status_code == 422 and "at most 6 training pairs" in response.text

    too_long = {**EXPERIMENT, "eval_data": [{"question": "x" * 201}]}
    response = await client.post("/api/experiments", json=too_long)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "eval_data", 0, "question"]

    # Six pairs of 2 x 150 characters: each within limits, ~450 tokens together.
    too_much = {**EXPERIMENT, "training_data": [{"question": "q" * 150, "answer": "a" * 150} for _ in range(6)]}
    response = await client.post("/api/experiments", json=too_much)
    assert response.status_code == 422 and "tokens" in response.text and "at most 400" in response.text


async def test_import_jsonl_appends_and_numbers(client):
    experiment = await created(client)
    content = "\n".join([
        json.dumps({"question": "Capital of Veltra?", "answer": "Orrin."}),
        "",
        json.dumps({"id": "mine", "question": "Veltra's moon?", "answer": "Pell."}),
    ])
    response = await client.post(f"/api/experiments/{experiment['id']}/import",
                                 json={"target": "training_data", "format": "jsonl", "content": content})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report == {"target": "training_data", "rows": 2, "imported": 2, "applied": True, "errors": [],
                      "errors_truncated": False, "training_pairs": 4, "eval_questions": 1}
    stored = (await client.get(f"/api/experiments/{experiment['id']}")).json()
    assert [p["id"] for p in stored["training_data"]] == ["tr00", "tr01", "tr02", "mine"]


async def test_import_reports_every_bad_row_and_applies_nothing(client):
    experiment = await created(client)
    content = "\n".join([
        json.dumps({"question": "fine", "answer": "row"}),
        "{not json",
        json.dumps({"question": "no answer"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": "tr00", "question": "taken id", "answer": "x"}),
        json.dumps({"question": "q", "answer": "a", "extra": 1}),
        json.dumps({"question": "y" * 201, "answer": "a"}),
    ])
    url = f"/api/experiments/{experiment['id']}/import"
    response = await client.post(url, json={"target": "training_data", "format": "jsonl", "content": content})
    assert response.status_code == 400, response.text
    report = response.json()
    assert report["applied"] is False and report["imported"] == 0 and report["rows"] == 7
    assert [(e["row"], e["field"]) for e in report["errors"]] == [
        (2, None), (3, "answer"), (4, None), (5, "id"), (6, "extra"), (7, "question")]
    assert len((await client.get(f"/api/experiments/{experiment['id']}")).json()["training_data"]) == 2

    # skip_invalid imports the one good row and still reports the rest.
    response = await client.post(url, json={"target": "training_data", "format": "jsonl", "content": content,
                                            "skip_invalid": True})
    assert response.status_code == 200 and response.json()["imported"] == 1 and len(response.json()["errors"]) == 6


async def test_import_csv_eval_data_replace(client):
    experiment = await created(client)
    content = (
        "\ufeffquestion,answer\r\n"
        "\"Who rules Veltra, now?\",Queen Ismene\r\n"
        "What is the sky's colour?,\r\n"
        "\"A question\nover two lines\",yes\r\n"
        "only one cell\r\n"
    )
    url = f"/api/experiments/{experiment['id']}/import"
    response = await client.post(url, json={"target": "eval_data", "format": "csv", "content": content,
                                            "mode": "replace", "skip_invalid": True})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["imported"] == 3 and report["eval_questions"] == 3
    assert report["errors"] == [{"row": 6, "field": None, "message": "1 cells for 2 columns"}]
    stored = (await client.get(f"/api/experiments/{experiment['id']}")).json()["eval_data"]
    assert stored[0] == {"id": "ev00", "question": "Who rules Veltra, now?", "answer": "Queen Ismene"}
    assert stored[1]["answer"] is None and stored[2]["question"] == "A question\nover two lines"

    bad_header = await client.post(url, json={"target": "eval_data", "format": "csv", "content": "q,a\nx,y\n"})
    assert bad_header.status_code == 400 and bad_header.json()["errors"][0]["row"] == 1


async def test_import_past_the_limits_is_refused_whole(client):
    experiment = await created(client)
    content = "\n".join(json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(5))
    response = await client.post(f"/api/experiments/{experiment['id']}/import",
                                 json={"target": "training_data", "format": "jsonl", "content": content})
    assert response.status_code == 422 and "at most 6 training pairs" in response.text
    assert len((await client.get(f"/api/experiments/{experiment['id']}")).json()["training_data"]) == 2


async def test_an_experiment_too_large_for_a_job_message_is_refused_at_save_time(ex_settings):
    roomy = ex_settings.model_copy(update={"max_training_pairs": 10_000, "max_text_chars": 8_000,
                                           "max_total_tokens": 2_000_000})
    async with gateway_in_process(roomy) as (app, client):
        limit = (await client.get("/api/limits")).json()["max_job_message_bytes"]
        assert limit == app.state.bus.nc.max_payload - 8 * 1024
        answer = "A long answer. " * 466  # ~7000 characters
        big = [{"question": f"Question {i}?", "answer": answer} for i in range(limit // len(answer) + 20)]
        before = len((await client.get("/api/experiments")).json())

        refused = await client.post("/api/experiments", json={**EXPERIMENT, "training_data": big})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body"] and f"at most {limit}" in error["msg"] and "max_payload" in error["msg"]

        small = await created(client)
        grown = await client.patch(f"/api/experiments/{small['id']}", json={"training_data": big})
        assert grown.status_code == 422 and "max_payload" in grown.text
        rows = "\n".join(json.dumps(pair) for pair in big)
        imported = await client.post(f"/api/experiments/{small['id']}/import",
                                     json={"target": "training_data", "format": "jsonl", "content": rows})
        assert imported.status_code == 422 and "max_payload" in imported.text
        assert (await client.get(f"/api/experiments/{small['id']}")).json()["training_data"] == \
            small["training_data"]
        assert len((await client.get("/api/experiments")).json()) == before + 1
