"""The supervisor restarting a real service: the stack runs the real influence worker
(``python -m inflab.influence``, as ``inflab up`` starts it) on the run's NATS and Postgres
with its own Ray; SIGKILLing the worker's process is seen in ``stack.json`` and
``inflab ps`` (restarts, last exit reason), and a new worker process takes its place."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from inflab.common import cli
from inflab.common.embedded._proc import free_port
from inflab.common.embedded.stack import ServiceSpec, Stack, default_services, read_state

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

            os.kill(first, signal.SIGKILL)
            await until(lambda: component(stack, "influence").restarts == 1, 60, "the supervisor to restart it")
            restarted = component(stack, "influence")
            assert restarted.pid != first and restarted.alive()
            assert restarted.last_exit == "SIGKILL" and not restarted.crash_loop
            assert not stack.failed.is_set() and read_state(stack.state_path)["status"] == "running"
            await until(lambda: consuming(stack, restarted.pid), 240, "the new worker process to consume")

            shown = CliRunner().invoke(cli.app, ["ps"], env={"INFLAB_HOME": str(s.home), "COLUMNS": "250"}).output
            row = next(line for line in shown.splitlines() if "influence" in line and str(restarted.pid) in line)
            assert "alive" in row and "SIGKILL" in row and " 1 " in row
    finally:
        if ray_temp:
            shutil.rmtree(ray_temp, ignore_errors=True)
