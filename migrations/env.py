"""Alembic environment (async, asyncpg). The URL is the ``sqlalchemy.url`` main option when
set by :mod:`inflab.core.db.migrate`, else ``INFLAB_DATABASE_URL``."""

import asyncio
import os

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from inflab.core.db.models import Base
from inflab.core.db.session import async_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("INFLAB_DATABASE_URL", "")
    if not url:
        raise RuntimeError("set INFLAB_DATABASE_URL to migrate")
    return async_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _do_run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_do_run)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
