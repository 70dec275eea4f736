"""The owner of everything until sign-in exists: one local user, made at startup."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inflab.common.db.models import User


async def ensure_user(sessionmaker: async_sessionmaker[AsyncSession], email: str) -> User:
    """Create the user if missing and return it. Safe when replicas start together."""
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(User).values(email=email).on_conflict_do_nothing(index_elements=[User.email]))
        return (await session.scalars(select(User).where(User.email == email))).one()
