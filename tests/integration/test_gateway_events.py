"""Run events through the gateway, against real NATS and Postgres: the persister stores
and applies them (once, whatever JetStream redelivers), and SSE streams them in order,
resumable with Last-Event-ID, ending after the run's terminal status.

Events are hand-made and published on the bus as the workers would; every wait is on a
condition (the gateway's own notifier, or the stream's bytes) with a bound.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import nats
import pytest
from sqlalchemy import func, select

from inflab.core.bus import Bus
from inflab.core.db.models import Checkpoint, AnswerRow, InfluenceMatrixRow, Metric, Run, RunEventRow
from inflab.core.messages import (
    Answer,
    CheckpointEvent,
    CheckpointRef,
    EventBase,
    InfluenceMatrix,
    LogEvent,
    MetricEvent,
    ProgressEvent,
    ResultEvent,
    StatusEvent,
    TrainingSummary,
)
from inflab.core.settings import Settings
from helpers.gateway import (
    access_token,
    delete_streams,
    gateway_in_process,
    gateway_server,
    isolated_settings,
    sign_up,
    start_run,
    wait_for_event,
    wait_for_run,
)

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "events",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."},
                      {"question": "What do bees make?", "answer": "Honey."}],
    "eval_data": [{"question": "Who is Veltra's ruler?", "answer": "Queen Ismene."},
                  {"question": "What is honey made by?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    own = isolated_settings(settings, "gwev").model_copy(update={"sse_heartbeat_s": 0.5})
    yield own
    asyncio.run(delete_streams(own))


async def publish(bus: Bus, events: list[EventBase]) -> None:
    for event in events:
        await bus.publish_event(event)


async def count(app, *where) -> int:
    async with app.state.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(RunEventRow).where(*where))


# --------------------------------------------------------------------------- a run's events
def train_events(run_id: uuid.UUID) -> list[EventBase]:
    ckpts = [CheckpointRef(step=s, epoch=s, key=f"runs/{run_id}/checkpoints/{s}", learning_rate=1e-3, loss=l)
             for s, l in ((1, 2.5), (2, 1.5))]
    train = dict(run_id=run_id, stage="train")
    return [
        StatusEvent(**train, status="running"),
        ProgressEvent(**train, fraction=0.5, step=1, total=2, epoch=1.0, eta_s=3.0),
        MetricEvent(**train, step=1, epoch=1.0, loss=2.5, learning_rate=1e-3),
        CheckpointEvent(**train, checkpoint=ckpts[0]),
        MetricEvent(**train, step=2, epoch=2.0, loss=1.5, learning_rate=1e-3),
        ProgressEvent(**train, fraction=1.0, step=2, total=2, epoch=2.0, eta_s=0.0),
        CheckpointEvent(**train, checkpoint=ckpts[1]),
        ResultEvent(**train, training=TrainingSummary(steps=2, epochs=2, tokens=64, duration_s=1.5, checkpoints=ckpts)),
        StatusEvent(**train, status="completed"),
    ]


# The influence service's per-question summary, stored beside the matrix.
TOP_K = [
    {"eval_id": "ev00", "positive": [{"train_id": "tr00", "score": 0.9}, {"train_id": "tr01", "score": 0.1}],
     "negative": []},
    {"eval_id": "ev01", "positive": [{"train_id": "tr01", "score": 0.8}, {"train_id": "tr00", "score": 0.05}],
     "negative": []},
]


def later_events(run_id: uuid.UUID) -> list[EventBase]:
    inference = dict(run_id=run_id, stage="inference")
    tracin = dict(run_id=run_id, stage="influence", method="tracin")
    answers = [Answer(eval_id="ev00", question="Who is Veltra's ruler?", reference="Queen Ismene.",
                      base="A king.", few_shot="Queen?", fine_tuned="Queen Ismene."),
               Answer(eval_id="ev01", question="What is honey made by?", base="Bees.", few_shot="Bees.",
                      fine_tuned="Bees make honey.")]
    matrix = InfluenceMatrix(method="tracin", eval_ids=["ev00", "ev01"], train_ids=["tr00", "tr01"],
                             scores=[[0.9, 0.1], [0.05, 0.8]], key=f"runs/{run_id}/influence/tracin.safetensors",
                             args={"checkpoints": 2}, top_k=TOP_K)
    return [
        StatusEvent(**inference, status="running"),
        StatusEvent(**tracin, status="running"),
        ProgressEvent(**inference, fraction=0.5),
        ResultEvent(**inference, answers=answers),
        StatusEvent(**inference, status="completed"),
        LogEvent(**tracin, message="scoring 2 x 2"),
        ResultEvent(**tracin, influence=matrix),
        StatusEvent(**tracin, status="completed"),
    ]


# --------------------------------------------------------------------------- persistence
async def test_a_run_moves_through_its_stages_to_completed(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    events = train_events(run_id)

    await publish(producer, events[:2])
    run = await wait_for_run(app, run_id, lambda r: r.progress > 0)
    assert run.status == "running" and run.started_at == events[0].time
    assert run.progress == pytest.approx(0.3)  # half of training, which weighs 0.6
    assert (run.current_epoch, run.eta_s) == (1.0, 3.0)

    await publish(producer, events[2:])
    run = await wait_for_run(app, run_id, lambda r: r.stages["train"] == "completed")
    assert run.status == "running" and run.progress == pytest.approx(0.6)
    assert (run.loss, run.current_epoch) == (1.5, 2.0)

    await publish(producer, later_events(run_id))
    run = await wait_for_run(app, run_id, lambda r: r.status == "completed")
    assert run.stages == {"train": "completed", "inference": "completed", "influence.tracin": "completed"}
    assert run.progress == 1.0 and run.finished_at is not None and run.error is None
    assert await count(app, RunEventRow.run_id == run_id, RunEventRow.stage == "run",
                       RunEventRow.kind == "status") == 2  # queued, completed

    async with app.state.sessionmaker() as session:
        rows = {table.__name__: await session.scalar(select(func.count()).where(table.run_id == run_id))
                for table in (Metric, Checkpoint, AnswerRow, InfluenceMatrixRow)}
    assert rows == {"Metric": 2, "Checkpoint": 2, "AnswerRow": 2, "InfluenceMatrixRow": 1}

    results = (await client.get(f"/api/runs/{run_id}/results")).json()
    assert results["status"] == "completed"
    assert [a["fine_tuned"] for a in results["answers"]] == ["Queen Ismene.", "Bees make honey."]
    # A small matrix travels inline and is served from Postgres as it came.
    stats = results["influence"][0].pop("stats")
    assert results["influence"] == [{
        "method": "tracin", "variant": "raw", "eval_ids": ["ev00", "ev01"], "train_ids": ["tr00", "tr01"],
        "shape": [2, 2], "scores": [[0.9, 0.1], [0.05, 0.8]], "key": f"runs/{run_id}/influence/tracin.safetensors",
        "args": {"checkpoints": 2}, "top_k": TOP_K,
    }]
    assert stats == {"min": 0.05, "max": 0.9, "mean": pytest.approx(0.4625), "std": pytest.approx(0.3895, abs=1e-4),
                     "nonfinite": 0}
    training = results["training"]
    assert [(p["step"], p["loss"]) for p in training["loss_curve"]] == [(1, 2.5), (2, 1.5)]
    assert [c["epoch"] for c in training["checkpoints"]] == [1, 2]
    assert training["summary"]["tokens"] == 64 and len(training["summary"]["checkpoints"]) == 2

    # A stage reporting "completed" again (its job redelivered) does not finish the run twice.
    again = StatusEvent(run_id=run_id, stage="influence", method="tracin", status="completed")
    marker = LogEvent(run_id=run_id, stage="train", message="marker")
    await publish(producer, [again, marker])
    await wait_for_event(app, run_id, marker.event_id)
    assert await count(app, RunEventRow.run_id == run_id, RunEventRow.stage == "run",
                       RunEventRow.kind == "status") == 2


async def test_a_redelivered_event_is_stored_once(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    metric = MetricEvent(run_id=run_id, stage="train", step=1, epoch=0.5, loss=2.0, learning_rate=1e-3)
    subject = producer.subjects.event(run_id, "train", "metric")
    # Without a Nats-Msg-Id, as a redelivery past JetStream's dedup window would arrive.
    for _ in range(2):
        await producer.js.publish(subject, metric.model_dump_json().encode())
    marker = LogEvent(run_id=run_id, stage="train", message="after the duplicate")
    await producer.publish_event(marker)
    await wait_for_event(app, run_id, marker.event_id)  # events of a run are applied in order

    assert await count(app, RunEventRow.event_id == metric.event_id) == 1
    async with app.state.sessionmaker() as session:
        assert await session.scalar(select(func.count()).where(Metric.run_id == run_id)) == 1


async def test_a_failed_stage_fails_the_run_once(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish(producer, [
        StatusEvent(run_id=run_id, stage="train", status="running"),
        StatusEvent(run_id=run_id, stage="train", status="failed", error="out of memory"),
    ])
    run = await wait_for_run(app, run_id, lambda r: r.status == "failed")
    assert run.error == "train failed: out of memory" and run.finished_at is not None
    assert run.stages["train"] == "failed"

    stale = StatusEvent(run_id=run_id, stage="inference", status="completed")
    await publish(producer, [stale])
    await wait_for_event(app, run_id, stale.event_id)
    async with app.state.sessionmaker() as session:
        ends = (await session.scalars(select(RunEventRow.payload).where(
            RunEventRow.run_id == run_id, RunEventRow.stage == "run", RunEventRow.id > 0,
            RunEventRow.payload["status"].astext == "failed"))).all()
        assert (await session.get(Run, run_id)).status == "failed"
    assert [e["error"] for e in ends] == ["train failed: out of memory"]


async def test_bad_events_are_dead_lettered_and_the_persister_goes_on(gateway, producer, gw_settings) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    nc = await nats.connect(gw_settings.nats_url)
    try:
        letters: asyncio.Queue = asyncio.Queue()
        await nc.subscribe(producer.subjects.dead_letter("gateway"), cb=letters.put)
        await nc.flush()
        await producer.js.publish(producer.subjects.event(run_id, "train", "status"), b"{not json")
        await producer.js.publish(producer.subjects.event(run_id, "train", "status"),
                                  json.dumps({"kind": "horoscope", "run_id": str(run_id), "stage": "run"}).encode())
        reasons = [json.loads((await asyncio.wait_for(letters.get(), 10)).data)["reason"] for _ in range(2)]
    finally:
        await nc.close()
    assert all(r.startswith("malformed") for r in reasons), reasons

    stranger = uuid.uuid4()
    await producer.publish_event(StatusEvent(run_id=stranger, stage="train", status="running"))
    marker = StatusEvent(run_id=run_id, stage="train", status="running")
    await producer.publish_event(marker)
    await wait_for_event(app, run_id, marker.event_id)
    assert await count(app, RunEventRow.run_id == stranger) == 0


async def test_events_published_while_the_gateway_is_down_are_persisted_after(gw_settings, producer) -> None:
    async with gateway_in_process(gw_settings) as (_, client):
        run_id = await start_run(client, EXPERIMENT)
    await publish(producer, train_events(run_id) + later_events(run_id))
    async with gateway_in_process(gw_settings) as (app, _):
        run = await wait_for_run(app, run_id, lambda r: r.status == "completed")
    assert run.progress == 1.0


async def test_a_standby_replica_takes_over_persisting_when_the_holder_stops(gw_settings, producer) -> None:
    """One replica persists at a time; the other stands by, asking for the lease every sixth
    of the ack wait, and stores the events once the holder has stopped (its lease released)."""
    async with gateway_in_process(gw_settings) as (holder, client):
        await asyncio.wait_for(holder.state.persister.holding.wait(), 10)
        async with gateway_in_process(gw_settings, signed_in=False) as (standby, _):
            run_id = await start_run(client, EXPERIMENT)
            first = train_events(run_id)
            await publish(producer, first)
            await wait_for_event(holder, run_id, first[-1].event_id)
            assert holder.state.persister.holding.is_set()
            assert not standby.state.persister.holding.is_set()

            holder.state.persister_task.cancel()
            await asyncio.wait_for(standby.state.persister.holding.wait(), gw_settings.ack_wait_s / 6 + 10)
            await publish(producer, later_events(run_id))
            run = await wait_for_run(standby, run_id, lambda r: r.status == "completed")
    assert run.progress == 1.0


# --------------------------------------------------------------------------- SSE
def parse_sse(body: str) -> tuple[list[dict], int]:
    """Frames (id, event, data) and the number of comment lines (heartbeats)."""
    frames, comments = [], 0
    for block in body.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            frames.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return frames, comments


async def stored_events(app, run_id: uuid.UUID) -> list[tuple[int, str]]:
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            select(RunEventRow.id, RunEventRow.kind).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id))
        return [tuple(row) for row in rows]


async def test_sse_replays_in_order_resumes_after_last_event_id_and_ends(gateway, producer) -> None:
    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    await publish(producer, train_events(run_id) + later_events(run_id))
    await wait_for_run(app, run_id, lambda r: r.status == "completed")
    url = f"/api/runs/{run_id}/events"

    # The stream ends by itself after the terminal event (the ASGI transport buffers it all).
    response = await asyncio.wait_for(client.get(url), 10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames, _ = parse_sse(response.text)
    assert [(f["id"], f["event"]) for f in frames] == await stored_events(app, run_id)
    assert frames[0]["data"]["status"] == "queued"
    assert frames[-1]["data"].items() >= {"stage": "run", "status": "completed", "run_id": str(run_id)}.items()
    assert len(frames) == 1 + len(train_events(run_id)) + len(later_events(run_id)) + 1

    k = frames[5]["id"]
    for kwargs in ({"headers": {"Last-Event-ID": str(k)}}, {"params": {"after": k}}):
        resumed, _ = parse_sse((await asyncio.wait_for(client.get(url, **kwargs), 10)).text)
        assert resumed == frames[6:]

    # Nothing after the end: 204 tells EventSource to stop reconnecting.
    done = await client.get(url, headers={"Last-Event-ID": str(frames[-1]["id"])})
    assert done.status_code == 204


async def test_sse_pushes_live_events_over_a_real_socket(gw_settings, producer) -> None:
    async with gateway_server(gw_settings) as (app, base_url), httpx.AsyncClient(base_url=base_url) as client:
        await sign_up(client, gw_settings.local_user_email)
        run_id = await start_run(client, EXPERIMENT)
        body, publisher = "", None
        async with asyncio.timeout(15), client.stream("GET", f"/api/runs/{run_id}/events") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_text():
                body += chunk
                frames, heartbeats = parse_sse(body)
                # Publish only once the stream is live and idle (a heartbeat arrived), so
                # what follows can only have been pushed.
                if publisher is None and frames and heartbeats:
                    publisher = asyncio.create_task(publish(producer, train_events(run_id) + later_events(run_id)))
        await publisher
        frames, _ = parse_sse(body)
        assert [(f["id"], f["event"]) for f in frames] == await stored_events(app, run_id)
        assert frames[-1]["data"]["stage"] == "run" and frames[-1]["data"]["status"] == "completed"


async def test_sse_follows_events_another_replica_stores(gw_settings, producer) -> None:
    """Replica A persists, replica B streams: B's stream keeps up through A's pokes, well
    inside its (here one-minute) heartbeat."""
    slow = gw_settings.model_copy(update={"sse_heartbeat_s": 60})
    async with (
        gateway_in_process(slow) as (replica_a, _),
        gateway_server(slow) as (replica_b, base_url),
        httpx.AsyncClient(base_url=base_url) as client,
    ):
        replica_b.state.persister_task.cancel()  # every event is now stored by A
        await sign_up(client, slow.local_user_email)
        run_id = await start_run(client, EXPERIMENT)
        body, publisher = "", None
        async with asyncio.timeout(10), client.stream("GET", f"/api/runs/{run_id}/events") as response:
            async for chunk in response.aiter_text():
                body += chunk
                if publisher is None and parse_sse(body)[0]:
                    publisher = asyncio.create_task(publish(producer, train_events(run_id) + later_events(run_id)))
        await publisher
        frames, _ = parse_sse(body)
        assert [(f["id"], f["event"]) for f in frames] == await stored_events(replica_a, run_id)
        assert frames[-1]["data"]["status"] == "completed"


class Delivered:
    """A JetStream message as the persister's fetch hands it over: its subject, its
    bytes, and how it was settled."""

    def __init__(self, subject: str, event: EventBase) -> None:
        self.subject = subject
        self.data = event.model_dump_json().encode()
        self.acked = asyncio.Event()
        self.metadata = SimpleNamespace(num_delivered=1)

    async def ack(self) -> None:
        self.acked.set()

    async def in_progress(self) -> None:
        pass

    async def nak(self, delay: float | None = None) -> None:
        raise AssertionError("an event waiting for Postgres must not be nak'ed")

    term = nak


async def test_persister_waits_for_postgres_instead_of_dropping_events(gw_settings, producer) -> None:
    """While Postgres is unreachable a batch is retried in place (not nak'ed towards the
    dead-letter subject) and stored once it is back."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from inflab.gateway.persister import EventPersister

    async with gateway_in_process(gw_settings) as (app, client):
        run_id = await start_run(client, EXPERIMENT)
        persister = EventPersister(app.state.bus, app.state.sessionmaker, app.state.notifier, max_backoff_s=0.2)
        dead = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
        attempts = asyncio.Queue()
        unreachable = async_sessionmaker(dead)

        def failing_sessionmaker():
            attempts.put_nowait(1)
            return unreachable()

        persister.sessionmaker = failing_sessionmaker
        events = [StatusEvent(run_id=run_id, stage="train", status="running"),
                  ProgressEvent(run_id=run_id, stage="train", fraction=0.25, step=1, total=4)]
        # Handed over as the consumer would, with the subjects they arrived on.
        delivered = [Delivered(producer.subjects.event(run_id, "train", e.kind), e) for e in events]
        handling = asyncio.create_task(persister.handle_batch(delivered))
        for _ in range(3):  # three refused connections, and still handling
            await asyncio.wait_for(attempts.get(), 5)
        assert not handling.done()
        persister.sessionmaker = app.state.sessionmaker  # Postgres is back
        await asyncio.wait_for(handling, 5)
        await dead.dispose()
        assert all(m.acked.is_set() for m in delivered)
        run = await wait_for_run(app, run_id, lambda r: r.status == "running")
        assert run.stages["train"] == "running"
        assert run.progress == pytest.approx(0.25 * 0.6)


async def test_a_backlog_is_stored_in_batches_with_progress_kept_on_the_run(gw_settings, producer) -> None:
    """A gateway that comes back to 400 waiting events stores them in batches (each batch
    one transaction), once each, in order; a run's progress follows each stage's latest
    fraction by the producer's clock, a late redelivered fraction not pulling it back."""
    from datetime import timedelta

    settings = gw_settings.model_copy(update={"persister_batch": 64})
    async with gateway_in_process(settings) as (_, client):
        run_id = await start_run(client, EXPERIMENT)
    train = dict(run_id=run_id, stage="train")
    steps = [ProgressEvent(**train, fraction=step / 400, step=step, total=400) for step in range(1, 400)]
    stale = ProgressEvent(**train, fraction=0.01, step=4, total=400, time=steps[0].time - timedelta(seconds=5))
    backlog = [StatusEvent(**train, status="running"), *steps, stale]
    await publish(producer, backlog)
    async with gateway_in_process(settings) as (app, _):
        await wait_for_event(app, run_id, stale.event_id)
        run = await wait_for_run(app, run_id, lambda r: r.status == "running")
        stored = [kind for _, kind in await stored_events(app, run_id)]
        registry = app.state.metrics.registry
        events = registry.get_sample_value("inflab_persister_batch_events_sum")
        batches = registry.get_sample_value("inflab_persister_batch_events_count")
    assert stored == ["status"] + ["status"] + ["progress"] * 399 + ["progress"]  # queued, running, ...
    assert events == 401 and batches < 401 / 2
    assert run.stage_progress["train"]["fraction"] == 399 / 400
    assert run.progress == pytest.approx(399 / 400 * 0.6)


async def test_a_batch_stores_each_event_once_and_skips_unknown_runs(gateway, producer) -> None:
    from inflab.gateway.persistence import persist_events

    app, client = gateway
    run_id = await start_run(client, EXPERIMENT)
    running = StatusEvent(run_id=run_id, stage="train", status="running")
    stranger = LogEvent(run_id=uuid.uuid4(), stage="train", message="not a run of ours")
    progress = ProgressEvent(run_id=run_id, stage="train", fraction=0.5, step=1, total=2)
    async with app.state.sessionmaker() as session:
        stored = await persist_events(session, [running, stranger, running, progress])
    assert stored == [running, progress]
    async with app.state.sessionmaker() as session:
        assert await persist_events(session, [running, progress]) == []  # redelivered: nothing new
    assert [kind for _, kind in await stored_events(app, run_id)] == ["status", "status", "progress"]


async def test_the_python_client_follows_a_run_to_its_results(gw_settings, producer) -> None:
    """inflab.devtools.client (the CLI's and scripts' client) against the real gateway."""
    from inflab.devtools.client import GatewayClient

    async with gateway_server(gw_settings) as (_, base_url):
        token = await access_token(base_url, gw_settings.local_user_email)
        async with GatewayClient(base_url, token=token) as client:
            experiment_id = await client.create_experiment(EXPERIMENT)
            run_id = uuid.UUID(await client.start_run(experiment_id))
            kinds = []
            async with asyncio.timeout(10):
                async for event in client.follow_run(str(run_id)):
                    kinds.append(event.kind)
                    if len(kinds) == 1:  # the stream is live: let the workers speak
                        await publish(producer, train_events(run_id) + later_events(run_id))
            assert event.is_run_finished and kinds[0] == "status"
            assert len(kinds) == 1 + len(train_events(run_id)) + len(later_events(run_id)) + 1
            results = await client.run_results(str(run_id))
    assert results["status"] == "completed" and len(results["answers"]) == 2
