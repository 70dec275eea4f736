"""Row level security, the second wall: a request's database session runs every
transaction as the ``inflab_app`` role with ``app.user_id`` set to the caller, so the
policies of migration 0004 hide every row that is not theirs even if a query forgets its
``owner_id`` filter.

Sessions made without a user (``app.state.sessionmaker``) stay the connecting role, which
owns the tables and so is not subject to the policies: that is the system path of the
event persister (it stores events of every user's runs), the run-submission consumer
(before it knows whose token it holds) and the sign-in lookups by email or token hash.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

#: The role migration 0004 creates and writes the policies for.
APP_ROLE = "inflab_app"

_SCOPE = text("SELECT set_config('role', :role, true), set_config('app.user_id', :user_id, true)")


class UserScopedSession(Session):
    """A session whose ``info["user_id"]`` scopes each of its transactions (see module doc)."""


@event.listens_for(UserScopedSession, "after_begin")
def _scope_transaction(session: Session, transaction, connection) -> None:
    user_id = session.info.get("user_id")
    if user_id is None:
        raise RuntimeError("a user-scoped session needs info['user_id']")
    # Both are transaction-local (SET LOCAL): a pooled connection carries nothing over.
    connection.execute(_SCOPE, {"role": APP_ROLE, "user_id": str(user_id)})


def user_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=UserScopedSession)


def session_for(sessionmaker: async_sessionmaker[AsyncSession], user_id: UUID) -> AsyncSession:
    return sessionmaker(info={"user_id": user_id})
