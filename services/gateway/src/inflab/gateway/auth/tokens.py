"""Opaque bearer tokens: 256 random bits, a prefix saying what kind of token it is, and
only their SHA-256 stored (a high-entropy token needs no slow hash)."""

from __future__ import annotations

import hashlib
import secrets

#: An access token from sign-in (also the browser session cookie's value).
SESSION_PREFIX = "ils_"
#: A personal API token.
API_TOKEN_PREFIX = "ilp_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)
