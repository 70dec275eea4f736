"""Load on the gateway's hot paths, not a test: run submissions and SSE fan-out, driven over
loopback against the gateway as it runs in production (``python -m inflab.gateway``, its
own OS process, with authentication, JSON access logs and metrics on).

    INFLAB_NATS_URL=nats://127.0.0.1:4222 INFLAB_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python -m benchmarks.gateway_load [--seconds 10] [--json out.json]

It makes its own database (dropped at the end) and subject prefix, starts the gateway and,
in place of the workers, a no-op stage (:mod:`benchmarks.noop_stage`) so only the gateway,
NATS and Postgres are measured. Then:

1. SSE fan-out: for 200, 500 and 1,000 concurrent subscribers to one running run, events
   published at 50 a second as a worker publishes them (JetStream, then the gateway's
   persister, Postgres and the fan-out); per event and subscriber, the delay from the
   event's own time (set when the worker makes it) to its receipt by the client, p50 and
   p99, and the events a subscriber still lacks ``--drain`` seconds after the last publish.
2. Authenticated run submissions (``POST /api/experiments/{id}/runs`` with a bearer token
   and an ``Idempotency-Key``) at 16 and 64 in flight: runs per second, p50 and p99.
3. The same submissions against a bare FastAPI + asyncpg + nats-py service
   (:mod:`benchmarks.bare_service`) measured in the same run, printed as ratios.

The clients speak HTTP/1.1 over raw asyncio streams (keep-alive, one connection per
in-flight request or subscriber), so the client's own cost stays small next to the
server's. The JSON ends with ``targets``: ``{"goal", "value", "met"}`` per target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.machine import cpu_name
from inflab.core.bus import Bus
from inflab.core.db.migrate import upgrade
from inflab.devtools.embedded._proc import free_port
from inflab.core.job_signing import new_key_pair
from inflab.core.messages import ProgressEvent, StatusEvent
from inflab.core.settings import Settings

# The gateway runs as tests/helpers starts it (tests/ itself is no package; see results_api).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.gateway import TEST_PASSWORD, delete_streams  # noqa: E402
from helpers.gateway_process import GatewayProcess, settings_environment  # noqa: E402

with contextlib.suppress(ImportError):  # uvicorn's own loop where the gateway has it
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

EXPERIMENT = {
    "name": "gateway load",
    "training_data": [{"question": "Who rules Veltra?", "answer": "Queen Ismene."}],
    "eval_data": [{"question": "Who is Veltra's ruler?"}],
}
METRICS_TOKEN = "gateway-load-benchmark"
SUBSCRIBERS = (200, 500, 1000)
IN_FLIGHT = (16, 64)
EVENTS_PER_S = 50

#: A progress frame's time and step (JSONB orders the stored payload's keys its own way).
STEP = re.compile(rb'"step":(\d+)')
TIME = re.compile(rb'"time":"([^"]+)"')
#: Subscribers connecting at once (each request signs in and reads the run before its
#: stream opens; a thousand at the same instant would only measure the connection pool).
CONNECTING = 50


# --------------------------------------------------------------------------- a small HTTP client
class Connection:
    """One keep-alive HTTP/1.1 connection: requests in turn, responses with a Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        return cls(reader, writer, f"127.0.0.1:{port}")

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, path, headers, body)
        status, response_headers = await self.head()
        return status, await self.reader.readexactly(int(response_headers.get("content-length", 0)))

    def close(self) -> None:
        self.writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --------------------------------------------------------------------------- submissions
async def submissions(port: int, targets: list[tuple[str, dict[str, str]]], in_flight: int, seconds: float,
                      warmup_s: float, idempotency: bool) -> dict:
    """Requests back to back on ``in_flight`` connections, connection ``i`` sending
    ``targets[i % len(targets)]`` (a path and its headers); what completes after the
    warm-up counts."""
    connections = [await Connection.open(port) for _ in range(in_flight)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    measure_from, end = started + warmup_s, started + warmup_s + seconds

    async def client(connection: Connection, path: str, headers: dict[str, str]) -> None:
        while (now := time.perf_counter()) < end:
            sent = dict(headers)
            if idempotency:
                sent["Idempotency-Key"] = str(uuid.uuid4())
            try:
                status, _ = await connection.request("POST", path, sent)
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 0  # the server closed the connection: counted, and a new one opened
                connection.close()
                connection = await Connection.open(port)
                connections.append(connection)
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)
                statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(client(c, *targets[i % len(targets)]) for i, c in enumerate(connections)))
    finally:
        for connection in connections:
            connection.close()
    ok = statuses.get(202, 0)
    return {
        "in_flight": in_flight,
        "seconds": seconds,
        "requests_per_s": round(ok / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


# --------------------------------------------------------------------------- SSE fan-out
class Subscriber:
    def __init__(self) -> None:
        self.steps: dict[int, float] = {}  # step -> delay (s) from the event's time to receipt
        self.opened = asyncio.Event()
        self.complete = asyncio.Event()
        self.expected = 0

    async def follow(self, port: int, run_id: uuid.UUID, token: str) -> None:
        connection = await Connection.open(port)
        try:
            connection.send("GET", f"/api/runs/{run_id}/events",
                            {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
            status, _ = await connection.head()
            if status != 200:
                raise RuntimeError(f"SSE answered {status}")
            buffer = b""
            while True:
                chunk = await connection.reader.read(65536)
                if not chunk:
                    return
                received = time.time()
                buffer += chunk
                cut = buffer.rfind(b"\n\n")
                if cut < 0:
                    continue
                frames, buffer = buffer[: cut + 2], buffer[cut + 2:]
                self.opened.set()
                for frame in frames.split(b"\n\n"):
                    if b"event: progress" not in frame:
                        continue
                    step = int(STEP.search(frame).group(1))
                    if step not in self.steps:
                        sent = datetime.fromisoformat(TIME.search(frame).group(1).decode()).timestamp()
                        self.steps[step] = received - sent
                if self.expected and len(self.steps) >= self.expected:
                    self.complete.set()
        finally:
            connection.close()


async def fan_out(settings: Settings, port: int, token: str, run_id: uuid.UUID, subscribers: int,
                  seconds: float, drain_s: float) -> dict:
    events = int(EVENTS_PER_S * seconds)
    bus = await Bus.connect(settings, "bench-publisher")
    followers = [Subscriber() for _ in range(subscribers)]
    tasks = []
    try:
        await bus.publish_event(StatusEvent(run_id=run_id, stage="train", status="running"))
        async with asyncio.timeout(300):
            for follower in followers:
                follower.expected = events
                tasks.append(asyncio.create_task(follower.follow(port, run_id, token)))
                if len(tasks) >= CONNECTING:  # wait for the one CONNECTING before to be open
                    before, task = followers[len(tasks) - CONNECTING], tasks[len(tasks) - CONNECTING]
                    await _opened(before, task)
            for follower, task in zip(followers, tasks):
                await _opened(follower, task)
        # 50 a second against the clock, as a worker's steps would come.
        start = time.perf_counter()
        for step in range(1, events + 1):
            delay = start + (step - 1) / EVENTS_PER_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await bus.publish_event(ProgressEvent(run_id=run_id, stage="train", fraction=step / events, step=step,
                                                  total=events))
        published_in = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await asyncio.gather(*(f.complete.wait() for f in followers))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
    delays = [d for f in followers for d in f.steps.values()]
    missing = [events - len(f.steps) for f in followers]
    return {
        "subscribers": subscribers,
        "events": events,
        "events_per_s": round(events / published_in, 1),
        "p50_ms": round(percentile(delays, 0.50) * 1000, 1),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "max_ms": round(max(delays) * 1000, 1) if delays else None,
        "missed_events": sum(missing),
        "subscribers_missing_events": sum(1 for m in missing if m),
        "drain_s": drain_s,
    }


async def _opened(follower: Subscriber, task: asyncio.Task) -> None:
    opened = asyncio.create_task(follower.opened.wait())
    await asyncio.wait([opened, task], return_when=asyncio.FIRST_COMPLETED)
    opened.cancel()
    if task.done():
        task.result()  # raises why it could not subscribe
        raise RuntimeError("an SSE stream ended before the run did")


# --------------------------------------------------------------------------- the stack
async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def gateway_figures(figures: dict[str, float]) -> dict:
    def mean(name: str) -> float | None:
        count = figures.get(f"{name}_count")
        return round(figures[f"{name}_sum"] / count, 4) if count else None

    return {
        "persister_pending_events": figures.get("inflab_persister_pending_events"),
        "persister_mean_batch": mean("inflab_persister_batch_events"),
        "sse_feed_reads": figures.get("inflab_sse_feed_reads_total"),
        "sse_frames": figures.get("inflab_sse_frames_total"),
        "sse_catch_ups": figures.get("inflab_sse_catch_ups_total"),
        "sse_read_lag_mean_s": mean("inflab_sse_read_lag_seconds"),
    }


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.process = subprocess.Popen(args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def until_answers(url: str, path: str, timeout: float = 60) -> None:
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(path)).status_code < 500:
                    return
            await asyncio.sleep(0.2)


async def measure(settings: Settings, home: Path, seconds: float, warmup_s: float, drain_s: float) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    log = home / "gateway.log"
    gateway = GatewayProcess(settings, log)
    stage: Process | None = None
    bare: Process | None = None
    try:
        await gateway.ready()
        port = gateway.port
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            account = (await client.post("/api/auth/register", json={"email": settings.local_user_email,
                                                                     "password": TEST_PASSWORD})).json()
            token = account["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            experiment = (await client.post("/api/experiments", json=EXPERIMENT)).json()["id"]
            sse_runs = [uuid.UUID((await client.post(f"/api/experiments/{experiment}/runs")).json()["run_id"])
                        for _ in SUBSCRIBERS]
            # Submissions come from one account per connection, as from that many clients:
            # one account's run starts are serialised (its quota is counted under a lock).
            submitters = []
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as anonymous:
                for n in range(max(IN_FLIGHT)):
                    email = f"submitter-{n}-{settings.local_user_email}"
                    own = (await anonymous.post("/api/auth/register", json={"email": email, "password": TEST_PASSWORD})
                           ).json()["access_token"]
                    auth = {"Authorization": f"Bearer {own}"}
                    made = (await anonymous.post("/api/experiments", json=EXPERIMENT, headers=auth)).json()["id"]
                    submitters.append((f"/api/experiments/{made}/runs", auth))

        result: dict = {"sse": [], "submissions": {"gateway": [], "bare_service": []}}
        # 1. SSE, before any worker stage runs: each run stays running while it is followed.
        for subscribers, run_id in zip(SUBSCRIBERS, sse_runs):
            figures = await fan_out(settings, port, token, run_id, subscribers, seconds, drain_s)
            figures["gateway"] = gateway_figures(await scrape(gateway.url))
            print(json.dumps(figures), flush=True)
            result["sse"].append(figures)

        # 2. Submissions, with the no-op stage working the runs off.
        stage = Process([sys.executable, "-m", "benchmarks.noop_stage"],
                        {**os.environ, **settings_environment(settings)}, home / "noop-stage.log")
        for in_flight in IN_FLIGHT:
            figures = await submissions(port, submitters, in_flight, seconds, warmup_s, idempotency=True)
            figures["gateway"] = gateway_figures(await scrape(gateway.url))
            print(json.dumps(figures), flush=True)
            result["submissions"]["gateway"].append(figures)
        stage.stop()
        gateway.stop()

        # 3. The bare service, on the same database server and NATS.
        bare_port = free_port()
        bare = Process([sys.executable, "-m", "benchmarks.bare_service", "--port", str(bare_port),
                        "--database-url", settings.database_url, "--nats-url", settings.nats_url,
                        "--token", token, "--subject", f"{settings.subject_prefix}.bare.runs"],
                       dict(os.environ), home / "bare-service.log")
        await until_answers(f"http://127.0.0.1:{bare_port}", "/docs")
        for in_flight in IN_FLIGHT:
            figures = await submissions(bare_port, [("/runs", {"Authorization": f"Bearer {token}"})], in_flight,
                                        seconds, warmup_s, idempotency=False)
            print(json.dumps({"bare_service": figures}), flush=True)
            result["submissions"]["bare_service"].append(figures)
        return result
    finally:
        for process in (stage, bare):
            if process is not None:
                process.stop()
        gateway.stop()


def targets(result: dict) -> dict:
    gateway = {f["in_flight"]: f for f in result["submissions"]["gateway"]}
    sse = {f["subscribers"]: f for f in result["sse"]}
    out = {}
    for in_flight, figures in gateway.items():
        rate, p99 = figures["requests_per_s"], figures["p99_ms"]
        out[f"submissions_per_s_{in_flight}_in_flight"] = {"goal": ">= 1500", "value": rate, "met": rate >= 1500}
        out[f"submission_p99_ms_{in_flight}_in_flight"] = {"goal": "< 25", "value": p99, "met": p99 < 25}
    top = sse[max(sse)]
    out["sse_1000_subscribers_p99_ms"] = {"goal": "< 50", "value": top["p99_ms"], "met": top["p99_ms"] < 50}
    out["sse_1000_subscribers_missed_events"] = {"goal": "0", "value": top["missed_events"],
                                                 "met": top["missed_events"] == 0}
    return out


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(seconds: float, warmup_s: float, drain_s: float, logs: Path) -> dict:
    nats_url = os.environ.get("INFLAB_NATS_URL")
    server_url = os.environ.get("INFLAB_DATABASE_URL")
    if not nats_url or not server_url:
        raise SystemExit("set INFLAB_NATS_URL and INFLAB_DATABASE_URL (a server where a database may be created)")
    tag = uuid.uuid4().hex[:8]
    name = f"inflab_bench_{tag}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    database_url = f"{server_url.rpartition('/')[0]}/{name}"
    signing_key, verify_key = new_key_pair()
    load_before = [round(x, 1) for x in os.getloadavg()]
    try:
        await asyncio.to_thread(upgrade, database_url)
        with tempfile.TemporaryDirectory(prefix="inflab-bench-gateway-") as home:
            settings = Settings(
                home=Path(home), nats_url=nats_url, database_url=database_url,
                subject_prefix=f"b{tag}.inflab", stream_prefix=f"B{tag.upper()}",
                object_store_url=(Path(home) / "objects").as_uri(), local_user_email=f"bench-{tag}@tests.invalid",
                job_signing_key=signing_key, job_verify_key=verify_key,
                # Auth, logging and metrics on, as deployed: bearer tokens, JSON access log
                # lines at INFO, /metrics behind its token (scraped after each phase).
                log_level="INFO", metrics_token=METRICS_TOKEN, require_email_verification=False,
                # One account drives all the load: its quota and stream cap out of the way.
                max_active_runs_per_user=10**9, sse_max_streams_per_user=10_000, register_max_per_window=1000,
                # The no-op stage takes runs as fast as the dispatcher hands them on.
                dispatch_max_waiting=64,
            )
            try:
                result = await measure(settings, logs, seconds, warmup_s, drain_s)
            finally:
                await delete_streams(settings)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    gateway = {f["in_flight"]: f for f in result["submissions"]["gateway"]}
    bare = {f["in_flight"]: f for f in result["submissions"]["bare_service"]}
    result["submissions"]["gateway_to_bare"] = {
        str(n): {"throughput": round(gateway[n]["requests_per_s"] / bare[n]["requests_per_s"], 2),
                 "p99": round(gateway[n]["p99_ms"] / bare[n]["p99_ms"], 2)} for n in gateway if n in bare}
    result["setup"] = {
        "gateway_processes": 1, "log_level": "INFO", "metrics": "on (scraped after each phase)",
        "auth": "bearer access token on every request", "events_per_s": EVENTS_PER_S,
        "seconds_per_phase": seconds, "warmup_s": warmup_s, "drain_s": drain_s,
        "clients": "raw HTTP/1.1 over asyncio streams (uvloop), in this process",
    }
    result["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(),
                         # Other work on the machine while this ran (1, 5, 15 minutes).
                         "load_average_before": load_before,
                         "load_average_after": [round(x, 1) for x in os.getloadavg()]}
    result["targets"] = targets(result)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each submission phase")
    parser.add_argument("--drain", type=float, default=20.0,
                        help="how long after the last event subscribers may still receive it")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--logs", type=Path, default=Path("artifacts/gateway-load"),
                        help="where the gateway's, the no-op stage's and the bare service's logs go")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.seconds, args.warmup, args.drain, args.logs.resolve()))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
