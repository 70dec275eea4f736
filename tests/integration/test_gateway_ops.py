"""Operating the gateway: /metrics, request ids and JSON logs, secrets kept out of logs,
the request-body limit, and bad input of every kind answered with a 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from pydantic import SecretStr
from prometheus_client.parser import text_string_to_metric_families

from inflab.core.messages import LogEvent
from inflab.core.settings import Settings
from helpers import gateway as testing
from inflab.gateway.logs import JsonFormatter, redact
from helpers.gateway import (
    delete_streams,
    gateway_in_process,
    gateway_server,
    isolated_settings,
    publish_and_wait,
    start_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "ops",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}
LIMIT = 64 * 1024
METRICS_TOKEN = "prometheus-scrapes-with-this"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture(scope="module")
def ops_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwops").model_copy(
        update={"max_request_bytes": LIMIT, "sse_heartbeat_s": 0.5, "metrics_token": SecretStr(METRICS_TOKEN)}
    )
    yield own
    asyncio.run(delete_streams(own))


@pytest.fixture
async def gateway(ops_settings):
    async with gateway_in_process(ops_settings) as (app, client):
        yield app, client


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


async def test_metrics_by_route_template_runs_and_event_lag(gateway):
    app, client = gateway
    missing = uuid.uuid4()
    assert (await client.get(f"/api/experiments/{missing}")).status_code == 404
    assert (await client.get("/api/no/such/path")).status_code == 404
    run_id = await start_run(client, EXPERIMENT)
    # An event made five seconds before the gateway stores it.
    old = LogEvent(run_id=run_id, stage="train", message="late", time=datetime.now(timezone.utc) - timedelta(seconds=5))
    await publish_and_wait(app, app.state.bus, run_id, [old])

    response = await client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/api/experiments/{experiment_id}"
    assert sample(text, "inflab_http_requests_total", method="GET", route=route, status="404") == 1
    assert sample(text, "inflab_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert sample(text, "inflab_http_request_duration_seconds_count", method="POST",
                  route="/api/experiments/{experiment_id}/runs") == 1
    assert sample(text, "inflab_runs", status="queued") >= 1
    assert sample(text, "inflab_runs", status="completed") is not None
    assert sample(text, "inflab_event_lag_seconds_count", kind="log") >= 2
    assert sample(text, "inflab_event_lag_seconds_sum", kind="log") >= 5
    assert sample(text, "inflab_sse_clients") == 0
    assert str(missing) not in text  # raw paths never become labels


async def test_sse_clients_gauge_counts_open_streams(ops_settings):
    async with gateway_server(ops_settings) as (app, url), httpx.AsyncClient(base_url=url, timeout=10) as client:
        sign_up = getattr(testing, "sign_up", None)  # once accounts exist, sign in first
        if sign_up is not None:
            await sign_up(client, ops_settings.local_user_email)
        run_id = await start_run(client, EXPERIMENT)
        async with client.stream("GET", f"/api/runs/{run_id}/events") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("id: ")  # the stream is open and sending
            metrics = (await client.get("/metrics", headers=SCRAPER)).text
            assert sample(metrics, "inflab_sse_clients") == 1


async def test_request_id_is_honoured_or_made_and_logged(gateway):
    _, client = gateway
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("inflab.gateway.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        given = await client.get("/healthz", headers={"X-Request-ID": "pipeline-42.a"})
        made = await client.get("/healthz")
        insane = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    finally:
        access.removeHandler(handler)
    assert given.headers["x-request-id"] == "pipeline-42.a"
    assert len(made.headers["x-request-id"]) == 32
    assert insane.headers["x-request-id"] not in ("", "bad id\twith spaces")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["request_id"] for e in entries] == [r.headers["x-request-id"] for r in (given, made, insane)]
    assert entries[0] | {"route": "/healthz", "status": 200, "method": "GET", "level": "info"} == entries[0]
    assert isinstance(entries[0]["duration_ms"], float)


def test_secrets_are_masked_in_log_lines():
    formatter = JsonFormatter()
    secret_url = "postgresql://inflab:hunter2-s3cret@db:5432/inflab"
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "connecting to %s with password=%s",
                                    "args": (secret_url, "hunter2-s3cret"), "token": "Bearer abc.def.ghi"})
    line = formatter.format(record)
    assert "hunter2" not in line and "abc.def" not in line and "db:5432" in line
    assert redact("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_settings_read_secret_files(tmp_path, monkeypatch):
    (tmp_path / "inflab_database_url").write_text("postgresql://app:from-a-file@db/inflab\n")
    monkeypatch.setenv("INFLAB_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("INFLAB_DATABASE_URL", raising=False)
    assert Settings().database_url == "postgresql://app:from-a-file@db/inflab"
    # An environment variable wins over a file.
    monkeypatch.setenv("INFLAB_DATABASE_URL", "postgresql://env@db/inflab")
    assert Settings().database_url == "postgresql://env@db/inflab"


async def test_oversized_bodies_get_413(gateway):
    _, client = gateway
    big = {**EXPERIMENT, "description": "x" * (LIMIT + 1)}
    declared = await client.post("/api/experiments", json=big)
    assert declared.status_code == 413 and str(LIMIT) in declared.json()["detail"]
    assert declared.headers["x-request-id"]

    async def chunks():
        body = json.dumps(big).encode()
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    chunked = await client.post("/api/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    fits = await client.post("/api/experiments", json={**EXPERIMENT, "description": "x" * 9000})
    assert fits.status_code == 201


RAW_BAD_BODIES = [
    b"{not json",
    b"",
    b"[]",
    b'{"name": "x", "training_data": "not a list", "eval_data": []}',
    b'{"name": 5, "training_data": [{"question": 1, "answer": null}], "eval_data": [{}]}',
    b'{"name": "x", "nmae": "typo", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}]}',
    # Absurd numbers: NaN (Python's json accepts it), overflowing floats, huge ints.
    b'{"name": "x", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}], "hyperparams": {"learning_rate": NaN}}',
    b'{"name": "x", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}], "hyperparams": {"learning_rate": 1e999}}',
    b'{"name": "x", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}], "hyperparams": {"num_epochs": 1000000000000000000000000000000}}',
    b'{"name": "x", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}], "few_shot_k": -1}',
    # Unicode that cannot be stored: NUL, a lone surrogate (in a value and in a key), bad UTF-8.
    b'{"name": "nul\\u0000", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}]}',
    b'{"name": "x", "training_data": [{"question": "\\ud800", "answer": "a"}], "eval_data": [{"question": "q"}]}',
    b'{"name": "x", "\\udfff": 1, "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}]}',
    b'{"name": "\xff\xfe bad utf-8", "training_data": [{"question": "q", "answer": "a"}], "eval_data": [{"question": "q"}]}',
]


@pytest.mark.parametrize("body", RAW_BAD_BODIES, ids=range(len(RAW_BAD_BODIES)))
async def test_bad_bodies_are_422_not_500(gateway, body):
    _, client = gateway
    response = await client.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert "input" not in response.json()["detail"][0]  # bodies are not echoed back


async def test_unicode_edge_cases_round_trip(gateway):
    _, client = gateway
    texts = ["Who rules Veltra? 👑", "مرحبا \u200f بالعالم", "e\u0301\u0301 Zalgo", "\ufeffBOM", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "line\nbreak\ttab"]
    body = {"name": "ユニコード 🧪", "training_data": [{"question": t, "answer": t[::-1]} for t in texts],
            "eval_data": [{"question": texts[0]}]}
    created = await client.post("/api/experiments", json=body)
    assert created.status_code == 201, created.text
    stored = (await client.get(f"/api/experiments/{created.json()['id']}")).json()
    assert stored["name"] == body["name"] and [p["question"] for p in stored["training_data"]] == texts


@pytest.mark.parametrize("path", [
    "/api/experiments/not-a-uuid", "/api/experiments/123", "/api/experiments/%00", "/api/experiments/%F0%9F%91%91",
    "/api/runs/' OR 1=1 --", "/api/runs/00000000-0000-0000-0000-00000000000g", "/api/runs/../../etc/passwd",
])
async def test_path_ids_that_are_not_uuids_are_404(gateway, path):
    _, client = gateway
    for method in ("GET", "DELETE") if path.startswith("/api/experiments") else ("GET",):
        response = await client.request(method, path)
        if "/../" in path:
            # The client resolves the dots (to /etc/passwd): outside /api the answer is the
            # web app's page, never a file of the machine.
            assert "root:" not in response.text, (method, path)
            continue
        assert response.status_code == 404, (method, path, response.text)


async def test_absurd_query_numbers_are_422(gateway):
    _, client = gateway
    for query in ("limit=100000000000000000000000", "limit=-1", "offset=1e9", "limit=NaN", "offset=99999999999999"):
        response = await client.get(f"/api/experiments?{query}")
        assert response.status_code == 422, (query, response.text)


async def test_asyncapi_is_served_with_the_deployments_prefix(gateway, ops_settings):
    from inflab.core.asyncapi import build_asyncapi
    from inflab.core.subjects import Subjects

    _, client = gateway
    response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    served = response.json()
    assert served == json.loads(json.dumps(build_asyncapi(Subjects.from_settings(ops_settings))))
    assert served["channels"]["trainRequest"]["address"] == f"{ops_settings.subject_prefix}.v1.train.request"
