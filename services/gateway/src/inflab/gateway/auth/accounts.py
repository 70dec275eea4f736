"""Accounts in Postgres: creating them, checking a password, verified addresses, provider
identities, preferences. No HTTP here; sessions and API tokens are in :mod:`.sessions`.
The sign-in routes call these with a system session (see :mod:`.rls`), before a user is
known."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from inflab.core.db.models import Identity, User
from inflab.gateway.auth.passwords import PasswordHasher
from inflab.gateway.auth.sessions import end_sessions, revoke_api_tokens

# Deliberately loose (one @, a dot-free domain allowed, no spaces): the address is
# confirmed by the link mailed to it, not by a regular expression.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def normalize_email(email: str) -> str | None:
    """The stored form of an address, or None if it is not one."""
    email = email.strip().lower()
    return email if _EMAIL.match(email) and len(email) <= 320 else None


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def create_account(
    session: AsyncSession, email: str, password_hash: str, display_name: str | None = None
) -> User | None:
    """A new password account (committed), unverified; None when the email has one."""
    user_id = await session.scalar(
        insert(User).values(email=email, password_hash=password_hash, display_name=display_name)
        .on_conflict_do_nothing(index_elements=[User.email]).returning(User.id)
    )
    await session.commit()
    return None if user_id is None else await session.get_one(User, user_id)


async def find_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email))


async def authenticate(session: AsyncSession, hasher: PasswordHasher, email: str, password: str) -> User | None:
    """The account if ``password`` is its password. A hash made with older argon2
    parameters is replaced by one made with today's (committed)."""
    user = await find_by_email(session, email)
    # Checked even for an unknown email, so the time taken does not tell which exist.
    verified = await hasher.verify(user.password_hash if user else None, password)
    if user is None or not verified.ok:
        return None
    if verified.needs_rehash:
        user.password_hash = await hasher.hash(password)
        await session.commit()
    return user


async def mark_verified(session: AsyncSession, user: User) -> None:
    """Uncommitted."""
    if user.email_verified_at is None:
        user.email_verified_at = _now()


async def set_password(session: AsyncSession, user_id: UUID, password_hash: str) -> None:
    """Uncommitted."""
    await session.execute(update(User).where(User.id == user_id).values(password_hash=password_hash))


async def user_for_identity(session: AsyncSession, provider: str, subject: str, email: str) -> User:
    """The account a provider's verified identity signs in to: the one already linked,
    else the one with the same email (now linked), else a new one (verified).

    Linking to an account whose address was never verified is how a pre-registered
    account is taken over: someone registers the victim's address with a password of
    their own and waits. So such an account loses its password, its sessions and its API
    tokens as it is linked; only the provider's proof of the address remains."""
    linked = await session.scalar(
        select(User).join(Identity, Identity.user_id == User.id)
        .where(Identity.provider == provider, Identity.subject == subject)
    )
    if linked is not None:
        return linked
    await session.execute(
        insert(User).values(email=email, email_verified_at=_now()).on_conflict_do_nothing(index_elements=[User.email])
    )
    user = (await session.scalars(select(User).where(User.email == email).with_for_update())).one()
    if user.email_verified_at is None:
        user.password_hash = None
        await end_sessions(session, user.id)
        await revoke_api_tokens(session, user.id)
        user.email_verified_at = _now()
    await session.execute(
        insert(Identity).values(user_id=user.id, provider=provider, subject=subject, email=email)
        .on_conflict_do_nothing(constraint="uq_identities_provider_subject")
    )
    await session.commit()
    return user


async def sign_in_methods(session: AsyncSession, user: User) -> list[str]:
    providers = await session.scalars(select(Identity.provider).where(Identity.user_id == user.id).distinct())
    return (["password"] if user.password_hash else []) + sorted(providers)
