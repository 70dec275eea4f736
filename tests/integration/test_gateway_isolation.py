"""Isolation between accounts, against the real gateway and Postgres: user B gets 404 for
every route on user A's experiment and run (results, predictions, events and the SSE
stream included), sees none of A's rows in any list, and row level security hides A's
rows from B's database session even with no owner filter in the query at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError

from inflab.core.bus import Bus
from inflab.core.db.models import (
    ApiToken,
    AuthSession,
    Checkpoint,
    Experiment,
    AnswerRow,
    Identity,
    InfluenceMatrixRow,
    Metric,
    Prediction,
    Run,
    RunEventRow,
    User,
)
from inflab.core.messages import (
    Answer,
    CheckpointEvent,
    CheckpointRef,
    InfluenceMatrix,
    MetricEvent,
    PredictionEvent,
    PredictionSample,
    ResultEvent,
    StatusEvent,
)
from inflab.core.settings import Settings
from inflab.gateway.auth.rls import session_for
from helpers.gateway import (
    delete_streams,
    gateway_in_process,
    isolated_settings,
    publish_and_wait,
    sign_up,
    start_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "a's secret experiment",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def iso_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "iso")
    yield own
    asyncio.run(delete_streams(own))


def a_run_with_everything(run_id: uuid.UUID) -> list:
    train = dict(run_id=run_id, stage="train")
    ckpt = CheckpointRef(step=1, epoch=1, key=f"runs/{run_id}/checkpoints/1", learning_rate=1e-3, loss=1.0)
    return [
        StatusEvent(**train, status="running"),
        MetricEvent(**train, step=1, epoch=1.0, loss=1.0, learning_rate=1e-3),
        PredictionEvent(**train, step=1, epoch=1.0,
                        samples=[PredictionSample(prompt_id="ev00", prompt="Who?", prediction="Queen Ismene.")]),
        CheckpointEvent(**train, checkpoint=ckpt),
        ResultEvent(run_id=run_id, stage="inference",
                    answers=[Answer(eval_id="ev00", question="Who?", base="?", few_shot="?", fine_tuned="Ismene")]),
        ResultEvent(run_id=run_id, stage="influence", method="tracin",
                    influence=InfluenceMatrix(method="tracin", eval_ids=["ev00"], train_ids=["tr00"], scores=[[1.0]],
                                              key=f"runs/{run_id}/influence/tracin.safetensors")),
    ]


def _routes_on(app, *names: str) -> list[tuple[str, str]]:
    """(method, path) of every operation in /openapi.json with one of these path
    parameters: the list grows with the API, so a new route on an experiment or run is
    checked without editing this test."""
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if any(f"{{{name}}}" in path for name in names)
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]


async def test_user_b_gets_404_on_everything_of_user_a(iso_settings) -> None:
    async with gateway_in_process(iso_settings) as (app, a_client):
        bus = await Bus.connect(iso_settings, "test-producer")
        try:
            run_id = await start_run(a_client, EXPERIMENT)
            await publish_and_wait(app, bus, run_id, a_run_with_everything(run_id))
        finally:
            await bus.close()
        experiment_id = (await a_client.get(f"/api/runs/{run_id}")).json()["experiment_id"]
        a_results = (await a_client.get(f"/api/runs/{run_id}/results")).json()
        assert a_results["answers"] and a_results["influence"]  # there is something to hide

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as b_client:
            await sign_up(b_client, f"b-{uuid.uuid4().hex[:8]}@tests.invalid")
            routes = _routes_on(app, "experiment_id", "run_id")
            paths = {path for _, path in routes}
            assert {"/api/experiments/{experiment_id}", "/api/runs/{run_id}", "/api/runs/{run_id}/results",
                    "/api/runs/{run_id}/events", "/api/runs/{run_id}/predictions"} <= paths
            for method, path in routes:
                url = path.replace("{experiment_id}", experiment_id).replace("{run_id}", str(run_id))
                kwargs = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                answer = await b_client.request(method, url, **kwargs)
                assert answer.status_code == 404, (method, url, answer.status_code, answer.text)
            # The SSE stream, resumed or not.
            for headers in ({}, {"Last-Event-ID": "0"}):
                assert (await b_client.get(f"/api/runs/{run_id}/events", headers=headers)).status_code == 404
            # Lists hold nothing of A's, filtered by A's experiment or not.
            assert (await b_client.get("/api/experiments")).json() == []
            assert (await b_client.get("/api/runs")).json() == []
            assert (await b_client.get("/api/runs", params={"experiment_id": experiment_id})).json() == []

        # A still sees all of it: the 404s above were B's, not a broken run.
        assert (await a_client.get(f"/api/runs/{run_id}")).status_code == 200
        assert (await a_client.get(f"/api/experiments/{experiment_id}")).status_code == 200
        assert (await a_client.get(f"/api/runs/{run_id}/predictions")).json()["total"] == 1


async def test_row_level_security_hides_other_users_rows_without_any_filter(iso_settings) -> None:
    async with gateway_in_process(iso_settings) as (app, a_client):
        bus = await Bus.connect(iso_settings, "test-producer")
        try:
            run_id = await start_run(a_client, EXPERIMENT)
            await publish_and_wait(app, bus, run_id, a_run_with_everything(run_id))
        finally:
            await bus.close()
        await a_client.post("/api/tokens", json={"name": "a's pipeline"})
        a_id = uuid.UUID((await a_client.get("/api/auth/me")).json()["id"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as b_client:
            b_id = uuid.UUID((await sign_up(b_client, f"b-{uuid.uuid4().hex[:8]}@tests.invalid"))["user"]["id"])

        run_tables = (RunEventRow, Metric, Prediction, Checkpoint, AnswerRow, InfluenceMatrixRow)
        async with session_for(app.state.user_sessionmaker, a_id) as a_session:
            assert await a_session.scalar(select(func.current_user())) == "inflab_app"
            for model in run_tables:
                assert await a_session.scalar(select(func.count()).select_from(model).where(model.run_id == run_id)) > 0

        async with session_for(app.state.user_sessionmaker, b_id) as b_session:
            # No owner filter anywhere: only the policies stand between B and A's rows.
            assert await b_session.get(Run, run_id) is None
            assert (await b_session.scalars(select(User))).all() == [await b_session.get(User, b_id)]
            for model in (Experiment, Run):
                assert {row.owner_id for row in await b_session.scalars(select(model))} <= {b_id}
            for model in (AuthSession, ApiToken, Identity):
                assert {row.user_id for row in await b_session.scalars(select(model))} <= {b_id}
            for model in run_tables:
                assert await b_session.scalar(select(func.count()).select_from(model)) == 0, model.__name__
            changed = await b_session.execute(update(Run).where(Run.id == run_id).values(status="failed"))
            assert changed.rowcount == 0
            await b_session.rollback()
            # Nor can B write a row in A's name.
            b_session.add(Experiment(owner_id=a_id, name="planted", model_id="m", training_data=[], eval_data=[],
                                     hyperparams={}, influence_methods=[]))
            with pytest.raises(DBAPIError, match="row-level security"):
                await b_session.flush()

        # The system path (the persister's) sees everyone's rows.
        async with app.state.sessionmaker() as system:
            assert await system.get(Run, run_id) is not None
