"""The closed bus, against a real nats-server from the wheel started with the generated
authorization (inflab.core.nats_permissions, written by the embedded stack's own code)
and real role credentials, plus the real gateway and Postgres:

* a client without credentials (or with a wrong password) is refused;
* a pipeline credential submits a run and reads the gateway's answer, but cannot read
  submissions, publish events, requests, control messages or dead letters, or touch the
  JetStream API;
* every role does its whole job under its permissions: a run goes from submission to
  completed through the gateway and the three workers' credentials without a single
  permissions violation;
* a forged event from a non-worker or wrong-worker credential changes nothing in Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from sqlalchemy import func, select

from inflab.core.bus import Bus, connect_options
from inflab.core.db.models import Checkpoint, Run, RunEventRow
from inflab.devtools.embedded.bus_credentials import BusCredentials
from inflab.devtools.embedded.nats import EmbeddedNats
from inflab.core.events import StageEvents
from inflab.core.messages import (
    Answer,
    CheckpointRef,
    InferenceRequest,
    InfluenceMatrix,
    InfluenceRequest,
    RunSubmission,
    StatusEvent,
    SubmissionOutcome,
    TrainingSummary,
    TrainRequest,
)
from inflab.core.nats_permissions import ROLES, inbox_prefix
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import gateway_in_process, wait_for_event, wait_for_run
from inflab.trainer.control_subscription import ControlSubscription

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "closed bus",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@dataclass
class SecuredNats:
    server: EmbeddedNats
    urls: dict[str, str]
    settings: Settings
    credentials: BusCredentials

    def as_role(self, role: str) -> Settings:
        return self.settings.model_copy(update={"nats_url": self.urls[role]})

    @property
    def subjects(self) -> Subjects:
        return Subjects.from_settings(self.settings)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, settings: Settings) -> Iterator[SecuredNats]:
    """Its own nats-server with authentication on, configured as the embedded stack does;
    the product's own subject and stream names (a server of its own needs no prefix)."""
    home = tmp_path_factory.mktemp("secured")
    own = settings.model_copy(update={"subject_prefix": "inflab", "stream_prefix": "INFLAB", "home": home})
    credentials = BusCredentials(home)
    passwords = credentials.write_nats(Subjects.from_settings(own))
    server = EmbeddedNats(home / "nats", 0, config_file=credentials.authorization_file)
    server.start()
    try:
        urls = credentials.write_urls(passwords, server.host, server.port)
        yield SecuredNats(server, urls, own.model_copy(update={"nats_url": server.url}), credentials)
    finally:
        server.stop()


class Client:
    """A raw nats-py connection as one role, recording the errors the server sends it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._changed = asyncio.Event()
        self.nc: NATS | None = None

    async def connect(self, secured: SecuredNats, role: str) -> "Client":
        options = connect_options(secured.as_role(role), role) | {"error_cb": self._on_error,
                                                                     "allow_reconnect": False}
        self.nc = await nats.connect(**options)
        return self

    async def _on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        self._changed.set()

    async def refused(self, what: str, timeout: float = 5.0) -> None:
        """Until the server reports a permissions violation naming ``what``."""
        try:
            async with asyncio.timeout(timeout):
                while not any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no permissions violation for {what}; the server said {self.errors}") from None

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


@contextlib.asynccontextmanager
async def client(secured: SecuredNats, role: str) -> AsyncIterator[Client]:
    c = await Client().connect(secured, role)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def streams(secured: SecuredNats):
    """The gateway creates the streams, as at its start-up (once; later calls find them)."""
    bus = await Bus.connect(secured.as_role("gateway"), "gateway", create_streams=True)
    await bus.close()


async def stream_messages(secured: SecuredNats, stream: str) -> int:
    async with client(secured, "operator") as op:
        return (await op.nc.jetstream().stream_info(stream)).state.messages


# --------------------------------------------------------------------------- authentication
async def test_a_client_without_credentials_is_refused(secured: SecuredNats) -> None:
    for url in (secured.server.url, secured.urls["pipeline"].replace("@", "x@")):  # none; a wrong password
        with pytest.raises(Exception) as refused:
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
        assert "authorization violation" in str(refused.value).lower()
    # Every role's own credential gets in; its files are its owner's only.
    for role in ROLES:
        async with client(secured, role) as c:
            assert c.nc.is_connected
        assert secured.credentials.url_file(role).stat().st_mode & 0o777 == 0o600
    assert secured.credentials.authorization_file.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- the pipeline
async def test_a_pipeline_can_submit_and_nothing_else(secured: SecuredNats, streams) -> None:
    s = secured.subjects
    run_id = uuid.uuid4()
    submissions_before = await stream_messages(secured, s.submissions_stream)
    async with client(secured, "pipeline") as pipeline:
        js = pipeline.nc.jetstream(timeout=1)
        # What it is for: a submission, acknowledged by the stream.
        ack = await js.publish(s.run_submit, RunSubmission(experiment=EXPERIMENT).model_dump_json().encode(),
                               headers={"Authorization": "Bearer ilp_x"})
        assert ack.stream == s.submissions_stream

        # No reading submissions (and the API tokens in their headers), directly or through
        # another role's inbox, nor events or dead letters.
        for subject in (s.run_submit, "_INBOX.>", f"{inbox_prefix('gateway')}.>", ">", s.all_events,
                        s.all_dead_letters, s.control("*"), s.request("train")):
            await pipeline.nc.subscribe(subject)
            await pipeline.refused(f'Subscription to "{subject}"')

        # No publishing events, job requests, control messages or dead letters.
        event = StatusEvent(run_id=run_id, stage="train", status="failed", error="forged")
        for subject in (s.event(run_id, "train", "status"), s.request("train"), s.control(run_id),
                        s.dead_letter("gateway"), s.submission_outcome(run_id)):
            await pipeline.nc.publish(subject, event.model_dump_json().encode())
            await pipeline.refused(f'Publish to "{subject}"')

        # No JetStream API: not even looking at its own stream.
        attempts = {
            f"$JS.API.STREAM.INFO.{s.submissions_stream}": js.stream_info(s.submissions_stream),
            f"$JS.API.STREAM.PURGE.{s.submissions_stream}": js.purge_stream(s.submissions_stream),
            f"$JS.API.STREAM.DELETE.{s.jobs_stream}": js.delete_stream(s.jobs_stream),
            "$JS.API.STREAM.NAMES": js.find_stream_name_by_subject(s.run_submit),
            f"$JS.API.CONSUMER.CREATE.{s.submissions_stream}":
                js.add_consumer(s.submissions_stream, deliver_subject=f"{inbox_prefix('pipeline')}.x"),
            f"$JS.API.CONSUMER.MSG.NEXT.{s.submissions_stream}.{s.durable('gateway_submissions')}":
                pipeline.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{s.submissions_stream}."
                                    f"{s.durable('gateway_submissions')}", b"1", timeout=1),
        }
        for api, call in attempts.items():
            with pytest.raises(Exception):
                await asyncio.wait_for(call, 5)
            await pipeline.refused(f'Publish to "{api}')
    # Nothing changed but its one submission.
    assert await stream_messages(secured, s.submissions_stream) == submissions_before + 1
    assert await stream_messages(secured, s.jobs_stream) == 0


# --------------------------------------------------------------------------- every role at work
async def stage_worker(secured: SecuredNats, role: str, stage: str, model, work, stop: asyncio.Event) -> None:
    """A worker's bus life (consume signed requests with its durable, publish its events),
    with ``work`` instead of the ML."""
    bus = await Bus.connect(secured.as_role(role), role)
    try:
        await bus.consume(bus.subjects.request(stage), model, lambda request, msg: work(bus, request), stop,
                          durable=bus.subjects.durable(role), signed=True)
    finally:
        await bus.close()


async def train(bus: Bus, request: TrainRequest) -> None:
    events = StageEvents(bus, request.run_id, "train")
    # The trainer's control path: an ordered consumer on the control stream.
    controls = await ControlSubscription(bus, request.run_id, events).start()
    try:
        await controls.caught_up()
    finally:
        await controls.stop()
    await events.status("running")
    ref = CheckpointRef(step=1, epoch=1, key=f"runs/{request.run_id}/checkpoints/00000001", learning_rate=1e-3)
    await events.publish("checkpoint", checkpoint=ref)
    await events.publish("result", training=TrainingSummary(steps=1, epochs=1, tokens=8, duration_s=0.1,
                                                           checkpoints=[ref]))
    await events.status("completed")


async def infer(bus: Bus, request: InferenceRequest) -> None:
    events = StageEvents(bus, request.run_id, "inference")
    await events.status("running")
    answers = [Answer(eval_id=q.id, question=q.question, base="b", few_shot="f", fine_tuned="t")
               for q in request.spec.eval_data]
    await events.publish("result", answers=answers)
    await events.status("completed")


async def influence(bus: Bus, request: InfluenceRequest) -> None:
    events = StageEvents(bus, request.run_id, "influence", method=request.method)
    await events.status("running")
    matrix = InfluenceMatrix(method=request.method, eval_ids=[q.id for q in request.spec.eval_data],
                             train_ids=[p.id for p in request.spec.training_data],
                             scores=[[0.5] * len(request.spec.training_data)] * len(request.spec.eval_data),
                             key=f"runs/{request.run_id}/influence/{request.method}.safetensors")
    await events.publish("result", influence=matrix)
    await events.status("completed")


async def test_every_role_does_its_job_within_its_permissions(secured: SecuredNats, streams, caplog) -> None:
    """A pipeline's submission goes through the gateway, the trainer, inference and
    influence to a completed run, each on its own credential, with no violation."""
    caplog.set_level(logging.ERROR, logger="inflab.core.bus")
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(stage_worker(secured, "trainer", "train", TrainRequest, train, stop)),
        asyncio.create_task(stage_worker(secured, "inference", "inference", InferenceRequest, infer, stop)),
        asyncio.create_task(stage_worker(secured, "influence", "influence", InfluenceRequest, influence, stop)),
    ]
    try:
        async with gateway_in_process(secured.as_role("gateway")) as (app, owner):
            token = (await owner.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
            submission = RunSubmission(experiment=EXPERIMENT)
            async with client(secured, "pipeline") as pipeline:
                answers = await pipeline.nc.subscribe(secured.subjects.submission_outcome(submission.submission_id))
                await pipeline.nc.jetstream().publish(secured.subjects.run_submit,
                                                      submission.model_dump_json().encode(),
                                                      headers={"Authorization": f"Bearer {token}"})
                outcome = SubmissionOutcome.model_validate_json((await answers.next_msg(timeout=15)).data)
                assert outcome.accepted and outcome.run_id == submission.submission_id
                assert pipeline.violations() == []
            # A control message reaches the control stream (the gateway publishes it).
            changed = await owner.patch(f"/api/runs/{outcome.run_id}/params", json={"learning_rate": 0.01})
            assert changed.status_code in (202, 409), changed.text
            run = await wait_for_run(app, outcome.run_id, lambda r: r.status in ("completed", "failed"), timeout=60)
            assert run.status == "completed", (run.status, run.error, run.stages)
            results = (await owner.get(f"/api/runs/{outcome.run_id}/results")).json()
            assert results["answers"] and results["influence"]
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    violations = [r.getMessage() for r in caplog.records if "ermissions" in r.getMessage()]
    assert violations == []


async def test_a_worker_is_bound_to_its_own_stage(secured: SecuredNats, streams) -> None:
    s = secured.subjects
    run_id = uuid.uuid4()
    async with client(secured, "inference") as inference:
        for subject in (s.event(run_id, "train", "status"), s.event(run_id, "inference", "checkpoint"),
                        s.request("influence"), s.control(run_id), s.dead_letter("trainer")):
            await inference.nc.publish(subject, b"{}")
            await inference.refused(f'Publish to "{subject}"')
        # Not the trainer's consumer, and no stream administration.
        js = inference.nc.jetstream(timeout=1)
        for api, call in {
            f"$JS.API.CONSUMER.INFO.{s.jobs_stream}.{s.durable('trainer')}":
                js.consumer_info(s.jobs_stream, s.durable("trainer")),
            f"$JS.API.STREAM.PURGE.{s.jobs_stream}": js.purge_stream(s.jobs_stream),
        }.items():
            with pytest.raises(Exception):
                await asyncio.wait_for(call, 5)
            await inference.refused(f'Publish to "{api}"')
    async with client(secured, "gateway") as gateway:
        # The gateway queues jobs but reports no stage's events.
        await gateway.nc.publish(s.event(run_id, "train", "status"), b"{}")
        await gateway.refused(f'Publish to "{s.event(run_id, "train", "status")}"')


# --------------------------------------------------------------------------- forged events
async def test_forged_events_change_nothing(secured: SecuredNats, streams) -> None:
    s = secured.subjects
    async with gateway_in_process(secured.as_role("gateway")) as (app, owner):
        created = await owner.post("/api/experiments", json=EXPERIMENT)
        run_id = uuid.UUID((await owner.post(f"/api/experiments/{created.json()['id']}/runs")).json()["run_id"])
        failed = StatusEvent(run_id=run_id, stage="train", status="failed", error="forged")

        # Credentials that may not publish the train stage's events: refused by NATS.
        for role in ("pipeline", "inference", "influence", "gateway"):
            async with client(secured, role) as forger:
                await forger.nc.publish(s.event(run_id, "train", "status"), failed.model_dump_json().encode())
                await forger.refused(f'Publish to "{s.event(run_id, "train", "status")}"')

        # A worker on its own subject with a payload that claims another stage, or a result
        # its stage does not produce: refused by the persister, counted and dead-lettered.
        inference = await Bus.connect(secured.as_role("inference"), "inference")
        trainer = await Bus.connect(secured.as_role("trainer"), "trainer")
        try:
            await inference.js.publish(s.event(run_id, "inference", "status"), failed.model_dump_json().encode())
            sneaky = {"schema_version": 1, "run_id": str(run_id), "stage": "inference", "kind": "result",
                      "training": {"steps": 1, "epochs": 1, "tokens": 1, "duration_s": 1.0, "checkpoints": []}}
            await inference.js.publish(s.event(run_id, "inference", "result"), json.dumps(sneaky).encode())
            # The trainer announcing a checkpoint outside its run's prefix: malformed.
            outside = {"schema_version": 1, "run_id": str(run_id), "stage": "train", "kind": "checkpoint",
                       "checkpoint": {"step": 1, "epoch": 1, "key": "runs/another-run/checkpoints/1",
                                      "learning_rate": 0.001}}
            await trainer.js.publish(s.event(run_id, "train", "checkpoint"), json.dumps(outside).encode())
            # Events of one run are handled in order: once this is stored, so were those.
            marker = StatusEvent(run_id=run_id, stage="inference", status="queued")
            await inference.publish_event(marker)
            await wait_for_event(app, run_id, marker.event_id, timeout=15)
        finally:
            await inference.close()
            await trainer.close()

        async with app.state.sessionmaker() as session:
            run = await session.get(Run, run_id)
            assert run.status == "queued" and run.stages["train"] == "queued" and run.error is None
            kinds = list(await session.scalars(
                select(RunEventRow.stage + "." + RunEventRow.kind).where(RunEventRow.run_id == run_id)
                .order_by(RunEventRow.id)))
            assert kinds == ["run.status", "inference.status"]  # queued, and the marker
            assert await session.scalar(select(func.count()).where(Checkpoint.run_id == run_id)) == 0
        counted = app.state.metrics.registry.get_sample_value
        assert counted("inflab_events_refused_total", {"reason": "mismatch"}) == 1
        assert counted("inflab_events_refused_total", {"reason": "content"}) == 1

    # The dead letters say why.
    async with client(secured, "operator") as op:
        sub = await op.nc.jetstream().pull_subscribe(s.dead_letter("gateway"), stream=s.dead_letter_stream)
        letters = [m.data.decode() for m in await sub.fetch(10, timeout=5)]
    mine = [letter for letter in letters if str(run_id) in letter]
    assert any("refused event" in letter and "payload says" in letter for letter in mine)
    assert any("may carry only" in letter for letter in mine)
    assert any("not under this run" in letter for letter in mine)
