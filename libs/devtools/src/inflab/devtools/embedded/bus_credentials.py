"""The embedded stack's bus secrets, generated once and kept in its state folder:

* one NATS user per role (:data:`inflab.core.nats_permissions.ROLES`) with a random
  password: ``secrets/nats/<role>.url`` holds ``nats://<role>:<password>@host:port``, the
  form every ``INFLAB_NATS_URL`` takes, rewritten at each start (the port may change);
* ``secrets/nats/authorization.conf``: the nats-server authorization for those users
  (their permissions, and bcrypt hashes of their passwords);
* the job-signing key pair: ``secrets/job-signing.key`` (the gateway's) and
  ``secrets/job-verify.key`` (the workers').

Every file is mode 0600 and the folders 0700: whoever can read them can act as that
role. Passwords survive restarts (read back from the URL files), so a credential handed
to a pipeline keeps working until the folder is deleted.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from inflab.core.job_signing import new_key_pair, verify_key_of
from inflab.core.nats_permissions import ROLES, authorization_config
from inflab.core.subjects import Subjects

SECRETS_DIR = "secrets"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class BusCredentials:
    """The secrets under ``home/secrets``."""

    home: Path

    @property
    def folder(self) -> Path:
        return self.home / SECRETS_DIR

    @property
    def nats_folder(self) -> Path:
        return self.folder / "nats"

    @property
    def authorization_file(self) -> Path:
        return self.nats_folder / "authorization.conf"

    def url_file(self, role: str) -> Path:
        return self.nats_folder / f"{role}.url"

    def url_files(self) -> dict[str, str]:
        """Where each role's credential is (for ``stack.json`` and ``inflab ps``)."""
        return {role: str(self.url_file(role)) for role in ROLES}

    # -- NATS users ---------------------------------------------------------------------------
    def passwords(self) -> dict[str, str]:
        """Each role's password: the one of its URL file, or a new random one."""
        found = {}
        for role in ROLES:
            password = None
            try:
                password = urlsplit(self.url_file(role).read_text().strip()).password
            except OSError:
                pass
            found[role] = unquote(password) if password else secrets.token_urlsafe(32)
        return found

    def write_nats(self, subjects: Subjects) -> dict[str, str]:
        """Write the server's authorization file and a URL file per role (for the server's
        address filled in by :meth:`write_urls`); the passwords by role."""
        passwords = self.passwords()
        write_private(self.authorization_file, authorization_config(passwords, subjects))
        return passwords

    def write_urls(self, passwords: dict[str, str], host: str, port: int) -> dict[str, str]:
        """Each role's ``nats://role:password@host:port``, written to its file; by role."""
        urls = {role: f"nats://{role}:{quote(password, safe='')}@{host}:{port}" for role, password in passwords.items()}
        for role, url in urls.items():
            write_private(self.url_file(role), url + "\n")
        return urls

    # -- job signing ----------------------------------------------------------------------------
    def job_keys(self) -> tuple[str, str]:
        """``(signing_key, verify_key)``, generated on first use."""
        signing_file, verify_file = self.folder / "job-signing.key", self.folder / "job-verify.key"
        try:
            signing = signing_file.read_text().strip()
        except OSError:
            signing = ""
        if not signing:
            signing, _ = new_key_pair()
            write_private(signing_file, signing + "\n")
        verify = verify_key_of(signing)
        write_private(verify_file, verify + "\n")
        return signing, verify
