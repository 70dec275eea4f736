"""Single-use links mailed to an account's address: ``verify_email`` and
``reset_password``. A link carries 256 random bits; only their SHA-256 is stored, with
the address it was sent to and when it expires. A new link of a purpose voids the
account's earlier unused ones, and redeeming one marks it used in the same statement
that checks it, so a link works once even when clicked twice at the same moment.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import EmailToken, User
from inflab.core.settings import Settings
from inflab.gateway.auth.tokens import token_hash

Purpose = Literal["verify_email", "reset_password"]

#: The web app's pages that take each link's token.
PAGES: dict[Purpose, str] = {"verify_email": "/verify-email", "reset_password": "/reset-password"}


@dataclass(frozen=True)
class Redeemed:
    user_id: UUID
    email: str


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ttl_s(purpose: Purpose, settings: Settings) -> float:
    return settings.email_verification_ttl_s if purpose == "verify_email" else settings.password_reset_ttl_s


def link_url(purpose: Purpose, token: str, settings: Settings) -> str:
    return f"{settings.public_url.rstrip('/')}{PAGES[purpose]}?token={token}"


async def issue(session: AsyncSession, user: User, purpose: Purpose, settings: Settings) -> str:
    """A new link token for ``user``'s current address (committed); earlier unused ones of
    the same purpose stop working."""
    now = _now()
    await void(session, user.id, purpose)
    token = secrets.token_urlsafe(32)
    session.add(EmailToken(user_id=user.id, purpose=purpose, token_hash=token_hash(token), email=user.email,
                           expires_at=now + timedelta(seconds=_ttl_s(purpose, settings))))
    await session.commit()
    return token


async def void(session: AsyncSession, user_id: UUID, purpose: Purpose) -> None:
    """Mark the user's unused links of ``purpose`` used (uncommitted)."""
    await session.execute(
        update(EmailToken)
        .where(EmailToken.user_id == user_id, EmailToken.purpose == purpose, EmailToken.used_at.is_(None))
        .values(used_at=_now())
    )


async def peek(session: AsyncSession, purpose: Purpose, token: str) -> Redeemed | None:
    """Whose valid link this is, without using it up."""
    row = (await session.execute(
        select(EmailToken.user_id, EmailToken.email)
        .where(*_valid(purpose, token))
    )).first()
    return Redeemed(*row) if row else None


async def redeem(session: AsyncSession, purpose: Purpose, token: str) -> Redeemed | None:
    """Use the link up (uncommitted: part of the caller's change); None when it is unknown,
    expired, already used, or no longer for the account's address."""
    row = (await session.execute(
        update(EmailToken).where(*_valid(purpose, token)).values(used_at=_now())
        .returning(EmailToken.user_id, EmailToken.email)
    )).first()
    if row is None:
        return None
    current = await session.scalar(select(User.email).where(User.id == row.user_id))
    return Redeemed(*row) if current == row.email else None


def _valid(purpose: Purpose, token: str):
    return (EmailToken.token_hash == token_hash(token), EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None), EmailToken.expires_at > _now())
