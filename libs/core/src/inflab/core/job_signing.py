"""Signed job requests: the gateway signs every train, inference and influence request it
publishes; a worker runs a request only if the signature is the gateway's.

NATS permissions already let only the gateway publish on the request subjects. The
signature is the second wall, for when those are wrong or absent (a server started
without the generated authorization, an operator credential used carelessly, a leaked
credential with too much allowed): a request that did not come from the gateway is
dead-lettered with the reason and never run.

Why Ed25519 (``cryptography``) and not an HMAC: the gateway holds the private key and the
workers only the public one, so no worker's secret (a worker runs user-chosen models and
data) can forge a request for itself or for another stage. An HMAC key shared with every
worker would make each worker a possible forger. Why a header over the exact bytes (not a
field over a canonical form of the payload): what is verified is exactly what is parsed,
with no canonical-JSON rules for producers and consumers to agree on, and the payload
contract stays as it is. The signed text is the subject and the body, so a request signed
for one stage cannot be replayed on another stage's subject, and the body binds the run
id, the method and the whole spec (checkpoint keys included).

Replays of a genuine request are left to what already bounds them: only the gateway's
credential may publish requests, JetStream drops a repeated message id for an hour, and
every stage is idempotent per run (a finished training is not redone).

Keys are URL-safe base64 of the raw 32 bytes: ``INFLAB_JOB_SIGNING_KEY`` (private; the
gateway only) and ``INFLAB_JOB_VERIFY_KEY`` (public; the workers). ``inflab job-keys``
prints a new pair; the embedded stack generates one in its state folder.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: The NATS header that carries the signature.
SIGNATURE_HEADER = "Inflab-Signature"
#: Names the algorithm inside the header value, so a later one can be told apart.
SCHEME = "ed25519"


class BadSignature(Exception):
    """A job request whose signature is missing, malformed or not the gateway's."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key_pair() -> tuple[str, str]:
    """``(signing_key, verify_key)``, both URL-safe base64."""
    private = Ed25519PrivateKey.generate()
    return _b64(private.private_bytes_raw()), _b64(private.public_key().public_bytes_raw())


def verify_key_of(signing_key: str) -> str:
    return _b64(_private(signing_key).public_key().public_bytes_raw())


def _private(signing_key: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(_unb64(signing_key))
    except (ValueError, binascii.Error) as exc:
        raise ValueError("INFLAB_JOB_SIGNING_KEY is not an Ed25519 key (URL-safe base64 of 32 bytes)") from exc


def _signed_text(subject: str, body: bytes) -> bytes:
    return subject.encode() + b"\n" + body


class JobSigner:
    """The gateway's side: the header value for a request body on a subject."""

    def __init__(self, signing_key: str):
        self._key = _private(signing_key)

    def sign(self, subject: str, body: bytes) -> str:
        return f"{SCHEME}:{_b64(self._key.sign(_signed_text(subject, body)))}"


class JobVerifier:
    """A worker's side: raises :class:`BadSignature` unless the gateway signed the body
    for this subject."""

    def __init__(self, verify_key: str):
        try:
            self._key = Ed25519PublicKey.from_public_bytes(_unb64(verify_key))
        except (ValueError, binascii.Error) as exc:
            raise ValueError("INFLAB_JOB_VERIFY_KEY is not an Ed25519 public key (URL-safe base64 of 32 bytes)") from exc

    def verify(self, subject: str, body: bytes, header: str | None) -> None:
        if not header:
            raise BadSignature(f"unsigned job request: no {SIGNATURE_HEADER} header (only the gateway queues jobs)")
        scheme, _, value = header.partition(":")
        if scheme != SCHEME:
            raise BadSignature(f"{SIGNATURE_HEADER}: unknown scheme {scheme!r} (expected {SCHEME})")
        try:
            self._key.verify(_unb64(value), _signed_text(subject, body))
        except (InvalidSignature, ValueError, binascii.Error):
            raise BadSignature("job request signature is not the gateway's (forged, altered or for another subject)") from None
