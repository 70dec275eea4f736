"""The run-submission consumer waits for Postgres: while the database cannot be reached, a
pipeline's submission is kept (not dead-lettered after its few redeliveries), and the run
is made once Postgres answers again. The outage is real: the gateway's database
connections go through a TCP relay that the test closes and reopens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import nats
import pytest

from inflab.core.bus import Bus
from inflab.core.db.models import Run
from inflab.core.db.session import make_engine, make_sessionmaker
from inflab.core.messages import RunSubmission
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from inflab.gateway.auth.rls import user_sessionmaker
from inflab.gateway.dispatch import Dispatcher
from inflab.gateway.notifier import RunNotifier
from inflab.gateway.submissions import RunSubmissions
from helpers.gateway import delete_streams, gateway_in_process, isolated_settings

pytestmark = pytest.mark.integration

EXPERIMENT = {
    "name": "through an outage",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}


class Relay:
    """A TCP relay to Postgres that can refuse connections (and drop the open ones)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = False
        self.refused = 0
        self._refusals = asyncio.Condition()
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close_down(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.close()

    async def refusals(self, at_least: int, timeout: float = 60) -> None:
        async with self._refusals:
            await asyncio.wait_for(self._refusals.wait_for(lambda: self.refused >= at_least), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            async with self._refusals:
                self.refused += 1
                self._refusals.notify_all()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def stop(self) -> None:
        await self.close_down()
        if self.server is not None:
            self.server.close()
        for task in list(self._pipes):
            task.cancel()


@pytest.fixture(scope="module")
def gw_settings(settings: Settings) -> Iterator[Settings]:
    # Few, quick redeliveries: without waiting, the submission would be dead-lettered in ~1 s.
    own = isolated_settings(settings, "gwpg").model_copy(update={"max_deliver": 2, "nak_delay_s": 0.1,
                                                                  "ack_wait_s": 2.0})
    yield own
    asyncio.run(delete_streams(own))


async def test_submissions_wait_for_postgres_instead_of_dead_lettering(gw_settings) -> None:
    subjects = Subjects.from_settings(gw_settings)
    async with gateway_in_process(gw_settings) as (_, owner):
        token = (await owner.post("/api/tokens", json={"name": "pipeline"})).json()["token"]
    # The gateway's own consumer is gone with it; this one reaches Postgres through the relay.
    url = urlsplit(gw_settings.database_url)
    relay = Relay(url.hostname, url.port or 5432)
    port = await relay.start()
    relayed = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{port}" if url.username
                                      else f"127.0.0.1:{port}"))
    engine = make_engine(relayed, pool_size=2)
    direct = make_engine(gw_settings.database_url)
    bus = await Bus.connect(gw_settings, "gateway")
    nc = await nats.connect(gw_settings.nats_url)
    letters: list[bytes] = []
    stop = asyncio.Event()
    task = None
    try:

        async def on_letter(msg) -> None:
            letters.append(msg.data)

        await nc.subscribe(subjects.dead_letter("gateway"), cb=on_letter)
        sessionmaker = make_sessionmaker(engine)
        dispatcher = Dispatcher(bus, sessionmaker, RunNotifier(), gw_settings)
        submissions = RunSubmissions(bus, sessionmaker, user_sessionmaker(engine), dispatcher, gw_settings)
        task = asyncio.create_task(submissions.run(stop))

        submission = RunSubmission(experiment=EXPERIMENT)
        await nc.jetstream().publish(subjects.run_submit, submission.model_dump_json().encode(),
                                     headers={"Authorization": f"Bearer {token}"})
        # Postgres stays away through more attempts than the message has deliveries.
        await relay.refusals(at_least=gw_settings.max_deliver + 3)
        assert letters == []
        async with make_sessionmaker(direct)() as session:
            assert await session.get(Run, submission.submission_id) is None

        relay.open = True
        async with asyncio.timeout(30):
            while True:
                async with make_sessionmaker(direct)() as session:
                    run = await session.get(Run, submission.submission_id)
                if run is not None:
                    break
                await asyncio.sleep(0.1)
        assert run.status == "queued" and run.dispatch_queue == gw_settings.subject_prefix
        # The message was acknowledged once handled: nothing waits, nothing was dead-lettered.
        info = await nc.jetstream().consumer_info(subjects.submissions_stream, submissions.durable)
        async with asyncio.timeout(10):
            while info.num_ack_pending or info.num_pending:
                await asyncio.sleep(0.05)
                info = await nc.jetstream().consumer_info(subjects.submissions_stream, submissions.durable)
        assert letters == []
    finally:
        stop.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await relay.stop()
        await nc.close()
        await bus.close()
        await engine.dispose()
        await direct.dispose()
