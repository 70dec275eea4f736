"""A real SMTP server for the account tests: aiosmtpd on loopback, in the test's own event
loop, optionally with STARTTLS (a self-signed certificate for 127.0.0.1) and required
authentication. It keeps every mail it receives, parsed, and lets a test wait for the
next one to an address; the gateway sends to it with aiosmtplib exactly as it would to
a production relay."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import ssl
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from inflab.core.settings import Settings


class LocalSmtp:
    def __init__(self, *, tls_cert: tuple[Path, Path] | None = None, credentials: tuple[str, str] | None = None):
        self.tls_cert = tls_cert
        self.credentials = credentials
        #: (envelope sender, recipients, message, whether the session was TLS and authenticated)
        self.received: list[tuple[str, list[str], EmailMessage, bool, bool]] = []
        self._arrived = asyncio.Condition()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "LocalSmtp":
        context = None
        if self.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.tls_cert))
        self._server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(self, hostname="localhost", tls_context=context, require_starttls=context is not None,
                         auth_required=self.credentials is not None, authenticator=self._authenticate),
            "127.0.0.1", 0,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.credentials == (
            auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server, session, envelope) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        async with self._arrived:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message,
                                  session.ssl is not None, bool(session.authenticated)))
            self._arrived.notify_all()
        return "250 OK"

    def settings(self, base: Settings, **update) -> Settings:
        """``base`` sending its mails here (plain SMTP unless ``update`` says otherwise)."""
        return base.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_security": "none",
                                       **update})

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [message for _, rcpt, message, *_ in self.received if address in rcpt]

    async def next_mail(self, address: str, after: int = 0, timeout: float = 10) -> EmailMessage:
        """The first mail to ``address`` beyond the ``after`` already seen, waiting for it."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.mails_to(address)) > after)
            return self.mails_to(address)[after]


def link_token(message: EmailMessage, page: str, public_url: str) -> str:
    """The token of the link to ``public_url + page`` in the mail's text."""
    text = message.get_content()
    found = re.search(re.escape(f"{public_url.rstrip('/')}{page}?token=") + r"([A-Za-z0-9_\-]+)", text)
    assert found, f"no {page} link in:\n{text}"
    return found.group(1)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (cryptography comes with authlib)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.pem", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
