"""The embedded stack's state file, ``INFLAB_HOME/stack.json``: what is running, for whom to see.

The supervisor records every component there (pid, url, log, start time, restarts, last
exit, crash loop, status) and the stack's own status, so that ``inflab ps`` and
``inflab down``, which run in another process, can show and stop what it started. The
file is rewritten whole on every change, through a temporary file and a rename, so a reader
never sees half of it.

It is also how a stack that was not stopped is cleaned up: a later start (or
``inflab down``) finds the components a killed supervisor left behind and stops them
(:func:`reap_stale`), and refuses to start while that file's supervisor is still running.
A recorded pid counts only with its process's start time, so a pid the kernel has given to
another process since is left alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from inflab.core.settings import Settings
from inflab.devtools.embedded._proc import same_process, stop_process_tree

log = logging.getLogger("inflab.stack")

STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack could not start (another one runs from the same home), or a component
    failed for good."""


def now() -> str:
    """The current time as recorded in the state file (UTC, to the second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Component:
    """One row of ``stack.json``."""

    name: str
    kind: str  # nats | postgres | ray | service
    pid: int | None = None
    create_time: float | None = None  # tells a recorded pid from a reused one
    url: str | None = None
    health_url: str | None = None
    log: str | None = None
    started_at: str | None = None
    restarts: int = 0
    status: str = "starting"  # starting | running | restarting | failed | stopped | external
    stop_signal: int = int(signal.SIGTERM)
    last_exit: str | None = None  # why the last process exited: "exit code 3", "SIGKILL"
    last_exit_at: str | None = None
    crashes_in_a_row: int = 0  # exits since the last process that ran long enough to be healthy
    crash_loop: bool = False
    metrics_url: str | None = None  # a worker's Prometheus metrics

    def attach(self, process: subprocess.Popen, log_path: Path) -> None:
        self.pid = process.pid
        with contextlib.suppress(psutil.Error):
            self.create_time = psutil.Process(process.pid).create_time()
        self.log = str(log_path)
        self.started_at = now()
        self.status = "running"

    def alive(self) -> bool:
        return self.pid is not None and same_process(self.pid, self.create_time) is not None


def state_path(settings: Settings) -> Path:
    return settings.home / STATE_FILE


def stack_status(*, stopped: bool, failed: bool, stopping: bool, components: Sequence[Component]) -> str:
    """The stack's status: ``stopped``, ``failed``, ``stopping``, or while it runs,
    ``degraded`` when a service is in a crash loop and ``running`` otherwise."""
    if stopped:
        return "stopped"
    if failed:
        return "failed"
    if stopping:
        return "stopping"
    return "degraded" if any(c.crash_loop for c in components) else "running"


def write_state(
    path: Path,
    components: Sequence[Component],
    *,
    status: str,
    failure: str | None,
    started_at: str,
    supervisor_create_time: float,
    logs_dir: Path,
    gateway_url: str | None,
    mail_dir: Path | None,
    nats_credentials: Mapping[str, str],
) -> None:
    """Write the state file atomically, this process as its supervisor.

    ``mail_dir``: where mails go when no SMTP server is set (verification and reset links);
    ``nats_credentials``: where each role's NATS credential is (files only the owner can
    read), empty when the stack did not start NATS.
    """
    state = {
        "status": status,
        "failure": failure,
        "supervisor_pid": os.getpid(),
        "supervisor_create_time": supervisor_create_time,
        "started_at": started_at,
        "updated_at": now(),
        "home": str(path.parent),
        "logs_dir": str(logs_dir),
        "gateway_url": gateway_url,
        "mail_dir": None if mail_dir is None else str(mail_dir),
        "nats_credentials": dict(nats_credentials),
        "components": [asdict(c) for c in components],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's content, its components as :class:`Component`; None without one."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state["components"] = [Component(**c) for c in state.get("components", [])]
    return state


def reap_stale(path: Path) -> list[str]:
    """Stop components a dead supervisor left running; refuse if the supervisor is alive.

    Returns the names of what was stopped (services first, then infrastructure).
    """
    state = read_state(path)
    if not state:
        return []
    supervisor = same_process(state.get("supervisor_pid", -1), state.get("supervisor_create_time"))
    if supervisor is not None and state.get("status") != "stopped":  # (this process counts too)
        raise StackError(
            f"a stack is already running from {path.parent} (supervisor pid {supervisor.pid}); "
            "stop it with `inflab down` or Ctrl-C in its terminal"
        )
    reaped = []
    for comp in reversed(state["components"]):  # reverse start order
        if comp.kind != "external" and comp.alive():
            log.warning("stopping %s (pid %s) left running by a previous stack", comp.name, comp.pid)
            stop_process_tree(comp.pid, comp.stop_signal, timeout=15.0)
            reaped.append(comp.name)
    return reaped
