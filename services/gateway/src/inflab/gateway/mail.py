"""Sending mail: through SMTP when ``smtp_host`` is set, otherwise as ``.eml`` files in
``mail_dir`` (the embedded stack's ``INFLAB_HOME/mail``, which ``inflab ps`` names), so a
laptop without a mail server still gets its links.

SMTP goes through aiosmtplib (maintained, asyncio-native, STARTTLS and implicit TLS,
authentication); the messages are the standard library's ``EmailMessage``. Mails are
sent after the response (FastAPI background tasks): how long a send takes must not tell
a caller whether an address has an account, and a slow relay must not hold a request.
A failed send is logged, never raised to anyone.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path

import aiosmtplib

from inflab.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def folder(self) -> Path | None:
        """Where mails are written; None when they go through SMTP."""
        return None if self.settings.smtp_host else self.settings.mail_folder

    def message(self, mail: Mail) -> EmailMessage:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.mail_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = format_datetime(datetime.now(timezone.utc))
        domain = parseaddr(s.mail_from)[1].rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid(domain=domain)
        message["Auto-Submitted"] = "auto-generated"
        # Plain 7-bit when it can be: a link in quoted-printable ("token=3D...") is broken for
        # anyone who reads the .eml file of the embedded stack's mail folder as it is.
        message.set_content(mail.text, cte="7bit" if mail.text.isascii() else "quoted-printable")
        return message

    async def send(self, mail: Mail) -> None:
        """Send ``mail``; failures are logged (this runs after the response)."""
        try:
            message = self.message(mail)
            if self.folder is not None:
                path = self._write(message)
                log.info("mail %r to %s written to %s", mail.subject, mail.to, path)
            else:
                await self._smtp(message)
                log.info("mail %r sent to %s", mail.subject, mail.to)
        except Exception as exc:
            log.error("mail %r to %s not sent: %s: %s", mail.subject, mail.to, type(exc).__name__, exc)

    async def _smtp(self, message: EmailMessage) -> None:
        s = self.settings
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            use_tls=s.smtp_security == "tls",
            # True: STARTTLS or fail, never a silent fall-back to plain text.
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_s,
        )

    def _write(self, message: EmailMessage) -> Path:
        folder = self.folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = folder / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        # The links in it sign their reader in: readable by the stack's user alone.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(message.as_bytes())
        return path
