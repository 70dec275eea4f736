"""The supervisor restarting a real service: the stack runs the real influence worker
(``python -m inflab.influence``, as ``inflab up`` starts it) on the run's NATS and Postgres
with its own Ray; SIGKILLing the worker's process is seen in ``stack.json`` and
``inflab ps`` (restarts, last exit reason), and a new worker process takes its place,
serving its metrics on the same port."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from inflab.devtools import cli
from inflab.devtools.embedded._proc import free_port
from inflab.devtools.embedded.environment import ServiceSpec, default_services
from inflab.devtools.embedded.state import read_state
from inflab.devtools.embedded.supervisor import Stack

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
IDLE = "import threading; threading.Event().wait()"


def real_influence_worker(settings) -> list[ServiceSpec]:
    """The real influence worker; stand-ins for the rest (they are not under test)."""
    specs = []
    for spec in default_services(settings):
        if spec.name == "influence":
            specs.append(spec)
        else:
            code = GATEWAY if spec.name == "gateway" else IDLE
            specs.append(ServiceSpec(spec.name, (sys.executable, "-c", code), spec.url, spec.ready_path,
                                     spec.health_path))
    return specs


def component(stack: Stack, name: str):
    return next(c for c in read_state(stack.state_path)["components"] if c.name == name)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def scraped(url: str, timeout: float = 60.0) -> str:
    """The metrics text once the port answers (the worker opens it once it has joined Ray)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        while True:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return response.text
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered"
            await asyncio.sleep(0.1)


def consuming(stack: Stack, pid: int) -> bool:
    """The worker process ``pid`` has said it consumes its request subject."""
    log = component(stack, "influence").log
    text = open(log, encoding="utf-8", errors="replace").read()
    return psutil.pid_exists(pid) and text.count("influence consuming") >= len(
        [line for line in text.splitlines() if line.startswith("--- ") and "starting" in line])


async def test_a_killed_real_worker_is_restarted_and_reported(settings, tmp_path):
    s = settings.model_copy(update={"home": tmp_path / "home", "gateway_port": free_port(), "ray_address": ""})
    stack = Stack(s, real_influence_worker(s), migrate=False, restart_backoff_s=0.1)
    ray_temp = None
    try:
        async with stack:
            await stack.wait_ready(timeout=240)
            ray_temp = stack.server("ray").temp_dir
            first = stack.service_pids()["influence"]
            await until(lambda: consuming(stack, first), 240, "the influence worker to start consuming")

            # Its metrics port, shown in inflab ps, answers.
            metrics_url = component(stack, "influence").metrics_url
            assert metrics_url and metrics_url == stack.metrics_url("influence")
            assert "inflab_worker_jobs_total" in await scraped(metrics_url)

            os.kill(first, signal.SIGKILL)
            await until(lambda: component(stack, "influence").restarts == 1, 60, "the supervisor to restart it")
            restarted = component(stack, "influence")
            assert restarted.pid != first and restarted.alive()
            assert restarted.last_exit == "SIGKILL" and not restarted.crash_loop
            assert not stack.failed.is_set() and read_state(stack.state_path)["status"] == "running"
            await until(lambda: consuming(stack, restarted.pid), 240, "the new worker process to consume")

            shown = CliRunner().invoke(cli.app, ["ps"], env={"INFLAB_HOME": str(s.home), "COLUMNS": "250"}).output
            row = next(line for line in shown.splitlines() if "influence" in line and str(restarted.pid) in line)
            assert "alive" in row and "SIGKILL" in row and " 1 " in row and metrics_url in row
            # The new process serves its metrics on the same port.
            assert "inflab_worker_jobs_total" in await scraped(metrics_url)
            shown = CliRunner().invoke(cli.app, ["ps"], env={"INFLAB_HOME": str(s.home), "COLUMNS": "250"}).output
            assert f"influence metrics ({metrics_url}): 200" in shown
    finally:
        if ray_temp:
            shutil.rmtree(ray_temp, ignore_errors=True)


CRASH = "import sys; print('stand-in crashing', flush=True); sys.exit(3)"


async def test_inflab_up_keeps_the_stack_up_through_a_crash_loop(tmp_path, monkeypatch, capsys, caplog, nats_url,
                                                                  database_url):
    """``inflab up`` (its default restart policy) with a worker that crashes at every start:
    the stack comes up and stays up, the crash loop is printed and shown by ``inflab ps``,
    and only Ctrl-C stops it."""
    caplog.set_level(logging.INFO, logger="inflab.stack")
    from inflab.devtools.embedded import supervisor
    from inflab.core.settings import Settings

    settings = Settings(
        home=tmp_path / "home", nats_url=nats_url, database_url=database_url,
        ray_address="127.0.0.1:1",  # given, so none is started; the stand-ins never use it
        gateway_port=free_port(),
    )

    def stand_ins(s):
        codes = {"gateway": GATEWAY, "inference": CRASH}
        return [ServiceSpec(spec.name, (sys.executable, "-c", codes.get(spec.name, IDLE)), spec.url,
                            spec.ready_path, spec.health_path) for spec in default_services(s)]

    monkeypatch.setattr(supervisor, "default_services", stand_ins)
    path = settings.home / "stack.json"

    def in_crash_loop() -> bool:
        state = read_state(path)
        return bool(state) and any(c.name == "inference" and c.crash_loop for c in state["components"])

    printed: list[str] = []

    def said_up() -> bool:
        printed.append(capsys.readouterr().out)
        return "Influence Lab is up" in " ".join("".join(printed).split())

    async def press_ctrl_c_in_the_crash_loop() -> dict:
        await until(in_crash_loop, 120, "the inference stand-in's crash loop")
        await until(said_up, 120, "inflab up to say the stack is up")
        state = read_state(path)
        shown = CliRunner().invoke(cli.app, ["ps"], env={"INFLAB_HOME": str(settings.home), "COLUMNS": "250"})
        alive = {c.name for c in state["components"] if c.kind == "service" and c.alive()}
        os.kill(os.getpid(), signal.SIGINT)
        return {"state": state, "ps": shown.output, "alive": alive}

    presser = asyncio.create_task(press_ctrl_c_in_the_crash_loop())
    code = await cli._up(settings, ready_timeout=120)
    seen = await presser
    assert code in (0, cli.EXIT_INTERRUPTED)  # stopped by Ctrl-C, not by the crash loop
    state = seen["state"]
    assert state["status"] == "degraded" and state["failure"] is None
    others = [c for c in state["components"] if c.kind == "service" and c.name != "inference"]
    assert len(others) == 3 and all(c.restarts == 0 and c.name in seen["alive"] for c in others)
    assert "crash loop" in seen["ps"] and "exit code 3" in seen["ps"]
    printed.append(capsys.readouterr().out)
    assert "Stack failed" not in "".join(printed) and "Stopped." in "".join(printed)
    assert "inference is in a crash loop: 3 exits in a row" in caplog.text  # the supervisor's log
    assert read_state(path)["status"] == "stopped"
