"""The embedded stack for real: NATS, PostgreSQL, migrations and Ray from packages, plus
stand-in services (the supervisor is what is under test, not the services), and nothing
left running afterwards, whether it is stopped in order, by Ctrl-C or by SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from typer.testing import CliRunner

from inflab.devtools import cli
from inflab.devtools.embedded._proc import free_port, port_open
from inflab.devtools.embedded.ray import short_temp_dir
from inflab.devtools.embedded.environment import ServiceSpec, default_services
from inflab.devtools.embedded.state import read_state
from inflab.devtools.embedded.supervisor import Stack
from inflab.core.settings import Settings

pytestmark = pytest.mark.integration

GATEWAY = r"""
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/healthz", "/readyz") else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
address = (os.environ["INFLAB_GATEWAY_HOST"], int(os.environ["INFLAB_GATEWAY_PORT"]))
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
"""
#: Joins the stack's Ray, runs a task, and reports what it and the task saw.
TRAINER = r"""
import json, os, pathlib, threading, ray
ray.init(address=os.environ["INFLAB_RAY_ADDRESS"], logging_level="WARNING")

@ray.remote(num_cpus=1)
def in_a_worker():
    return {"pid": os.getpid(), "object_store": os.environ.get("INFLAB_OBJECT_STORE_URL"),
            "nats": os.environ.get("INFLAB_NATS_URL"), "signing_key": os.environ.get("INFLAB_JOB_SIGNING_KEY")}

keys = ["INFLAB_NATS_URL", "INFLAB_DATABASE_URL", "INFLAB_RAY_ADDRESS", "INFLAB_HOME",
        "INFLAB_OBJECT_STORE_URL", "OMP_NUM_THREADS", "RAY_USAGE_STATS_ENABLED",
        "INFLAB_JOB_SIGNING_KEY", "INFLAB_JOB_VERIFY_KEY"]
report = {k: os.environ.get(k) for k in keys}
report["worker"] = ray.get(in_a_worker.remote())
path = pathlib.Path(os.environ["INFLAB_HOME"]) / "trainer-saw.json"
path.with_suffix(".tmp").write_text(json.dumps(report))
path.with_suffix(".tmp").rename(path)
threading.Event().wait()
"""
#: Crashes on its first start only.
FLAKY = r"""
import os, pathlib, sys, threading
flag = pathlib.Path(os.environ["INFLAB_HOME"]) / "influence-crashed-once"
if not flag.exists():
    flag.touch()
    sys.exit(5)
threading.Event().wait()
"""
IDLE = "import threading; threading.Event().wait()"


def stand_ins(settings: Settings, **code_by_name: str) -> list[ServiceSpec]:
    return [
        ServiceSpec(s.name, (sys.executable, "-c", code_by_name.get(s.name, IDLE)), s.url, s.ready_path, s.health_path)
        for s in default_services(settings)
    ]


def embedded_settings(home: Path, **overrides) -> Settings:
    """Everything embedded (whatever INFLAB_* the environment sets), on free ports."""
    values = dict(
        home=home, nats_url="", database_url="", ray_address="", object_store_url="",
        gateway_port=free_port(), embedded_nats_port=0, embedded_postgres_port=0, train_num_cpus=1,
    )
    return Settings(**(values | overrides))


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def tree(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def still_running(procs: list[psutil.Process]) -> list[str]:
    alive = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def mentioning(text: str) -> list[str]:
    """Any process on the machine whose command line mentions ``text`` (escapees included)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline and proc.pid != os.getpid():
            with_status = proc.status() if proc.is_running() else "gone"
            if with_status != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {cmdline[:120]}")
    return found


async def test_stack_starts_everything_and_stops_without_orphans(tmp_path):
    import asyncpg
    import nats

    settings = embedded_settings(tmp_path / "home")
    specs = stand_ins(settings, gateway=GATEWAY, trainer=TRAINER, influence=FLAKY)
    async with Stack(settings, specs, restart_backoff_s=0.1) as stack:
        await stack.wait_ready(timeout=180)
        resolved = stack.settings
        assert resolved.nats_url.startswith("nats://127.0.0.1:")
        assert resolved.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert resolved.database_url.endswith("/inflab")
        assert resolved.ray_address

        # The children got the resolved settings; Ray's workers too.
        report_path = settings.home / "trainer-saw.json"
        await until(report_path.exists, 120, "the trainer stand-in to run a Ray task")
        saw = json.loads(report_path.read_text())
        # Each service connects to NATS as its own role; only the gateway can sign jobs.
        assert saw["INFLAB_NATS_URL"] == stack.nats_urls["trainer"] != resolved.nats_url
        assert saw["INFLAB_NATS_URL"].startswith("nats://trainer:")
        assert not saw["INFLAB_JOB_SIGNING_KEY"] and saw["INFLAB_JOB_VERIFY_KEY"]
        # Ray's workers (user-chosen models and data) get no credential and no key.
        assert saw["worker"]["nats"] == resolved.nats_url and "@" not in resolved.nats_url
        assert not saw["worker"]["signing_key"]
        assert saw["INFLAB_DATABASE_URL"] == resolved.database_url
        assert saw["INFLAB_RAY_ADDRESS"] == resolved.ray_address
        assert saw["INFLAB_HOME"] == str(settings.home)
        assert saw["OMP_NUM_THREADS"] == "1" and saw["RAY_USAGE_STATS_ENABLED"] == "0"
        assert saw["worker"]["object_store"] == resolved.object_store_url == settings.objects_url

        # The migrations ran on the embedded database; JetStream answers on the embedded NATS.
        conn = await asyncpg.connect(resolved.database_url)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        # NATS runs with authentication on: a client without credentials is refused; the
        # operator's credential (a 0600 file that stack.json names) gets in.
        with pytest.raises(Exception, match="(?i)authorization violation"):
            await nats.connect(resolved.nats_url, allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=3)
        state = read_state(stack.state_path)
        credentials = {role: Path(path) for role, path in state["nats_credentials"].items()}
        assert set(credentials) == {"gateway", "trainer", "inference", "influence", "pipeline", "operator"}
        secrets = [*credentials.values(), *(stack.credentials.folder.glob("*.key")),
                   stack.credentials.authorization_file]
        assert len(secrets) == 9 and all(f.stat().st_mode & 0o777 == 0o600 for f in secrets)
        assert stack.credentials.folder.stat().st_mode & 0o777 == 0o700
        nc = await nats.connect(credentials["operator"].read_text().strip())
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()
        shown = CliRunner().invoke(cli.app, ["ps"], env={"INFLAB_HOME": str(settings.home)}).output
        assert f"NATS pipeline credential: {credentials['pipeline']}" in shown.replace("\n", "")
        assert str(credentials["operator"]) in shown.replace("\n", "") and str(credentials["trainer"]) not in shown

        # The service that crashed once was reported and restarted.
        influence = next(c for c in stack.components if c.name == "influence")
        await until(lambda: influence.restarts == 1 and influence.alive(), 30, "influence to be restarted")

        state = read_state(stack.state_path)
        assert [c.name for c in state["components"]] == [
            "nats", "postgres", "ray", "gateway", "trainer", "inference", "influence",
        ]
        assert all(c.alive() and Path(c.log).exists() for c in state["components"])

        procs = tree(stack.all_pids())
        names = {p.name() for p in procs}
        assert {"nats-server", "postgres", "raylet", "gcs_server"} <= names, names
        ray_temp = str(stack.server("ray").temp_dir)
        ports = [urlsplit(u).port for u in (resolved.nats_url, resolved.database_url, stack.gateway_url)]

    assert still_running(procs) == []
    assert mentioning(ray_temp) == []  # nothing of this Ray escaped the tree
    shutil.rmtree(ray_temp, ignore_errors=True)
    assert not any(port_open("127.0.0.1", port) for port in ports)
    state = read_state(stack.state_path)
    assert state["status"] == "stopped"
    assert {c.status for c in state["components"]} == {"stopped"}


async def test_up_stops_everything_on_ctrl_c(tmp_path, monkeypatch, nats_url, database_url):
    """``inflab up`` against given servers: ready, then SIGINT stops every child."""
    from inflab.devtools import cli
    from inflab.devtools.embedded import supervisor

    settings = Settings(
        home=tmp_path / "home", nats_url=nats_url, database_url=database_url,
        ray_address="127.0.0.1:1",  # given, so none is started; the stand-ins never use it
        gateway_port=free_port(),
    )
    monkeypatch.setattr(supervisor, "default_services", lambda s: stand_ins(s, gateway=GATEWAY))

    async def press_ctrl_c_when_up() -> list[psutil.Process]:
        path = settings.home / "stack.json"

        def up() -> bool:
            state = read_state(path)
            return bool(state) and sum(c.kind == "service" and c.alive() for c in state["components"]) == 4

        await until(up, 60, "the stack to come up")
        procs = tree([c.pid for c in read_state(path)["components"] if c.pid])
        os.kill(os.getpid(), signal.SIGINT)
        return procs

    presser = asyncio.create_task(press_ctrl_c_when_up())
    code = await cli._up(settings, ready_timeout=60)
    procs = await presser
    assert code in (0, cli.EXIT_INTERRUPTED)
    assert len(procs) == 4 and still_running(procs) == []
    assert read_state(settings.home / "stack.json")["status"] == "stopped"


SUPERVISOR = r"""
import asyncio, json, pathlib, sys
from inflab.devtools.embedded.environment import ServiceSpec
from inflab.devtools.embedded.supervisor import Stack
from inflab.core.settings import Settings

async def main():
    settings = Settings.model_validate_json(sys.argv[1])
    specs = [ServiceSpec(**s) for s in json.loads(sys.argv[2])]
    async with Stack(settings, specs) as stack:
        await stack.wait_ready(timeout=180)
        print(json.dumps(stack.all_pids()), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_killed_supervisor_takes_its_stack_with_it(tmp_path):
    """SIGKILL gives the supervisor no chance to stop anything: the kernel's parent-death
    signal must, and a new stack on the same home must find nothing left to stop."""
    settings = embedded_settings(tmp_path / "home")
    specs = [
        {"name": s.name, "argv": list(s.argv), "url": s.url, "ready_path": s.ready_path, "health_path": s.health_path}
        for s in stand_ins(settings, gateway=GATEWAY)
    ]
    ray_temp = short_temp_dir(str((settings.home / "logs" / "ray.log").resolve()))
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, settings.model_dump_json(), json.dumps(specs)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = supervisor.stdout.readline()
        assert line, "the supervisor did not come up"
        procs = tree(json.loads(line))
        assert {"nats-server", "postgres", "raylet"} <= {p.name() for p in procs}
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 60
        while still_running(procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(procs) == []
        assert mentioning(str(ray_temp)) == []
    finally:
        supervisor.kill()
        supervisor.wait()
        shutil.rmtree(ray_temp, ignore_errors=True)
