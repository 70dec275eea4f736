"""The fault tests' stack: every service its own OS process, started as ``inflab up`` starts
it, against a nats-server and a PostgreSQL this harness owns (so a test may kill, stop and
restart them), with the run's Ray shared by the whole test session.

What is the same as ``inflab up`` (:mod:`inflab.devtools.embedded.supervisor`): each service's
argv (:func:`default_services`), its environment (:func:`child_environment` over the
service's settings with ``SERVICE_ENV``), its own process group, and NATS with
authentication on: one generated user per role with the permissions of
:mod:`inflab.core.nats_permissions` (``BusCredentials``), each service connecting with
its own credential and only the gateway holding the job-signing key. What differs, on
purpose: no supervisor restarts a dead service here; the test does, when it has seen what
it wants to see while the service was down (the supervisor's own restarts are tested in
tests/integration/test_stack.py).

Everything waits on observed events (a port answering, a consumer pulling, an event
arriving), under a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from nats.js.errors import NotFoundError
from pydantic import SecretStr

from inflab.devtools.embedded._proc import die_with_parent, free_port, log_tail
from inflab.devtools.embedded.bus_credentials import BusCredentials
from inflab.devtools.embedded.nats import EmbeddedNats
from inflab.devtools.embedded.postgres import EmbeddedPostgres, ensure_database
from inflab.devtools.embedded.environment import (
    DATABASE_NAME,
    SERVICE_ENV,
    child_environment,
    default_services,
    embedded_settings,
)
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects
from helpers.gateway import sign_up

log = logging.getLogger("faults")

#: The tiny random model (in the stack's models folder) the fault tests' runs name.
TINY_MODEL = "tiny-llama"
#: The stage each worker service consumes.
WORKER_STAGES = {"trainer": "train", "inference": "inference", "influence": "influence"}


async def until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    """Re-check ``predicate`` every 0.1 s until it holds; fail naming ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class ServiceProcess:
    name: str  # gateway, trainer, inference, influence (a replica: trainer-2)
    service: str
    process: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def exited(self, timeout: float) -> int:
        """Until the process has exited (it crashed, or was killed); its exit code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} still running after {timeout:.0f} s")
            await asyncio.sleep(0.05)
        return self.process.returncode


@dataclass
class FaultStack:
    """NATS (auth on), PostgreSQL and the four services under ``root``; Ray at ``ray_address``."""

    root: Path
    ray_address: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.logs = self.home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.gateway_port = free_port()
        base = Settings(
            home=self.home,
            nats_url="",
            database_url="",
            ray_address=self.ray_address,
            object_store_url=(self.root / "objects").as_uri(),
            gateway_port=self.gateway_port,
            # Faults come back quickly: a killed worker's job is redelivered 3 s after its
            # last heartbeat, a failing one after 0.2 s; the fourth delivery is the last.
            ack_wait_s=3.0,
            nak_delay_s=0.2,
            max_deliver=3,
            train_num_cpus=1,
            inference_num_cpus=1,
            influence_num_cpus=1,
            sse_heartbeat_s=1.0,
            events_max_bytes=8 * 2**20,
            control_max_bytes=4 * 2**20,
            deadletter_max_bytes=4 * 2**20,
            login_max_per_address=1_000_000,
            register_max_per_window=1_000_000,
            **self.overrides,
        )
        self.base = base
        # What every child sees (the embedded defaults), before each gets its own credential.
        self.settings = embedded_settings(base).model_copy(
            update={"job_signing_key": SecretStr(""), "job_verify_key": ""})
        self.subjects = Subjects.from_settings(self.settings)
        self.credentials = BusCredentials(self.home)
        self.nats_urls: dict[str, str] = {}
        self.nats: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.nats_port = free_port()
        self.postgres_port = free_port()
        self.database_url = ""
        self.services: dict[str, ServiceProcess] = {}
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self._job_keys = ("", "")

    # -- infrastructure -----------------------------------------------------------------------
    def start_nats(self) -> None:
        """nats-server from the wheel, file storage under ``root/nats``, on the same port
        and store each time (so a restart finds its streams and durable consumers)."""
        self.nats = EmbeddedNats(self.root / "nats", self.nats_port, log_path=self.logs / "nats.log",
                                 config_file=self.credentials.authorization_file)
        self.nats.start()

    def stop_nats(self) -> None:
        assert self.nats is not None
        self.nats.stop()

    def start_postgres(self) -> None:
        self.postgres = EmbeddedPostgres(self.root / "pg", self.postgres_port, log_path=self.logs / "postgres.log")
        self.postgres.start()

    def stop_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.stop()

    async def start(self) -> None:
        from inflab.core.db.migrate import upgrade

        passwords = self.credentials.write_nats(self.subjects)
        self.start_nats()
        self.nats_urls = self.credentials.write_urls(passwords, self.nats.host, self.nats.port)
        self.settings.nats_url = self.nats.url
        self.start_postgres()
        self.database_url = await ensure_database(self.postgres.url, DATABASE_NAME)
        self.settings.database_url = self.database_url
        await asyncio.to_thread(upgrade, self.database_url)
        self._job_keys = self.credentials.job_keys()
        self.start_service("gateway")
        await self.gateway_ready()
        for name in WORKER_STAGES:
            self.start_service(name)
        for name in WORKER_STAGES:
            await self.consuming(name)

    async def stop(self) -> None:
        for proc in self.services.values():  # all asked at once: each may take seconds
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGTERM)
        for name in list(self.services):
            self.stop_service(name)
        for server in (self.postgres, self.nats):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    # -- services -------------------------------------------------------------------------------
    def service_settings(self, service: str) -> Settings:
        """As ``Stack.service_settings``: the role's own NATS credential; the gateway the
        signing key, a worker the verify key."""
        signing, verify = self._job_keys
        return self.settings.model_copy(update={
            "job_signing_key": SecretStr(signing if service == "gateway" else ""),
            "job_verify_key": verify if service != "gateway" else "",
            "nats_url": self.nats_urls[service], "nats_user": "", "nats_password": SecretStr(""),
            "nats_creds_file": None,
        })

    def start_service(self, name: str, service: str | None = None, **env: str) -> ServiceProcess:
        """Start ``service`` (default: ``name``) as ``inflab up`` does; ``env`` on top (fault hooks)."""
        service = service or name
        spec = next(s for s in default_services(self.settings) if s.name == service)
        environment = child_environment(self.service_settings(service), SERVICE_ENV | {"HF_HUB_OFFLINE": "1"} | env)
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as out:
            out.write(f"--- starting {name}\n".encode())
            out.flush()
            process = subprocess.Popen(
                list(spec.argv), env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )
        self.services[name] = ServiceProcess(name, service, process, log_path)
        log.info("started %s (pid %s)", name, process.pid)
        return self.services[name]

    def kill(self, name: str) -> None:
        """SIGKILL the service's whole process group (it gets no chance to clean up)."""
        proc = self.services[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait(10)
        log.info("killed %s", name)

    def stop_service(self, name: str) -> None:
        proc = self.services.pop(name, None)
        if proc is None or not proc.alive:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGTERM)
        try:
            proc.process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait(10)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return log_tail(self.logs / f"{name}.log", lines)

    async def gateway_ready(self, timeout: float = 120) -> None:
        proc = self.services["gateway"]

        async def ready() -> bool:
            assert proc.alive, f"the gateway exited:\n{self.log_tail('gateway')}"
            return await self.readiness() == 200

        await until(ready, "the gateway to be ready", timeout)
        log.info("gateway ready")

    async def readiness(self) -> int | None:
        """``GET /readyz``'s status code; None when nothing answers."""
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=5, trust_env=False) as client:
            try:
                return (await client.get("/readyz")).status_code
            except httpx.TransportError:
                return None

    async def consuming(self, name: str, timeout: float = 180) -> None:
        """Until the worker ``name`` is pulling its requests (a waiting pull on its durable)."""
        proc = self.services[name]
        durable = self.subjects.durable(proc.service)
        async with self.operator() as nc:
            js = nc.jetstream()

            async def pulling() -> bool:
                assert proc.alive, f"{name} exited:\n{self.log_tail(name)}"
                try:
                    info = await js.consumer_info(self.subjects.jobs_stream, durable)
                except NotFoundError:
                    return False
                return (info.num_waiting or 0) > 0

            await until(pulling, f"{name} to consume its requests", timeout)
        log.info("%s consuming", name)

    # -- clients --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def operator(self):
        """A NATS connection with the operator's credential (reads everything)."""
        nc = await nats.connect(self.nats_urls["operator"], max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            yield nc
        finally:
            await nc.close()

    @contextlib.asynccontextmanager
    async def client(self, email: str | None = None):
        """An HTTP client of the gateway, signed in (a new account unless ``email`` is given)."""
        email = email or f"faults-{uuid.uuid4().hex[:8]}@tests.invalid"
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=60, trust_env=False) as client:
            await sign_up(client, email)
            yield client

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)


# -- runs ---------------------------------------------------------------------------------------
def experiment(model: str, *, pairs: int = 12, evals: int = 4, epochs: int = 2, name: str = "fault test",
               max_new_tokens: int = 8, methods: tuple[str, ...] = ("tracin",)) -> dict:
    return {
        "name": name,
        "model_id": model,
        "training_data": [{"question": f"What is item {i}?", "answer": f"Item {i} is number {i}."}
                          for i in range(pairs)],
        "eval_data": [{"question": f"Which is item {i}?", "answer": f"Item {i}."} for i in range(evals)],
        "hyperparams": {"learning_rate": 0.01, "num_epochs": epochs, "batch_size": 2, "lora_rank": 4,
                        "lora_alpha": 8, "max_seq_length": 64, "seed": 0, "checkpoint_interval": 1},
        "influence_methods": list(methods),
        "few_shot_k": 2,
        "max_new_tokens": max_new_tokens,
        "predictions": {"enabled": False},
    }


async def submit(client: httpx.AsyncClient, spec: dict) -> uuid.UUID:
    created = await client.post("/api/experiments", json=spec)
    assert created.status_code == 201, created.text
    started = await client.post(f"/api/experiments/{created.json()['id']}/runs",
                                headers={"Idempotency-Key": uuid.uuid4().hex})
    assert started.status_code == 202, started.text
    return uuid.UUID(started.json()["run_id"])


class EventWatch:
    """The run's events as NATS delivers them (operator credential, core subscription):
    ``first(stage, kind)`` returns when one has been seen, and ``on`` runs a callback as
    soon as an event matches (for a kill that must land mid-stage)."""

    def __init__(self, nc, subjects: Subjects, run_id: uuid.UUID) -> None:
        self.nc, self.subjects, self.run_id = nc, subjects, run_id
        self.events: list[tuple[str, str, dict]] = []
        self._changed = asyncio.Event()
        self._hooks: list[tuple[str, str, Callable[[dict], None]]] = []
        self.sub = None

    async def start(self) -> EventWatch:
        async def on_msg(msg) -> None:
            parsed = self.subjects.parse_event_subject(msg.subject)
            if parsed is None:
                return
            _, stage, kind = parsed
            payload = json.loads(msg.data)
            for hook in list(self._hooks):
                if hook[0] == stage and hook[1] == kind:
                    self._hooks.remove(hook)
                    hook[2](payload)
            self.events.append((stage, kind, payload))
            self._changed.set()

        self.sub = await self.nc.subscribe(self.subjects.event(self.run_id, "*", "*"), cb=on_msg)
        return self

    def on(self, stage: str, kind: str, callback: Callable[[dict], None]) -> None:
        self._hooks.append((stage, kind, callback))

    def seen(self, stage: str, kind: str, **where: Any) -> list[dict]:
        return [p for s, k, p in self.events if s == stage and k == kind
                and all(p.get(key) == value for key, value in where.items())]

    async def first(self, stage: str, kind: str, timeout: float, **where: Any) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                found = self.seen(stage, kind, **where)
                if found:
                    return found[0]
                await self._changed.wait()


async def run_row(stack: FaultStack, run_id: uuid.UUID) -> asyncpg.Record | None:
    conn = await stack.db()
    try:
        return await conn.fetchrow("SELECT status, stages, error, stage_errors FROM runs WHERE id = $1", run_id)
    finally:
        await conn.close()


async def wait_run_ended(stack: FaultStack, run_id: uuid.UUID, timeout: float = 240) -> asyncpg.Record:
    """The run's row once its status is terminal (polled in Postgres; a database outage
    only delays the answer)."""
    row = None

    async def ended() -> bool:
        nonlocal row
        try:
            row = await run_row(stack, run_id)
        except (OSError, asyncpg.PostgresError):
            return False
        return row is not None and row["status"] in ("completed", "failed", "cancelled")

    try:
        await until(ended, f"run {run_id} to end", timeout)
    except AssertionError as exc:
        logs = "\n".join(f"== {n}\n{stack.log_tail(n, 15)}" for n in stack.services)
        raise AssertionError(f"{exc}; last seen {dict(row) if row else None}\n{logs}") from None
    return row


# -- what every fault test asserts ------------------------------------------------------------------
async def read_sse(client: httpx.AsyncClient, run_id: uuid.UUID, last_event_id: int | None = None,
                   stop_after: int | None = None) -> list[int]:
    """The ids of the run's SSE stream until the server ends it (or after ``stop_after`` events)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    ids: list[int] = []
    async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers,
                             timeout=httpx.Timeout(120, read=120)) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                ids.append(int(line[3:].strip()))
                if stop_after is not None and len(ids) >= stop_after:
                    break
    return ids


async def follow_sse(client: httpx.AsyncClient, run_id: uuid.UUID, ids: list[int],
                     last_event_id: int | None = None) -> bool:
    """Append the ids of the run's SSE stream to ``ids`` until the server ends the stream
    (True) or the connection breaks (False: the gateway went away)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    try:
        async with client.stream("GET", f"/api/runs/{run_id}/events", headers=headers,
                                 timeout=httpx.Timeout(120, read=120)) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    ids.append(int(line[3:].strip()))
    except httpx.TransportError:
        return False
    return True


async def assert_run_complete(stack: FaultStack, client: httpx.AsyncClient, run_id: uuid.UUID, spec: dict,
                              sse_ids: list[int] | None = None) -> dict:
    """The run completed once, its results in Postgres are complete and unduplicated, and
    the SSE replay (``sse_ids`` if the test followed it, else a fresh replay) holds every
    stored event in order. Returns counts for the test's own assertions."""
    conn = await stack.db()
    try:
        run = await conn.fetchrow("SELECT status, stages, error FROM runs WHERE id = $1", run_id)
        assert run["status"] == "completed" and run["error"] is None, dict(run)
        stages = json.loads(run["stages"])
        methods = spec["influence_methods"]
        assert stages == {"train": "completed", "inference": "completed",
                          **{f"influence.{m}": "completed" for m in methods}}, stages
        hp = spec["hyperparams"]
        steps = hp["num_epochs"] * -(-len(spec["training_data"]) // hp["batch_size"])
        metric_steps = [r[0] for r in await conn.fetch("SELECT step FROM metrics WHERE run_id = $1 ORDER BY step",
                                                       run_id)]
        assert metric_steps == list(range(1, steps + 1)), metric_steps
        checkpoints = await conn.fetchval("SELECT count(*) FROM checkpoints WHERE run_id = $1", run_id)
        assert checkpoints == hp["num_epochs"]
        answers = await conn.fetch("SELECT base, few_shot, fine_tuned FROM generations WHERE run_id = $1", run_id)
        assert len(answers) == len(spec["eval_data"]) and all(a["fine_tuned"] is not None for a in answers)
        influence = await conn.fetch("SELECT method, variant FROM influence_results WHERE run_id = $1", run_id)
        assert {r["method"] for r in influence} == set(methods), influence
        run_statuses = [r[0] for r in await conn.fetch(
            "SELECT payload->>'status' FROM run_events WHERE run_id = $1 AND stage = 'run' AND kind = 'status' "
            "ORDER BY id", run_id)]
        assert run_statuses.count("completed") == 1 and run_statuses[-1] == "completed", run_statuses
        stage_done = await conn.fetch(
            "SELECT stage, method, count(*) FROM run_events WHERE run_id = $1 AND kind = 'status' "
            "AND payload->>'status' = 'completed' AND stage <> 'run' GROUP BY stage, method", run_id)
        assert all(r["count"] == 1 for r in stage_done) and len(stage_done) == 2 + len(methods), stage_done
        stored = [r[0] for r in await conn.fetch("SELECT id FROM run_events WHERE run_id = $1 ORDER BY id", run_id)]
    finally:
        await conn.close()
    replay = sse_ids if sse_ids is not None else await read_sse(client, run_id)
    assert replay == stored, (len(replay), len(stored))
    return {"events": len(stored), "steps": steps}
