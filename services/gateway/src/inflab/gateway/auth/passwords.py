"""Password hashing (argon2id, argon2-cffi's defaults) and the minimum rules."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from inflab.common.settings import Settings

_hasher = PasswordHasher()

#: Verified against when an account has no password or does not exist, so a sign-in takes
#: as long whether the email is known or not.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problems(password: str, email: str, settings: Settings) -> list[str]:
    """What is wrong with a new password (empty when it is acceptable)."""
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"at least {settings.password_min_length} characters")
    if len(password) > settings.password_max_length:
        problems.append(f"at most {settings.password_max_length} characters")
    if len(set(password)) < 4:
        problems.append("at least 4 different characters")
    if password.strip().lower() == email.strip().lower() or password.lower() in email.lower().split("@"):
        problems.append("not your email address")
    return problems
