"""Who a request is from: signed-in sessions (the browser's cookie or a bearer access
token) and personal API tokens, looked up by their token's SHA-256; started, kept alive,
ended and revoked here. No HTTP: the routes, ``deps.current_caller``, the SSE streams and
the run-submission consumer call these with a system session (see :mod:`.rls`).

A session ends ``session_ttl_s`` after sign-in or ``session_idle_timeout_s`` after its
last request, whichever is first; an API token when revoked or at its ``expires_at``.
Last-seen and last-used times are written at most once a minute, so a busy client does
not turn every read into a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from uuid import UUID

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import ApiToken, AuthSession, User
from inflab.core.settings import Settings
from inflab.gateway.auth.tokens import API_TOKEN_PREFIX, SESSION_PREFIX, new_csrf_token, new_token, token_hash

Scope = Literal["full", "read", "submit"]
SCOPES: tuple[Scope, ...] = ("full", "read", "submit")

#: Last-seen and last-used times are written at most this often.
TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """Who a request is from, and how it said so."""

    user: User
    via: Literal["cookie", "bearer", "api_token"]
    session_id: UUID | None = None
    csrf_token: str | None = None
    api_token_id: UUID | None = None
    #: Sessions can do everything; an API token what its scope allows.
    scope: Scope = "full"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _session_alive(settings: Settings, now: datetime):
    return (AuthSession.expires_at > now,
            AuthSession.last_seen_at > now - timedelta(seconds=settings.session_idle_timeout_s))


def _token_alive(now: datetime):
    return (ApiToken.revoked_at.is_(None), or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))


# --------------------------------------------------------------------------- sessions
async def start_session(session: AsyncSession, user: User, settings: Settings) -> tuple[str, AuthSession]:
    """A new signed-in session; its token (shown once) and row."""
    now = _now()
    token = new_token(SESSION_PREFIX)
    row = AuthSession(user_id=user.id, token_hash=token_hash(token), csrf_token=new_csrf_token(),
                      expires_at=now + timedelta(seconds=settings.session_ttl_s), last_seen_at=now)
    # The user's ended sessions go as a new one starts, so the table does not grow forever.
    await session.execute(
        delete(AuthSession).where(
            AuthSession.user_id == user.id,
            or_(AuthSession.expires_at <= now,
                AuthSession.last_seen_at <= now - timedelta(seconds=settings.session_idle_timeout_s)),
        )
    )
    session.add(row)
    await session.commit()
    return token, row


async def end_session(session: AsyncSession, session_id: UUID) -> None:
    await session.execute(delete(AuthSession).where(AuthSession.id == session_id))
    await session.commit()


async def end_sessions(session: AsyncSession, user_id: UUID, *, keep: UUID | None = None) -> None:
    """End every session of the user but ``keep`` (uncommitted: part of the caller's change)."""
    query = delete(AuthSession).where(AuthSession.user_id == user_id)
    if keep is not None:
        query = query.where(AuthSession.id != keep)
    await session.execute(query)


async def revoke_api_tokens(session: AsyncSession, user_id: UUID) -> None:
    """Revoke every API token of the user (uncommitted)."""
    await session.execute(
        update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)).values(revoked_at=_now())
    )


async def caller_for_token(
    session: AsyncSession, token: str, via: Literal["cookie", "bearer"], settings: Settings
) -> Caller | None:
    """The caller a session or API token speaks for; None when it is unknown, ended or
    revoked. Cookies carry session tokens only."""
    if token.startswith(SESSION_PREFIX):
        now = _now()
        found = (await session.execute(
            select(User, AuthSession.id, AuthSession.csrf_token, AuthSession.last_seen_at)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(AuthSession.token_hash == token_hash(token), *_session_alive(settings, now))
        )).first()
        if found is None:
            return None
        user, session_id, csrf, last_seen = found
        if last_seen <= now - TOUCH_INTERVAL:
            await session.execute(update(AuthSession).where(AuthSession.id == session_id).values(last_seen_at=now))
            await session.commit()
        return Caller(user=user, via=via, session_id=session_id, csrf_token=csrf)
    if token.startswith(API_TOKEN_PREFIX) and via == "bearer":
        return await caller_for_api_token(session, token)
    return None


async def caller_for_api_token(session: AsyncSession, token: str) -> Caller | None:
    if not token.startswith(API_TOKEN_PREFIX):
        return None
    now = _now()
    found = (await session.execute(
        select(User, ApiToken.id, ApiToken.scope, ApiToken.last_used_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == token_hash(token), *_token_alive(now))
    )).first()
    if found is None:
        return None
    user, token_id, scope, last_used = found
    if last_used is None or last_used <= now - TOUCH_INTERVAL:
        await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        await session.commit()
    return Caller(user=user, via="api_token", api_token_id=token_id, scope=scope)


async def still_valid(session: AsyncSession, caller: Caller, settings: Settings) -> bool:
    """Whether the session or API token the caller came with still stands (an open event
    stream asks this at each heartbeat); keeps the session alive while it does."""
    now = _now()
    if caller.session_id is not None:
        last_seen = await session.scalar(
            select(AuthSession.last_seen_at).where(AuthSession.id == caller.session_id, *_session_alive(settings, now))
        )
        if last_seen is not None and last_seen <= now - TOUCH_INTERVAL:
            await session.execute(
                update(AuthSession).where(AuthSession.id == caller.session_id).values(last_seen_at=now)
            )
            await session.commit()
        return last_seen is not None
    if caller.api_token_id is not None:
        return bool(await session.scalar(
            select(func.count()).where(ApiToken.id == caller.api_token_id, *_token_alive(now))
        ))
    return False


# --------------------------------------------------------------------------- API tokens
async def create_api_token(
    session: AsyncSession, user_id: UUID, name: str, scope: Scope = "full", expires_in_days: int | None = None
) -> tuple[str, ApiToken]:
    token = new_token(API_TOKEN_PREFIX)
    expires_at = _now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash(token), prefix=token[:12], scope=scope,
                   expires_at=expires_at)
    session.add(row)
    await session.commit()
    await session.refresh(row)
    return token, row
