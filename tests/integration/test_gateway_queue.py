"""The run queue through the real gateway, NATS and Postgres: fair order between users
(one user's many queued runs do not starve another's one), the bound on runs waiting in
JetStream, the per-user quotas (active runs: 429; estimated duration: 422), and the
Idempotency-Key of ``POST /api/experiments/{id}/runs``.

The trainer here is the test: it takes train requests off JetStream one at a time and
reports each run ``running`` as a real trainer does, which frees the run's place.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import func, select

from inflab.core.bus import Bus
from inflab.core.db.models import Run
from inflab.core.messages import DeadLetter, RunSubmission, StatusEvent, TrainRequest
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings, sign_up, wait_for_run

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "queue",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
    "hyperparams": {"num_epochs": 1},
}


@pytest.fixture
def own_settings(settings: Settings) -> Iterator[Settings]:
    """Each test its own streams, subjects and local user (named after the test)."""
    name = "q" + uuid.uuid4().hex[:6]
    own = isolated_settings(settings, name)
    yield own
    asyncio.run(delete_streams(own))


async def _experiment(client: httpx.AsyncClient, body: dict = EXPERIMENT) -> str:
    created = await client.post("/api/experiments", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


async def _start(client: httpx.AsyncClient, experiment_id: str, **kwargs) -> httpx.Response:
    return await client.post(f"/api/experiments/{experiment_id}/runs", **kwargs)


# --------------------------------------------------------------------------- fair order
async def test_one_users_queue_does_not_starve_anothers_run(own_settings) -> None:
    gw = own_settings.model_copy(update={"dispatch_max_waiting": 1})
    subjects = Subjects.from_settings(gw)
    async with gateway_in_process(gw) as (app, alice):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as bob:
            alice_id = (await alice.get("/api/auth/me")).json()["id"]
            bob_id = (await sign_up(bob, f"bob-{uuid.uuid4().hex[:6]}@tests.invalid"))["user"]["id"]
            alice_experiment = await _experiment(alice)
            for _ in range(5):
                assert (await _start(alice, alice_experiment)).status_code == 202
            bob_run = (await _start(bob, await _experiment(bob))).json()["run_id"]

            owners = {alice_id: "alice", bob_id: "bob"}
            order: list[str] = []
            producer = await Bus.connect(gw, "test-trainer")
            nc = await nats.connect(gw.nats_url)
            try:
                js = nc.jetstream()
                durable = subjects.durable("test_trainer")
                sub = await js.pull_subscribe(subjects.train_request, durable=durable, stream=subjects.jobs_stream)
                async with asyncio.timeout(60):
                    while len(order) < 6:
                        try:
                            [msg] = await sub.fetch(1, timeout=1)
                        except NatsTimeout:
                            continue
                        request = TrainRequest.model_validate_json(msg.data)
                        order.append(owners[str(request.owner_id)])
                        # Never more than one run waits in JetStream for a trainer.
                        assert (await js.consumer_info(subjects.jobs_stream, durable)).num_pending == 0
                        # What a trainer says when it starts: the run's place frees.
                        await producer.publish_event(StatusEvent(run_id=request.run_id, stage="train", status="running"))
                        await wait_for_run(app, request.run_id, lambda r: r.status == "running")
                        await msg.ack()
            finally:
                await producer.close()
                await nc.close()
    # First come, first served would have given bob the sixth place.
    assert order == ["alice", "bob", "alice", "alice", "alice", "alice"]
    assert bob_run  # bob's one run was among the first two handed on


# --------------------------------------------------------------------------- quotas
async def test_a_user_may_have_so_many_active_runs(own_settings) -> None:
    gw = own_settings.model_copy(update={"max_active_runs_per_user": 2})
    async with gateway_in_process(gw) as (app, client):
        experiment = await _experiment(client)
        first = (await _start(client, experiment)).json()["run_id"]
        assert (await _start(client, experiment)).status_code == 202
        refused = await _start(client, experiment)
        assert refused.status_code == 429
        detail = refused.json()["detail"]
        assert "INFLAB_MAX_ACTIVE_RUNS_PER_USER" in detail and "at most 2" in detail
        async with app.state.sessionmaker() as session:
            count = select(func.count()).select_from(Run).where(Run.experiment_id == uuid.UUID(experiment))
            assert await session.scalar(count) == 2
        # A run that ends gives its place back.
        assert (await client.post(f"/api/runs/{first}/cancel")).status_code == 202
        assert (await _start(client, experiment)).status_code == 202

        # Over NATS the refusal is a dead letter naming the limit.
        token = (await client.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
        subjects = Subjects.from_settings(gw)
        nc = await nats.connect(gw.nats_url)
        try:
            letters: asyncio.Queue = asyncio.Queue()
            await nc.subscribe(subjects.dead_letter("gateway"), cb=letters.put)
            submission = RunSubmission(experiment=EXPERIMENT)
            await nc.jetstream().publish(subjects.run_submit, submission.model_dump_json().encode(),
                                         headers={"Authorization": f"Bearer {token}"})
            letter = DeadLetter.model_validate_json((await asyncio.wait_for(letters.get(), 10)).data)
            assert "INFLAB_MAX_ACTIVE_RUNS_PER_USER" in letter.reason
        finally:
            await nc.close()


async def test_a_run_estimated_too_long_is_refused_naming_the_limit(own_settings) -> None:
    gw = own_settings.model_copy(update={"max_run_estimated_s": 60})
    async with gateway_in_process(gw) as (_, client):
        assert (await _start(client, await _experiment(client))).status_code == 202
        long = await _experiment(client, {**EXPERIMENT, "hyperparams": {"num_epochs": 1000}})
        refused = await _start(client, long)
        assert refused.status_code == 422, refused.text
        assert "INFLAB_MAX_RUN_ESTIMATED_S" in refused.text and "at most 60 s" in refused.text
        limits = (await client.get("/api/limits")).json()
        assert limits["max_run_estimated_s"] == 60 and limits["max_active_runs_per_user"] == gw.max_active_runs_per_user


# --------------------------------------------------------------------------- idempotency
async def test_a_repeated_idempotency_key_answers_with_the_same_run(own_settings) -> None:
    async with gateway_in_process(own_settings) as (app, client):
        experiment = await _experiment(client)
        key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
        first = await _start(client, experiment, headers=key)
        assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
        again = await _start(client, experiment, headers=key)
        assert again.status_code == 202 and again.json()["run_id"] == first.json()["run_id"]
        assert again.headers["Idempotent-Replayed"] == "true"

        # Five at once with a new key: one run between them.
        burst = {"Idempotency-Key": f"burst-{uuid.uuid4()}"}
        answers = await asyncio.gather(*(_start(client, experiment, headers=burst) for _ in range(5)))
        assert {a.status_code for a in answers} == {202}
        assert len({a.json()["run_id"] for a in answers}) == 1

        runs = (await client.get("/api/runs", params={"experiment_id": experiment})).json()
        assert len(runs) == 2

        # The same key for another experiment is refused, naming the header.
        other = await _start(client, await _experiment(client), headers=key)
        assert other.status_code == 422
        [error] = other.json()["detail"]
        assert error["loc"] == ["header", "Idempotency-Key"] and "another experiment" in error["msg"]

        # Another user's key is theirs alone.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as stranger:
            await sign_up(stranger, f"stranger-{uuid.uuid4().hex[:6]}@tests.invalid")
            theirs = await _start(stranger, await _experiment(stranger), headers=key)
            assert theirs.status_code == 202 and theirs.json()["run_id"] != first.json()["run_id"]

        for bad in ("has space", "x" * 201, "é".encode()):
            refused = await client.post(f"/api/experiments/{experiment}/runs", headers={"Idempotency-Key": bad})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        assert len((await client.get("/api/runs", params={"experiment_id": experiment})).json()) == 2
