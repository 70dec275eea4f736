"""No cheap denial of service, against the real gateway and Postgres: estimates need a
session; oversized lists are refused while parsing and validators stay linear; a burst of
concurrent sign-in guesses gets 429 past the limit, counted in Postgres so two replicas
share it; argon2 runs off the event loop in a bounded pool; a large body is refused at
once while /healthz keeps answering; event ids beyond int64 and deeply nested JSON are
4xx, never 5xx; /metrics answers only its token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from inflab.core.messages import MAX_TRAINING_PAIRS
from inflab.core.settings import Settings
from inflab.gateway.schemas import ExperimentCreate
from helpers.gateway import (
    TEST_PASSWORD,
    delete_streams,
    gateway_in_process,
    gateway_server,
    isolated_settings,
    sign_up,
    start_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "limits",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def limit_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "limits").model_copy(update={"max_request_bytes": 64 * 1024})
    yield own
    asyncio.run(delete_streams(own))


def email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.org"


def address() -> str:
    n = uuid.uuid4().int
    return f"192.0.2.{n % 250 + 1}"  # TEST-NET-1: a client address of its own


async def test_estimates_need_a_session_or_token(limit_settings) -> None:
    async with gateway_in_process(limit_settings, signed_in=False) as (_, client):
        anonymous = await client.post("/api/estimates", json=EXPERIMENT)
        assert anonymous.status_code == 401
        await sign_up(client, email())
        assert (await client.post("/api/estimates", json=EXPERIMENT)).status_code == 200


async def test_oversized_lists_are_refused_while_parsing(settings) -> None:
    roomy = isolated_settings(settings, "limitsbig")  # the default 8 MiB body limit
    async with gateway_in_process(roomy) as (_, client):
        too_many = {**EXPERIMENT, "training_data": [{"question": "q", "answer": "a"}] * (MAX_TRAINING_PAIRS + 1)}
        refused = await client.post("/api/experiments", json=too_many)
        assert refused.status_code == 422
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "training_data"] and error["type"] == "too_long"
        methods = await client.post("/api/estimates", json={**EXPERIMENT, "influence_methods": ["tracin"] * 17})
        assert methods.status_code == 422 and methods.json()["detail"][0]["loc"] == ["body", "influence_methods"]


def test_id_uniqueness_is_checked_in_linear_time() -> None:
    # With a count per item this is 10^10 comparisons (hours); linear, well under a second.
    pairs = [{"id": f"p{i}", "question": "q", "answer": "a"} for i in range(MAX_TRAINING_PAIRS - 1)]
    pairs.append({"id": "p7", "question": "q", "answer": "a"})
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"repeated: \['p7'\]"):
        ExperimentCreate.model_validate({**EXPERIMENT, "training_data": pairs})
    assert time.perf_counter() - started < 10


async def test_a_concurrent_burst_of_guesses_gets_429_past_the_limit_on_every_replica(limit_settings) -> None:
    strict = limit_settings.model_copy(update={"login_max_failures": 3})
    account, source = email(), address()
    async with gateway_in_process(strict, signed_in=False) as (app_a, client), \
            gateway_in_process(strict, signed_in=False) as (app_b, _):
        assert (await client.post("/api/auth/register", json={"email": account, "password": TEST_PASSWORD})).status_code == 201
        replicas = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(source, 5000)),
                                      base_url="http://gateway") for app in (app_a, app_b)]
        async with contextlib.AsyncExitStack() as stack:
            for replica in replicas:
                await stack.enter_async_context(replica)
            guesses = [replicas[i % 2].post("/api/auth/login", json={"email": account, "password": f"guess {i} !!!"})
                       for i in range(16)]
            answers = sorted(r.status_code for r in await asyncio.gather(*guesses))
    # Counted before the password is checked: only the first three were checked at all.
    assert answers == [401] * 3 + [429] * 13


async def test_argon2_stays_off_the_event_loop_and_its_queue_is_bounded(limit_settings) -> None:
    tight = limit_settings.model_copy(update={"password_hash_threads": 1, "password_hash_queue": 2})
    async with gateway_server(tight) as (_, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        registrations = [client.post("/api/auth/register", json={"email": email(), "password": TEST_PASSWORD})
                         for _ in range(12)]
        pending = asyncio.gather(*registrations)
        # While a dozen hashes (~0.1 s each) queue for one thread, the loop answers at once.
        probes = []
        for _ in range(5):
            started = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            probes.append(time.perf_counter() - started)
        answers = await pending
    assert max(probes) < 1.0, probes
    codes = [r.status_code for r in answers]
    assert codes.count(201) >= 3 and 503 in codes, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1"


async def test_a_large_body_is_refused_at_once_while_healthz_answers(limit_settings) -> None:
    async with gateway_server(limit_settings) as (_, url), httpx.AsyncClient(base_url=url, timeout=30) as client:
        await sign_up(client, email())
        # Declared too large: refused before a byte of it is read.
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.perf_counter()
        # (With the caller's token: without any credential the gate answers 401 even sooner.)
        writer.write(f"POST /api/experiments HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Authorization: {client.headers['Authorization']}\r\n"
                     f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 413 " in status_line and time.perf_counter() - started < 2
        writer.close()

        # Streamed without a length, slowly: cut off once past the limit; /healthz meanwhile.
        probes: list[float] = []

        async def slow_body():
            for _ in range(40):
                yield b" " * 4096  # whitespace is valid JSON padding
                started = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                probes.append(time.perf_counter() - started)

        streamed = await client.post("/api/experiments", content=slow_body(),
                                     headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert probes and max(probes) < 1.0, probes


async def test_event_ids_beyond_int64_and_deep_json_are_4xx(limit_settings) -> None:
    async with gateway_in_process(limit_settings) as (_, client):
        run_id = await start_run(client, EXPERIMENT)
        assert (await client.post(f"/api/runs/{run_id}/cancel")).status_code == 202  # ends it at once
        huge = str(10**30)
        assert (await client.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": huge})).status_code == 204
        assert (await client.get(f"/api/runs/{run_id}/events?after={huge}")).status_code == 204

        experiment_id = (await client.post("/api/experiments", json=EXPERIMENT)).json()["id"]
        line = "[" * 20_000 + "]" * 20_000
        deep = await client.post(f"/api/experiments/{experiment_id}/import",
                                 json={"target": "training_data", "format": "jsonl",
                                       "content": json.dumps({"question": "q", "answer": "a"}) + "\n" + line})
        assert deep.status_code == 422 and deep.json()["detail"][0]["loc"] == ["body", "content"]
        assert "line 2" in deep.json()["detail"][0]["msg"]

        nested: object = "x"
        for _ in range(40):
            nested = [nested]
        body = {**EXPERIMENT, "hyperparams": {"lora_target_modules": nested}}
        assert (await client.post("/api/experiments", json=body)).status_code == 422
        body_text = "{\"name\": " + "[" * 20_000 + "]" * 20_000 + "}"
        whole = await client.post("/api/estimates", content=body_text, headers={"Content-Type": "application/json"})
        assert whole.status_code == 422


async def test_metrics_answer_only_the_metrics_token(limit_settings) -> None:
    async with gateway_in_process(limit_settings) as (_, client):
        assert (await client.get("/metrics")).status_code == 404  # no token set: off
    from pydantic import SecretStr

    scraped = limit_settings.model_copy(update={"metrics_token": SecretStr("scrape-me-please")})
    async with gateway_in_process(scraped) as (_, client):
        assert (await client.get("/metrics")).status_code == 401  # a user's session is not enough
        assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me-please"})
        assert ok.status_code == 200 and "inflab_http_requests_total" in ok.text
