"""A local Ray head node as one supervised process tree.

``ray start --head`` normally daemonises and leaves ``ray stop`` to clean up, but
``ray stop`` kills *every* Ray process on the machine, including other stacks' and other
test runs'. With ``--block`` the ``ray start`` process stays in the foreground as the
parent of the GCS, raylet and agents (Ray makes them die with it), and its SIGTERM
handler drains and shuts down exactly this node. We run it in its own process group, so
whatever survives the graceful stop is killed with the group: no orphans, nobody else hit.

Isolation from other Ray users on the machine:

* ``--temp-dir`` is our own. ``ray start`` writes the cluster address to
  ``<temp-dir>/ray_current_cluster``; in the default ``/tmp/ray`` that file makes every
  later address-less ``ray.init()`` on the machine try to join this node (and fail once
  it is gone). The folder lives under the system temp dir because Ray's Unix socket paths
  beneath it must stay under the 107-byte limit.
* Authentication is explicit: Ray turns token auth on for a new node whenever a token
  file exists in ``~/.ray`` (any earlier ``ray.init()`` writes one), while a driver joining
  with a plain address assumes it is off, and fails to connect. We give the node and every
  process of the stack ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN`` through
  their environment (:meth:`EmbeddedRay.client_environment`): the node, which listens on
  the machine's address, only runs code from this stack, and ``~/.ray`` plays no part.
* Every port that Ray would otherwise take at a fixed default (GCS 6379, client server
  10001, dashboard agent 52365) is chosen free. (Ray advertises the machine's own IP
  even when told ``--node-ip-address=127.0.0.1``, so we do not pretend to pin it.)
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from inflab.devtools.embedded._proc import LOCALHOST, ServerProcess, free_port, port_open

#: Printed by ``ray start`` once the head node's processes are all up.
STARTED_MARKER = "Ray runtime started"


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        raise FileNotFoundError("the `ray` command is not installed (pip install 'ray[default]')")
    return found


def default_num_cpus(*stage_cpus: float) -> int:
    """The machine's cores, but never fewer than the largest stage asks for (or it would
    wait forever for a CPU the node does not have)."""
    return max(os.cpu_count() or 1, *(math.ceil(c) for c in stage_cpus), 1)


def short_temp_dir(key: str) -> Path:
    """A per-stack folder with a short path (Ray's socket paths live beneath it)."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"inflab-ray-{digest}"


class EmbeddedRay(ServerProcess):
    """``ray start --head --block``; ``address`` (``127.0.0.1:port``) is what ``ray.init`` takes."""

    name = "ray"
    start_timeout = 90.0
    stop_timeout = 20.0

    def __init__(
        self,
        log_path: Path,
        *,
        num_cpus: int | None = None,
        port: int = 0,
        temp_dir: Path | None = None,
        parent_death_signal: bool = False,
    ) -> None:
        super().__init__(log_path, parent_death_signal=parent_death_signal)
        self.num_cpus = num_cpus or default_num_cpus()
        self.port = port
        self.temp_dir = temp_dir or short_temp_dir(str(Path(log_path).resolve()))
        self.host = LOCALHOST
        self.auth_token = secrets.token_hex(32)  # as ``ray get-auth-token --generate`` makes

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def session_logs(self) -> Path:
        """Where Ray keeps this node's own logs (raylet, GCS, every worker's output)."""
        return self.temp_dir / "session_latest" / "logs"

    def prepare(self) -> None:
        if not self.port:
            self.port = free_port()
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        for old in self.temp_dir.glob("session_*"):  # earlier runs' nodes are gone
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def client_environment(self) -> dict[str, str]:
        """Environment a process needs to join this node (see the module docstring)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token, "RAY_ADDRESS": self.address}

    def spawn(self, env: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_ADDRESS", None)  # we are the head; not a client of some other cluster
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.auth_token)
        super().spawn(env)

    def command(self) -> Sequence[str]:
        return [
            ray_executable(), "start", "--head", "--block",
            f"--port={self.port}",
            f"--num-cpus={self.num_cpus}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            "--log-style=record",
            "--log-color=false",
        ]

    def is_ready(self) -> bool:
        """The GCS answers and ``ray start`` reports the whole node up."""
        if not port_open(self.host, self.port):
            return False
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return STARTED_MARKER.encode() in fh.read()
