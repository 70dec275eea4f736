"""Accounts, sessions and API tokens in Postgres. No HTTP here: the routes and the
run-submission consumer call these with a system session (see :mod:`.rls`) where the user
is not known yet, and with the caller's scoped session where it is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from uuid import UUID

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.common.db.models import ApiToken, AuthSession, Identity, User
from inflab.gateway.auth.passwords import hash_password, verify_password
from inflab.gateway.auth.tokens import API_TOKEN_PREFIX, SESSION_PREFIX, new_csrf_token, new_token, token_hash

# Deliberately loose (one @, a dot-free local part allowed, no spaces): the address is
# confirmed by whoever uses it, not by a regular expression.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


class EmailTaken(Exception):
    pass


def normalize_email(email: str) -> str | None:
    """The stored form of an address, or None if it is not one."""
    email = email.strip().lower()
    return email if _EMAIL.match(email) and len(email) <= 320 else None


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- accounts
async def register(session: AsyncSession, email: str, password: str) -> User:
    hashed = hash_password(password)
    user_id = await session.scalar(
        insert(User).values(email=email, password_hash=hashed)
        .on_conflict_do_nothing(index_elements=[User.email]).returning(User.id)
    )
    await session.commit()
    if user_id is None:
        raise EmailTaken(email)
    return await session.get_one(User, user_id)


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    user = await session.scalar(select(User).where(User.email == email))
    # Verify even for an unknown email, so timing does not tell which emails exist.
    if verify_password(user.password_hash if user else None, password) and user is not None:
        return user
    return None


async def user_for_identity(session: AsyncSession, provider: str, subject: str, email: str) -> User:
    """The account a provider's verified identity signs in to: the one already linked,
    else the one with the same email (now linked), else a new one."""
    linked = await session.scalar(
        select(User).join(Identity, Identity.user_id == User.id)
        .where(Identity.provider == provider, Identity.subject == subject)
    )
    if linked is not None:
        return linked
    await session.execute(insert(User).values(email=email).on_conflict_do_nothing(index_elements=[User.email]))
    user = (await session.scalars(select(User).where(User.email == email))).one()
    await session.execute(
        insert(Identity).values(user_id=user.id, provider=provider, subject=subject, email=email)
        .on_conflict_do_nothing(constraint="uq_identities_provider_subject")
    )
    await session.commit()
    return user


# --------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class Caller:
    """Who a request is from, and how it said so."""

    user: User
    via: Literal["cookie", "bearer", "api_token"]
    session_id: UUID | None = None
    csrf_token: str | None = None


async def start_session(session: AsyncSession, user: User, ttl_s: float) -> tuple[str, AuthSession]:
    """A new signed-in session; its token (shown once) and row."""
    token = new_token(SESSION_PREFIX)
    row = AuthSession(user_id=user.id, token_hash=token_hash(token), csrf_token=new_csrf_token(),
                      expires_at=_now() + timedelta(seconds=ttl_s))
    # The user's expired sessions go as a new one starts, so the table does not grow forever.
    await session.execute(
        delete(AuthSession).where(AuthSession.user_id == user.id, AuthSession.expires_at <= _now())
    )
    session.add(row)
    await session.commit()
    return token, row


async def end_session(session: AsyncSession, session_id: UUID) -> None:
    await session.execute(delete(AuthSession).where(AuthSession.id == session_id))
    await session.commit()


async def caller_for_token(session: AsyncSession, token: str, via: Literal["cookie", "bearer"]) -> Caller | None:
    """The caller a session or API token speaks for; None when it is unknown, expired or
    revoked. Cookies carry session tokens only."""
    digest = token_hash(token)
    if token.startswith(SESSION_PREFIX):
        row = await session.execute(
            select(User, AuthSession.id, AuthSession.csrf_token)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(AuthSession.token_hash == digest, AuthSession.expires_at > _now())
        )
        found = row.first()
        if found is None:
            return None
        user, session_id, csrf = found
        return Caller(user=user, via=via, session_id=session_id, csrf_token=csrf)
    if token.startswith(API_TOKEN_PREFIX) and via == "bearer":
        return await caller_for_api_token(session, token)
    return None


async def caller_for_api_token(session: AsyncSession, token: str) -> Caller | None:
    if not token.startswith(API_TOKEN_PREFIX):
        return None
    user_id = await session.scalar(
        update(ApiToken)
        .where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None))
        .values(last_used_at=_now())
        .returning(ApiToken.user_id)
    )
    await session.commit()
    if user_id is None:
        return None
    return Caller(user=await session.get_one(User, user_id), via="api_token")


# --------------------------------------------------------------------------- API tokens
async def create_api_token(session: AsyncSession, user_id: UUID, name: str) -> tuple[str, ApiToken]:
    token = new_token(API_TOKEN_PREFIX)
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash(token), prefix=token[:12])
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return token, row
