"""Every table holds user data or the gateway's own counters, so every table must have row
level security on with a policy for the application role, and no table may exist that the
models do not know of. The tables are enumerated from the SQLAlchemy metadata and from the
migrated database itself, so a table added later without its policy fails here."""

from __future__ import annotations

import asyncpg
import pytest

from inflab.core.db.models import Base
from inflab.gateway.auth.rls import APP_ROLE

pytestmark = pytest.mark.integration

#: Alembic's own bookkeeping: no user data, and the application role has no access to it.
NOT_USER_DATA = {"alembic_version"}


async def test_every_table_has_row_level_security_with_a_policy_for_the_app_role(database_url: str) -> None:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = {
            row["relname"]: row["relrowsecurity"]
            for row in await conn.fetch(
                "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            )
        }
        policies: dict[str, list[str]] = {}
        for row in await conn.fetch("SELECT tablename, roles FROM pg_policies WHERE schemaname = 'public'"):
            policies.setdefault(row["tablename"], []).extend(row["roles"])
        app_can_read_alembic = await conn.fetchval(
            "SELECT has_table_privilege($1, 'alembic_version', 'SELECT')", APP_ROLE)
    finally:
        await conn.close()

    modelled = set(Base.metadata.tables)
    assert modelled, "no tables in the metadata"
    assert modelled <= set(tables), f"tables the migrations did not create: {sorted(modelled - set(tables))}"
    unmodelled = set(tables) - modelled - NOT_USER_DATA
    assert not unmodelled, f"tables no model describes (and no test covers): {sorted(unmodelled)}"
    without_rls = sorted(t for t in modelled if not tables[t])
    assert not without_rls, f"row level security is off on {without_rls}"
    without_policy = sorted(t for t in modelled if APP_ROLE not in policies.get(t, []))
    assert not without_policy, f"no policy for {APP_ROLE} on {without_policy}"
    assert not app_can_read_alembic
