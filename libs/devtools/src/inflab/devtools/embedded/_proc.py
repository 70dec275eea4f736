"""Process plumbing shared by the embedded servers and the stack supervisor.

Every embedded component is an OS process, and three rules keep them well behaved:

* Output goes to a log file, never to a pipe: a server whose pipe nobody reads blocks
  once the pipe buffer fills (nats-server does exactly that).
* Start-up is awaited on an event (a port accepting connections, a probe answering, the
  process exiting), polled at a short interval under a hard deadline; never a fixed sleep.
* Stopping covers the whole process tree. Servers such as Ray fork helpers we never see,
  so each child leads its own session/process group, and after the graceful signal every
  survivor of the tree and of the group is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

import psutil

LOCALHOST = "127.0.0.1"
#: How often readiness probes are repeated while waiting.
POLL_INTERVAL_S = 0.05
#: Bound on how long a process may take to exit after SIGKILL before we give up on it.
KILL_WAIT_S = 5.0

_PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child runs only the prctl call between fork and exec.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class StartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 16_384))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to send ``sig`` to the child when its parent dies.

    The safety net for a supervisor that is SIGKILLed (its orderly stop never runs). Linux
    ties this to the *thread* that forked the child, so spawn long-lived children from a
    long-lived thread (the main or event-loop thread), not from a short-lived worker.
    """

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def process_group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live process ``pid`` if it is the one recorded (guards against pid reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        return proc
    except psutil.Error:
        return None


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still alive after ``timeout``.

    A zombie counts as gone: it runs nothing, and one that is not our child is reaped by
    init whenever init gets to it (psutil's own wait would sit out the timeout for it).
    """
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _dead(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        alive = [p for p in alive if not _dead(p)]
    return alive


def kill_group(pgid: int) -> list[int]:
    """SIGKILL whatever is left in a process group whose leader is gone."""
    members = process_group_members(pgid)
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(members, KILL_WAIT_S)
    return [p.pid for p in members]


def stop_process_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> list[int]:
    """Stop ``pid`` and everything it started; returns the pids that had to be SIGKILLed.

    ``sig`` goes to the leader only (it knows how to shut its helpers down in order); after
    ``timeout`` every survivor of the tree seen before the signal is killed, and finally
    anything still in the leader's process group (helpers forked after the snapshot).
    """
    try:
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return []
    pgid = None
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            pgid = pid
    with contextlib.suppress(psutil.Error):
        leader.send_signal(sig)
    stragglers = wait_gone(tree, timeout)
    if pgid is not None:
        known = {p.pid for p in stragglers}
        stragglers += [p for p in process_group_members(pgid) if p.pid not in known]
    for proc in stragglers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(stragglers, KILL_WAIT_S)
    return [p.pid for p in stragglers]


class ServerProcess:
    """One long-running server binary under our control.

    Start-up is three steps so a supervisor can keep the long-lived ``spawn`` on its
    event-loop thread (see :func:`die_with_parent`) and run the blocking ones elsewhere:
    ``prepare()`` (files, ports), ``spawn()`` (fork/exec, returns at once) and
    ``wait_ready()`` (blocks until the server answers). ``start()`` does all three.
    """

    #: Short name used in logs and errors.
    name = "server"
    #: The signal that asks this server for a clean shutdown.
    stop_signal = signal.SIGTERM
    #: Default bounds, in seconds.
    start_timeout = 30.0
    stop_timeout = 10.0

    def __init__(self, log_path: Path, *, parent_death_signal: bool = False) -> None:
        self.log_path = Path(log_path)
        self.parent_death_signal = parent_death_signal
        self.process: subprocess.Popen | None = None

    # -- to be provided by each server -------------------------------------------------
    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create folders, choose ports: whatever must happen before ``spawn``."""

    def spawn_options(self) -> dict:
        """Extra ``subprocess.Popen`` keyword arguments (cwd, env, user, ...)."""
        return {}

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, env: Mapping[str, str] | None = None) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        options = {"env": dict(env) if env is not None else None, **self.spawn_options()}
        preexec = die_with_parent(self.stop_signal) if self.parent_death_signal else None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
                **options,
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``is_ready()``; on exit or timeout, stop it and raise StartError."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                self._fail(f"{self.name} exited during start-up (code {code})")
            if self.is_ready() and self.process.poll() is None:
                return  # ready, and not some other server holding the port while ours died
            if time.monotonic() > deadline:
                self._fail(f"{self.name} not ready after {timeout or self.start_timeout:.0f}s")
            time.sleep(POLL_INTERVAL_S)

    def start(self, timeout: float | None = None) -> Self:
        self.prepare()
        self.spawn()
        self.wait_ready(timeout)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Clean shutdown with ``stop_signal``, SIGKILL for the tree after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            stop_process_tree(self.process.pid, self.stop_signal, timeout or self.stop_timeout)
        else:
            kill_group(self.process.pid)  # helpers that outlived a dead leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=KILL_WAIT_S)  # reap, so no zombie is left

    def _fail(self, reason: str) -> None:
        self.stop()
        raise StartError(f"{reason}; log {self.log_path}:\n{log_tail(self.log_path)}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DataServer(ServerProcess):
    """A server that keeps its data in ``data_dir`` and listens on ``host:port``.

    ``port=0`` picks a free port (in ``prepare``). Output goes to ``log_path`` (default:
    ``<data_dir>.log`` beside the data folder).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = LOCALHOST,
        log_path: Path | None = None,
        parent_death_signal: bool = False,
    ) -> None:
        data_dir = Path(data_dir).resolve()
        super().__init__(
            log_path or data_dir.with_name(data_dir.name + ".log"),
            parent_death_signal=parent_death_signal,
        )
        self.data_dir = data_dir
        self.host = host
        self.port = port

    def prepare(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
