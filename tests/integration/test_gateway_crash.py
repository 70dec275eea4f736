"""A gateway SIGKILLed between committing a run and publishing its train request loses
nothing: the real gateway process (``python -m inflab.gateway``) with the fault hook
``INFLAB_TEST_FAULT_KILL_AFTER_RUN_COMMIT`` kills itself right after the commit, once for
a run started over HTTP and once for a pipeline's submission over NATS (before its ack).
The next gateway to start publishes each train request, exactly once, and the redelivered
submission is answered (accepted) instead of being dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from sqlalchemy import select

from inflab.core.db.models import Run
from inflab.core.db.session import make_engine, make_sessionmaker
from inflab.core.messages import RunSubmission, SubmissionOutcome, TrainRequest
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

from helpers.gateway_process import GatewayProcess

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "survives a crash",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    # The killed gateway's submission comes back 2 s after its last heartbeat.
    own = isolated_settings(settings, "gwcrash").model_copy(update={"ack_wait_s": 2.0, "dispatch_max_waiting": 10})
    yield own
    asyncio.run(delete_streams(own))


async def _train_requests(settings: Settings, count: int, timeout: float = 30) -> list:
    """The next ``count`` train requests, taken off the work queue as a trainer would."""
    subjects = Subjects.from_settings(settings)
    nc = await nats.connect(settings.nats_url)
    taken = []
    try:
        sub = await nc.jetstream().pull_subscribe(subjects.train_request, durable=subjects.durable("test_trainer"),
                                                  stream=subjects.jobs_stream)
        async with asyncio.timeout(timeout):
            while len(taken) < count:
                try:
                    msgs = await sub.fetch(count - len(taken), timeout=1)
                except NatsTimeout:
                    continue
                for msg in msgs:
                    await msg.ack()
                    taken.append(msg)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return taken


async def _runs(sessionmaker, settings: Settings) -> list[Run]:
    async with sessionmaker() as session:
        return list(await session.scalars(
            select(Run).where(Run.dispatch_queue == settings.subject_prefix).order_by(Run.created_at)))


async def _until(predicate, what: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_gateway_killed_after_the_commit_loses_no_run(gw_settings, tmp_path) -> None:
    subjects = Subjects.from_settings(gw_settings)
    log = tmp_path / "gateway.log"
    engine = make_engine(gw_settings.database_url)
    sessionmaker = make_sessionmaker(engine)
    announced: asyncio.Queue = asyncio.Queue()
    nc = await nats.connect(gw_settings.nats_url)
    js = nc.jetstream()
    processes: list[GatewayProcess] = []
    try:
        # The account, its experiment and a pipeline token, through a healthy gateway.
        async with gateway_in_process(gw_settings) as (_, client):
            experiment = (await client.post("/api/experiments", json=EXPERIMENT)).json()["id"]
            token = (await client.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
        access = client.headers["Authorization"]

        # 1. Over HTTP: the process dies after the commit, before answering or publishing.
        faulty = GatewayProcess(gw_settings, log, INFLAB_TEST_FAULT_KILL_AFTER_RUN_COMMIT="1")
        processes.append(faulty)
        await faulty.ready()
        async with httpx.AsyncClient(base_url=faulty.url, headers={"Authorization": access}) as http:
            with pytest.raises(httpx.TransportError):
                await http.post(f"/api/experiments/{experiment}/runs")
        assert await faulty.killed() == -9
        [first] = await _runs(sessionmaker, gw_settings)
        assert first.status == "queued" and first.dispatched_at is None
        assert (await js.stream_info(subjects.jobs_stream)).state.messages == 0

        # 2. The next gateway hands that run on; then, over NATS, it dies after committing
        # a pipeline's run, before acknowledging the submission.
        faulty = GatewayProcess(gw_settings, log, INFLAB_TEST_FAULT_KILL_AFTER_RUN_COMMIT="1")
        processes.append(faulty)
        await faulty.ready()

        async def first_handed_on() -> bool:
            return (await _runs(sessionmaker, gw_settings))[0].dispatched_at is not None

        await _until(first_handed_on, "the first run to be handed on")
        submission = RunSubmission(experiment=EXPERIMENT)

        async def on_outcome(msg) -> None:
            announced.put_nowait(SubmissionOutcome.model_validate_json(msg.data))

        await nc.subscribe(subjects.submission_outcome(submission.submission_id), cb=on_outcome)
        await js.publish(subjects.run_submit, submission.model_dump_json().encode(),
                         headers={"Authorization": f"Bearer {token}"})
        assert await faulty.killed() == -9
        first, second = await _runs(sessionmaker, gw_settings)
        assert second.id == submission.submission_id
        assert second.status == "queued" and second.dispatched_at is None
        assert announced.empty()

        # 3. A gateway that lives hands the second on, and the redelivered submission is
        # answered instead of being dropped.
        healthy = GatewayProcess(gw_settings, log)
        processes.append(healthy)
        await healthy.ready()
        outcome = await asyncio.wait_for(announced.get(), 30)
        assert outcome.accepted and outcome.run_id == submission.submission_id
        requests = await _train_requests(gw_settings, 2)
        run_ids = [str(TrainRequest.model_validate_json(m.data).run_id) for m in requests]
        assert run_ids == [str(first.id), str(second.id)]
        assert [m.headers["Nats-Msg-Id"] for m in requests] == run_ids

        async def both_marked() -> bool:
            # The dispatcher marks them in the transaction it publishes from, committed
            # after the publishes: a trainer may see a request before its mark.
            return all(r.dispatched_at is not None for r in await _runs(sessionmaker, gw_settings))

        await _until(both_marked, "both runs to be marked as handed on")
        healthy.stop()
        # Each was published once: nothing else waits on the work queue.
        assert (await js.stream_info(subjects.jobs_stream)).state.messages == 0
        # A publish repeated after a crash between the publish and the mark is dropped by
        # JetStream, whose duplicate window keys on the run id.
        again = await js.publish(subjects.train_request, requests[0].data, headers={"Nats-Msg-Id": run_ids[0]})
        assert again.duplicate
    finally:
        for process in processes:
            process.stop()
        await nc.close()
        await engine.dispose()
    assert log.read_text().count("test fault hook") == 2
