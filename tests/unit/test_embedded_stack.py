"""The stack supervisor on its own: settings to children, readiness, restarts, state, cleanup.

NATS and PostgreSQL are given as URLs here (nothing in the supervisor connects to them),
Ray and the migrations are left out, and the services are small stand-ins, so these run
in a second or two. tests/integration/test_stack.py runs the real infrastructure.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from inflab.devtools.embedded._proc import free_port
from inflab.devtools.embedded.environment import SERVICE_ENV, ServiceSpec, child_environment, default_services
from inflab.devtools.embedded.state import StackError, read_state, reap_stale
from inflab.devtools.embedded.supervisor import Stack, wait_process
from inflab.core.settings import Settings

#: Serves /healthz and /readyz where the settings say the gateway listens.
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
CRASH = "import sys; print('stand-in crashing', flush=True); sys.exit(3)"


def stand_ins(settings: Settings, **argv_by_name: str) -> list[ServiceSpec]:
    """The real service list with each command replaced by ``python -c <code>``."""
    return [
        ServiceSpec(s.name, (sys.executable, "-c", argv_by_name.get(s.name, IDLE)), s.url, s.ready_path, s.health_path)
        for s in default_services(settings)
    ]


@pytest.fixture
def settings(tmp_path) -> Settings:
    # Fake URLs: the supervisor only hands them to the children, which here ignore them.
    return Settings(
        home=tmp_path / "home",
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://postgres@127.0.0.1:1/inflab",
        gateway_port=free_port(),
    )


def _all_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_default_services_are_the_four_real_ones(settings):
    specs = default_services(settings)
    assert [s.argv[1:] for s in specs] == [
        ("-m", "inflab.gateway"), ("-m", "inflab.trainer"), ("-m", "inflab.inference"), ("-m", "inflab.influence"),
    ]
    assert specs[0].ready_url == f"http://127.0.0.1:{settings.gateway_port}/readyz"
    assert [s.metrics for s in specs] == [False, True, True, True]  # the gateway has its own /metrics


def test_children_see_exactly_the_supervisor_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("INFLAB_MODEL_CACHE_DIR", str(tmp_path / "stale"))  # must not leak through
    monkeypatch.setenv("INFLAB_GATEWAY_PORT", "1")
    given = Settings(
        home=tmp_path / "h", gateway_port=8123, nats_url="nats://n:4222", ray_address="10.0.0.1:6379",
        train_num_cpus=1.5, model_cache_dir=None,
    )
    env = child_environment(given, SERVICE_ENV)
    assert "INFLAB_MODEL_CACHE_DIR" not in env
    assert env["OMP_NUM_THREADS"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379"
    seen = subprocess.run(
        [sys.executable, "-c", "from inflab.core.settings import Settings; print(Settings().model_dump_json())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(seen) == json.loads(given.model_dump_json())


async def test_wait_process_returns_the_exit_code():
    assert await wait_process(subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])) == 7


async def test_stack_runs_services_until_stopped(settings):
    stack = Stack(settings, stand_ins(settings, gateway=GATEWAY), with_ray=False, migrate=False)
    async with stack:
        await stack.wait_ready(timeout=30)
        pids = stack.all_pids()
        assert len(pids) == 4 and all(psutil.pid_exists(p) for p in pids)
        state = read_state(stack.state_path)
        assert state["status"] == "running" and state["gateway_url"] == stack.gateway_url
        by_name = {c.name: c for c in state["components"]}
        assert by_name["nats"].status == by_name["postgres"].status == "external"
        services = {n for n, c in by_name.items() if c.kind == "service"}
        assert services == {"gateway", "trainer", "inference", "influence"}
        assert all(c.alive() and c.log.endswith(f"logs/{c.name}.log") for c in by_name.values() if c.kind == "service")

        result = CliRunner().invoke(_cli_app(), ["ps"], env={"INFLAB_HOME": str(settings.home)})
        assert result.exit_code == 0, result.output
        assert "alive" in result.output and "200" in result.output
    assert _all_gone(pids)
    state = read_state(stack.state_path)
    assert state["status"] == "stopped"
    assert all(c.status in ("stopped", "external") for c in state["components"])


async def until(predicate, timeout: float, what: str) -> None:
    """Poll a condition of the supervisor's state (the stack gives no event per restart)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _ps(settings: Settings) -> str:
    """``inflab ps``'s output, on a terminal wide enough that no cell is folded."""
    result = CliRunner().invoke(_cli_app(), ["ps"], env={"INFLAB_HOME": str(settings.home), "COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def _component(stack: Stack, name: str):
    return next(c for c in read_state(stack.state_path)["components"] if c.name == name)


async def test_a_crash_looping_service_is_reported_while_the_rest_stays_up(settings):
    stack = Stack(
        settings, stand_ins(settings, gateway=GATEWAY, influence=CRASH),
        with_ray=False, migrate=False, restart_backoff_s=0.02, restart_backoff_max_s=0.1, crash_loop_after=3,
    )
    async with stack:
        # Restarted beyond any fixed bound, never failing the stack.
        await until(lambda: _component(stack, "influence").restarts >= 6, 60, "six restarts of influence")
        assert not stack.failed.is_set()
        state = read_state(stack.state_path)
        assert state["status"] == "degraded"
        influence = next(c for c in state["components"] if c.name == "influence")
        assert influence.crash_loop and influence.crashes_in_a_row >= 6
        assert influence.last_exit == "exit code 3" and influence.last_exit_at
        others = [c for c in state["components"] if c.kind == "service" and c.name != "influence"]
        assert all(c.alive() and c.restarts == 0 and c.last_exit is None for c in others)
        await stack.wait_ready(timeout=30, allow_crash_loops=True)
        with pytest.raises(StackError, match=r"influence \(crash loop; last exit: exit code 3\)"):
            await stack.wait_ready(timeout=0.5)

        shown = _ps(settings)
        assert "degraded" in shown and "crash loop" in shown
        assert "Crash loop: influence exited" in shown
        assert "exit code 3" in shown
        assert (settings.home / "logs" / "influence.log").read_text().count("stand-in crashing") >= 7
        pids = stack.all_pids()
    assert _all_gone(pids)
    assert read_state(stack.state_path)["status"] == "stopped"


#: Crashes on its first two starts, then runs.
CRASHES_TWICE = r"""
import os, pathlib, sys, threading
count = pathlib.Path(os.environ["INFLAB_HOME"]) / "trainer-starts"
starts = len(count.read_text()) if count.exists() else 0
count.write_text("x" * (starts + 1))
if starts < 2:
    sys.exit(4)
threading.Event().wait()
"""


async def test_a_service_that_runs_healthy_again_leaves_the_crash_loop(settings):
    stack = Stack(
        settings, stand_ins(settings, gateway=GATEWAY, trainer=CRASHES_TWICE),
        with_ray=False, migrate=False, restart_backoff_s=0.02, crash_loop_after=2, healthy_after_s=0.5,
    )
    async with stack:
        await until(lambda: _component(stack, "trainer").crash_loop, 30, "the trainer's crash loop")
        await until(lambda: not _component(stack, "trainer").crash_loop, 30, "the trainer to run healthy")
        trainer = _component(stack, "trainer")
        assert trainer.restarts == 2 and trainer.crashes_in_a_row == 0 and trainer.alive()
        assert trainer.last_exit == "exit code 4"  # what happened stays shown
        assert read_state(stack.state_path)["status"] == "running"


async def test_a_killed_service_is_restarted_and_its_signal_shown(settings):
    stack = Stack(settings, stand_ins(settings, gateway=GATEWAY), with_ray=False, migrate=False,
                  restart_backoff_s=0.02)
    async with stack:
        await stack.wait_ready(timeout=30)
        first = stack.service_pids()["inference"]
        os.kill(first, signal.SIGKILL)
        await until(lambda: _component(stack, "inference").restarts == 1 and _component(stack, "inference").alive(),
                    30, "inference to be restarted")
        inference = _component(stack, "inference")
        assert inference.pid != first and inference.last_exit == "SIGKILL" and not inference.crash_loop
        shown = _ps(settings)
        assert "SIGKILL" in shown and "last exit" in shown


async def test_a_given_restart_bound_still_fails_the_stack(settings):
    stack = Stack(
        settings, stand_ins(settings, gateway=GATEWAY, influence=CRASH),
        with_ray=False, migrate=False, max_restarts=2, restart_backoff_s=0.05,
    )
    async with stack:
        await asyncio.wait_for(stack.failed.wait(), timeout=30)
        with pytest.raises(StackError, match=r"influence exited \(exit code 3\) after 2 restarts"):
            await stack.wait_ready(timeout=30)
        influence = next(c for c in stack.components if c.name == "influence")
        assert influence.restarts == 2 and influence.status == "failed"
        assert (settings.home / "logs" / "influence.log").read_text().splitlines().count("stand-in crashing") == 3
        pids = stack.all_pids()
    assert _all_gone(pids)
    assert read_state(stack.state_path)["failure"].startswith("influence exited")


def test_service_command_is_what_the_supervisor_runs(settings):
    stack = Stack(settings, with_ray=False, migrate=False)
    argv, env = stack.service_command("trainer")
    assert argv[1:] == ["-m", "inflab.trainer"]
    assert env["INFLAB_NATS_URL"] == settings.nats_url and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(KeyError):
        stack.service_command("nope")


def test_each_worker_gets_a_metrics_port_of_its_own(settings):
    stack = Stack(settings, with_ray=False, migrate=False)
    ports = {}
    for name in ("trainer", "inference", "influence"):
        _, env = stack.service_command(name)
        assert env["INFLAB_METRICS_HOST"] == "127.0.0.1"
        ports[name] = int(env["INFLAB_METRICS_PORT"])
        assert stack.metrics_url(name) == f"http://127.0.0.1:{ports[name]}/metrics"
        assert stack.service_command(name)[1]["INFLAB_METRICS_PORT"] == str(ports[name])  # kept for restarts
    assert len(set(ports.values())) == 3
    assert stack.service_command("gateway")[1]["INFLAB_METRICS_PORT"] == str(settings.metrics_port)  # untouched
    assert stack.metrics_url("gateway") is None


async def test_a_second_stack_on_the_same_home_is_refused(settings):
    async with Stack(settings, stand_ins(settings, gateway=GATEWAY), with_ray=False, migrate=False) as first:
        with pytest.raises(StackError, match="already running"):
            async with Stack(settings, [], with_ray=False, migrate=False):
                pass
        assert read_state(first.state_path)["status"] == "running"  # the refusal left it alone
        assert all(psutil.pid_exists(pid) for pid in first.all_pids())


def test_leftovers_of_a_killed_supervisor_are_stopped(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = subprocess.Popen([sys.executable, "-c", IDLE], start_new_session=True)
    state = {
        "supervisor_pid": dead.pid,
        "supervisor_create_time": time.time() - 5,
        "components": [
            {"name": "trainer", "kind": "service", "pid": orphan.pid,
             "create_time": psutil.Process(orphan.pid).create_time()},
            {"name": "nats", "kind": "external", "url": "nats://x:1", "status": "external"},
        ],
    }
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(state))
    assert reap_stale(path) == ["trainer"]
    assert orphan.wait(timeout=5) is not None


def _cli_app():
    from inflab.devtools.cli import app

    return app


def test_cli_lists_its_commands():
    result = CliRunner().invoke(_cli_app(), ["--help"])
    assert result.exit_code == 0
    for command in ("up", "ps", "down", "model", "demo"):
        assert command in result.output


def test_the_embedded_stack_signs_newcomers_in_at_once_over_plain_http(tmp_path, monkeypatch):
    from inflab.devtools.embedded.environment import embedded_settings

    monkeypatch.delenv("INFLAB_REQUIRE_EMAIL_VERIFICATION", raising=False)
    monkeypatch.delenv("INFLAB_COOKIE_SECURE", raising=False)
    monkeypatch.delenv("INFLAB_PUBLIC_URL", raising=False)
    # Outside the embedded stack, the defaults are the production ones.
    assert Settings().require_email_verification is True and Settings().cookie_secure is True
    monkeypatch.setenv("INFLAB_GATEWAY_PORT", "8105")
    embedded = embedded_settings(Settings(home=tmp_path))
    assert embedded.require_email_verification is False and embedded.cookie_secure is False
    assert embedded.public_url == "http://127.0.0.1:8105"
    assert embedded.mail_folder == tmp_path / "mail"
    # What the operator set explicitly stays.
    monkeypatch.setenv("INFLAB_REQUIRE_EMAIL_VERIFICATION", "true")
    monkeypatch.setenv("INFLAB_PUBLIC_URL", "https://lab.example.org")
    chosen = embedded_settings(Settings(home=tmp_path))
    assert chosen.require_email_verification is True and chosen.public_url == "https://lab.example.org"
