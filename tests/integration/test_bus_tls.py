"""TLS to NATS by configuration: a nats-server from the wheel that requires TLS and a
client certificate (a CA made here), and the bus connecting with the TLS settings
(``INFLAB_NATS_TLS_CA_FILE``, ``..._CERT_FILE``, ``..._KEY_FILE``) and a role's password.
Without the CA the server's certificate is not trusted."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inflab.core.bus import Bus, connect_options
from inflab.devtools.embedded.bus_credentials import write_private
from inflab.devtools.embedded.nats import EmbeddedNats
from inflab.core.nats_permissions import authorization_config
from inflab.core.settings import Settings
from inflab.core.subjects import Subjects

pytestmark = pytest.mark.integration


def _issue(subject: str, issuer_key, issuer_name, key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_the_bus_connects_over_tls_with_the_tls_settings(tmp_path: Path, settings: Settings) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("inflab test CA", ca_key, None, ca_key, ca=True)
    ca_file, _ = _write(tmp_path, "ca", ca, ca_key)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_cert, server_key_file = _write(tmp_path, "server", _issue("localhost", ca_key, ca.subject, server_key,
                                                                     ca=False), server_key)
    client_cert, client_key_file = _write(tmp_path, "client", _issue("gateway", ca_key, ca.subject, client_key,
                                                                     ca=False), client_key)
    config = tmp_path / "nats.conf"
    write_private(config, authorization_config({"gateway": "tls-test-password"}, Subjects()) + (
        f'tls {{\n  cert_file: "{server_cert}"\n  key_file: "{server_key_file}"\n'
        f'  ca_file: "{ca_file}"\n  verify: true\n}}\n'))
    server = EmbeddedNats(tmp_path / "nats", 0, config_file=config)
    server.start()
    try:
        url = f"tls://gateway:tls-test-password@127.0.0.1:{server.port}"
        base = settings.model_copy(update={"nats_url": url, "subject_prefix": "inflab", "stream_prefix": "INFLAB"})
        secured = base.model_copy(update={"nats_tls_ca_file": ca_file, "nats_tls_cert_file": client_cert,
                                          "nats_tls_key_file": client_key_file})
        bus = await Bus.connect(secured, "gateway", create_streams=True)
        try:
            assert bus.nc.is_connected
            assert (await bus.js.stream_info(bus.subjects.jobs_stream)).config.name == "INFLAB_JOBS"
        finally:
            await bus.close()
        # The server's certificate is from our CA, which the system does not trust.
        with pytest.raises(Exception, match="(?i)certificate"):
            await nats.connect(**connect_options(base, "gateway") | {"allow_reconnect": False, "error_cb": None})
    finally:
        server.stop()
