"""The embedded servers start from their wheels, work, and leave no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from inflab.devtools.embedded import postgres as pg_module
from inflab.devtools.embedded._proc import StartError, port_open, stop_process_tree
from inflab.devtools.embedded.nats import EmbeddedNats
from inflab.devtools.embedded.postgres import EmbeddedPostgres, ensure_database, with_database


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _gone(procs: list[psutil.Process]) -> bool:
    def dead(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(p) for p in procs)


async def test_nats_from_wheel_serves_jetstream(tmp_path):
    import nats

    server = EmbeddedNats(tmp_path / "nats", port=0).start()
    procs = _tree(server.pid)
    try:
        assert server.port and server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
            first = await js.publish("embedded.x", b"hello", headers={"Nats-Msg-Id": "m1"})
            again = await js.publish("embedded.x", b"hello", headers={"Nats-Msg-Id": "m1"})
            assert not first.duplicate and again.duplicate
            sub = await js.pull_subscribe("embedded.x", durable="d")
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.data == b"hello"
            await msg.ack()
            await sub.unsubscribe()
        finally:
            await nc.close()
    finally:
        server.stop()
    assert _gone(procs)
    assert not port_open("127.0.0.1", server.port)
    assert (tmp_path / "nats" / "jetstream").is_dir()  # streams are stored under data_dir


def test_nats_start_failure_reports_the_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedNats(tmp_path / "nats", port=port)
        with pytest.raises(StartError) as info:
            server.start(timeout=10)
    assert "address already in use" in str(info.value).lower()
    assert server.process.poll() is not None


async def test_postgres_from_wheel_creates_databases(tmp_path):
    import asyncpg

    # tmp_path sits under pytest's private (0700) folder: as root the server runs as
    # nobody and must still reach its data folder without any parent's mode changing.
    parent_mode = tmp_path.parent.stat().st_mode
    server = EmbeddedPostgres(tmp_path / "pg", port=0).start()
    procs = _tree(server.pid)
    try:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        admin = await asyncpg.connect(server.url)
        try:
            await admin.execute('CREATE DATABASE "made_here"')
        finally:
            await admin.close()
        url = await ensure_database(server.url, "ensured")
        assert url.endswith(f":{server.port}/ensured")
        assert await ensure_database(server.url, "ensured") == url  # idempotent
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (41)")
            assert await conn.fetchval("SELECT x + 1 FROM t") == 42
        finally:
            await conn.close()
        procs = _tree(server.pid)  # now with the backends and background workers
    finally:
        server.stop()
    assert _gone(procs)
    assert tmp_path.parent.stat().st_mode == parent_mode

    # The cluster is kept: a second start reuses it (no initdb) and finds the data.
    again = EmbeddedPostgres(tmp_path / "pg", port=0).start()
    try:
        conn = await asyncpg.connect(with_database(again.url, "ensured"))
        try:
            assert await conn.fetchval("SELECT x FROM t") == 41
        finally:
            await conn.close()
    finally:
        again.stop()
    assert again.process.poll() is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_postgres_binaries_copied_when_unreachable(tmp_path, monkeypatch):
    # As if the environment lived under a private folder: the server runs from a copy
    # made in the (world-reachable) temp folder, here a fresh one removed afterwards.
    shared = Path(tempfile.mkdtemp(prefix="inflab-test-"))
    shared.chmod(0o755)
    monkeypatch.setattr(pg_module.tempfile, "gettempdir", lambda: str(shared))
    monkeypatch.setattr(pg_module, "_reachable", lambda path, user: False)
    try:
        server = EmbeddedPostgres(tmp_path / "pg", port=0)
        assert server.bin_dir.is_relative_to(shared)
        with server:
            assert pg_module._accepts_sessions(server.host, server.port, "postgres")
        assert server.process.poll() is not None
    finally:
        shutil.rmtree(shared)


def test_stop_process_tree_kills_orphaned_helpers():
    # The leader exits on SIGTERM but leaves its two helpers running: they must die too.
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True
    )
    try:
        _wait_for(lambda: len(_tree(leader.pid)) == 3, timeout=10)  # both helpers exist
        tree = _tree(leader.pid)
        killed = stop_process_tree(leader.pid, signal.SIGTERM, timeout=0.5)
        assert len(killed) == 2
        assert _gone(tree)
    finally:
        leader.kill()
        leader.wait()


def test_servers_started_by_a_killed_parent_die_with_it(tmp_path):
    """The safety net for a SIGKILLed supervisor: the kernel stops its servers."""
    script = (
        "import sys, pathlib;"
        "from inflab.devtools.embedded.nats import EmbeddedNats;"
        f"s = EmbeddedNats(pathlib.Path({str(tmp_path / 'nats')!r}), 0, parent_death_signal=True).start();"
        "print(s.pid, flush=True);"
        "sys.stdin.read()"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()
        parent.wait()
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert not alive
    finally:
        parent.kill()
