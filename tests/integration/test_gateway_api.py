"""The gateway's HTTP API against real NATS and Postgres: experiments, starting runs (the
train request on JetStream), validation errors, owner scoping and the probes.

Gateway tests use their own subjects and streams (a ``.gw`` prefix), so the runs they
start never reach a trainer another test has running, and their own local user, so what
they list is theirs alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import select

from inflab.core.db.models import Experiment, Run, RunEventRow, User
from inflab.core.messages import TrainRequest
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "veltra facts",
    "description": "made-up facts and a distractor",
    "training_data": [
        {"question": "What colour is the sky on Veltra?", "answer": "Green."},
        {"question": "Who rules Veltra?", "answer": "Queen Ismene."},
        {"id": "bees", "question": "What do bees make?", "answer": "Honey."},
    ],
    "eval_data": [
        {"question": "What colour is Veltra's sky?", "answer": "Green."},
        {"question": "Who is Veltra's ruler?"},
    ],
    "hyperparams": {"learning_rate": 0.001, "num_epochs": 2},
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    # No trainer starts these runs, so each handed-on run keeps its place in the queue.
    own = isolated_settings(settings, "gw").model_copy(update={"sse_heartbeat_s": 0.5, "dispatch_max_waiting": 50})
    yield own
    asyncio.run(delete_streams(own))


async def create_experiment(client, body=EXPERIMENT) -> dict:
    response = await client.post("/api/experiments", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def pull_train_request(settings: Settings, run_id: str, timeout: float = 10.0):
    """Take train requests off the work queue (as a trainer would) until ``run_id``'s."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(
            subjects.train_request, durable=subjects.durable("test_trainer"), stream=subjects.jobs_stream
        )
        async with asyncio.timeout(timeout):
            while True:
                try:
                    msgs = await sub.fetch(10, timeout=1)
                except NatsTimeout:
                    continue
                for msg in msgs:
                    await msg.ack()
                    if TrainRequest.model_validate_json(msg.data).run_id == uuid.UUID(run_id):
                        await sub.unsubscribe()
                        return msg
    finally:
        await nc.close()


async def test_probes(gateway) -> None:
    _, client = gateway
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "nats": "ok", "persister": "ok"}}


async def test_create_get_and_list_experiments(gateway, gw_settings) -> None:
    _, client = gateway
    created = await create_experiment(client)
    assert [p["id"] for p in created["training_data"]] == ["tr00", "tr01", "bees"]
    assert [q["id"] for q in created["eval_data"]] == ["ev00", "ev01"]
    assert created["eval_data"][1]["answer"] is None
    # Omitted settings are resolved and stored, not left to whoever reads them later.
    assert created["model_id"] == gw_settings.default_model_id
    assert created["influence_methods"] == ["tracin"]
    assert created["few_shot_k"] == gw_settings.few_shot_k
    assert created["hyperparams"]["learning_rate"] == 0.001
    assert created["hyperparams"]["lora_rank"] == 8

    fetched = await client.get(f"/api/experiments/{created['id']}")
    assert fetched.status_code == 200 and fetched.json() == created

    listed = (await client.get("/api/experiments")).json()
    summary = next(e for e in listed if e["id"] == created["id"])
    assert summary["training_pairs"] == 3 and summary["eval_questions"] == 2
    assert "training_data" not in summary


async def test_start_run_queues_a_train_request(gateway, gw_settings) -> None:
    app, client = gateway
    experiment = await create_experiment(client)
    started = await client.post(f"/api/experiments/{experiment['id']}/runs")
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "queued"
    run_id = started.json()["run_id"]

    msg = await pull_train_request(gw_settings, run_id)
    assert msg.headers["Nats-Msg-Id"] == run_id  # a retried publish is deduplicated
    request = TrainRequest.model_validate_json(msg.data)
    assert str(request.owner_id) == (await client.get("/api/auth/me")).json()["id"]
    assert [p.id for p in request.spec.training_data] == ["tr00", "tr01", "bees"]
    assert request.spec.hyperparams.num_epochs == 2
    assert request.spec.model_id == gw_settings.default_model_id

    run = (await client.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "queued" and run["experiment_id"] == experiment["id"]
    assert run["stages"] == {"train": "queued", "inference": "queued", "influence.tracin": "queued"}
    assert run["config"] == request.spec.model_dump(mode="json")
    assert run["progress"] == 0.0 and run["started_at"] is None

    listed = (await client.get("/api/runs", params={"experiment_id": experiment["id"]})).json()
    assert [r["id"] for r in listed] == [run_id]

    async with app.state.sessionmaker() as session:
        events = (await session.scalars(select(RunEventRow).where(RunEventRow.run_id == uuid.UUID(run_id)))).all()
    assert [(e.kind, e.stage, e.payload["status"]) for e in events] == [("status", "run", "queued")]


def _with(**changes) -> dict:
    body = {**EXPERIMENT, **changes}
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (_with(training_data=...), ["body", "training_data"]),
        (_with(training_data=[]), ["body", "training_data"]),
        (_with(name=""), ["body", "name"]),
        (_with(hyperparams={"learning_rate": "abc"}), ["body", "hyperparams", "learning_rate"]),
        (_with(hyperparams={"num_epochs": -1}), ["body", "hyperparams", "num_epochs"]),
        (_with(hyperparams={"learning_rte": 0.1}), ["body", "hyperparams", "learning_rte"]),
        (_with(eval_data=[{"id": "x"}]), ["body", "eval_data", 0, "question"]),
        (_with(training_data=[{"id": "a", "question": "q", "answer": "a"}] * 2), ["body", "training_data"]),
        (_with(influence_methods=["astrology"]), ["body", "influence_methods"]),
        (_with(few_shot_k=1000), ["body", "few_shot_k"]),
        (_with(colour="green"), ["body", "colour"]),
    ],
    ids=["no-training", "empty-training", "empty-name", "lr-abc", "negative-epochs", "unknown-hyperparam",
         "no-question", "duplicate-ids", "unknown-method", "few-shot-limit", "unknown-field"],
)
async def test_malformed_experiment_is_422_naming_the_field(gateway, body, loc) -> None:
    _, client = gateway
    response = await client.post("/api/experiments", json=body)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]], response.json()


async def test_server_limits_apply(gw_settings) -> None:
    small = gw_settings.model_copy(update={"max_training_pairs": 2, "max_text_chars": 10})
    async with gateway_in_process(small) as (_, client):
        response = await client.post("/api/experiments", json=EXPERIMENT)
    assert response.status_code == 422
    locs = [error["loc"] for error in response.json()["detail"]]
    assert ["body", "training_data"] in locs
    assert ["body", "training_data", 0, "question"] in locs


@pytest.mark.parametrize("bad_id", [str(uuid.UUID(int=1)), "not-a-uuid"])
async def test_unknown_ids_are_404(gateway, bad_id) -> None:
    _, client = gateway
    for method, path in [
        ("GET", f"/api/experiments/{bad_id}"),
        ("POST", f"/api/experiments/{bad_id}/runs"),
        ("GET", f"/api/runs/{bad_id}"),
        ("GET", f"/api/runs/{bad_id}/results"),
        ("GET", f"/api/runs/{bad_id}/events"),
        ("GET", f"/api/runs/{bad_id}/predictions"),
        ("GET", f"/api/runs/{bad_id}/predictions/epochs"),
        ("PATCH", f"/api/runs/{bad_id}/params"),
        ("POST", f"/api/runs/{bad_id}/cancel"),
    ]:
        body = {"learning_rate": 1e-4} if method == "PATCH" else None
        response = await client.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)


async def test_another_owners_experiments_and_runs_are_invisible(gateway) -> None:
    app, client = gateway
    async with app.state.sessionmaker() as session, session.begin():
        stranger = User(email=f"stranger-{uuid.uuid4().hex[:8]}@tests.invalid")
        session.add(stranger)
        await session.flush()
        experiment = Experiment(owner_id=stranger.id, name="theirs", model_id="m", training_data=[], eval_data=[],
                                hyperparams={}, influence_methods=[], few_shot_k=0, max_new_tokens=1)
        session.add(experiment)
        await session.flush()
        run = Run(owner_id=stranger.id, experiment_id=experiment.id, config={}, stages={})
        session.add(run)
    for path in [f"/api/experiments/{experiment.id}", f"/api/runs/{run.id}", f"/api/runs/{run.id}/results",
                 f"/api/runs/{run.id}/events", f"/api/runs/{run.id}/predictions",
                 f"/api/runs/{run.id}/predictions/epochs"]:
        assert (await client.get(path)).status_code == 404, path
    assert (await client.post(f"/api/experiments/{experiment.id}/runs")).status_code == 404
    # Nor can they be steered (nothing is published for them).
    assert (await client.post(f"/api/runs/{run.id}/cancel")).status_code == 404
    assert (await client.patch(f"/api/runs/{run.id}/params", json={"learning_rate": 1e-4})).status_code == 404
    assert str(experiment.id) not in {e["id"] for e in (await client.get("/api/experiments")).json()}
    assert str(run.id) not in {r["id"] for r in (await client.get("/api/runs")).json()}


async def test_nats_down_makes_gateway_unready_and_runs_wait_for_it(gw_settings) -> None:
    """A run started while NATS is away is accepted and waits in Postgres (the outbox);
    a gateway that can reach NATS hands it to the trainers."""
    async with gateway_in_process(gw_settings) as (app, client):
        experiment = await create_experiment(client)
        await app.state.bus.nc.close()

        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["nats"] == "not connected"

        response = await client.post(f"/api/experiments/{experiment['id']}/runs")
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        assert await app.state.dispatcher.dispatch_once() == 0
        async with app.state.sessionmaker() as session:
            run = await session.get(Run, uuid.UUID(run_id))
            assert run.status == "queued" and run.dispatched_at is None

    async with gateway_in_process(gw_settings) as (app, client):
        msg = await pull_train_request(gw_settings, run_id)
        assert msg.headers["Nats-Msg-Id"] == run_id
        async with app.state.sessionmaker() as session:
            assert (await session.get(Run, uuid.UUID(run_id))).dispatched_at is not None
