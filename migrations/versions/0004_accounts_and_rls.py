"""accounts: passwords, provider identities, sessions, API tokens; row level security

Row level security is the second wall behind the gateway's owner-scoped queries. The
gateway runs each request's transactions as the ``inflab_app`` role (``SET LOCAL ROLE``)
with ``app.user_id`` set to the caller (``inflab.gateway.auth.rls``); the policies below
then hide every row that is not the caller's. The connecting role (the tables' owner,
which ran this migration) is not subject to them: that is the system path the event
persister, the run-submission consumer and the sign-in lookups take. See docs/security.md.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

APP_ROLE = "inflab_app"

#: Tables whose rows carry their owner, and the column naming it.
OWNED = {
    "users": "id",
    "identities": "user_id",
    "auth_sessions": "user_id",
    "api_tokens": "user_id",
    "experiments": "owner_id",
    "runs": "owner_id",
}
#: Tables whose rows belong to a run, and so to the run's owner.
RUN_CHILDREN = ("run_events", "metrics", "predictions", "checkpoints", "generations", "influence_results")


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def _user_fk() -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    return (
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
    )


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.Text(), nullable=True))
    op.create_table(
        "identities",
        sa.Column("id", sa.UUID(), nullable=False),
        *_user_fk(),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),
    )
    op.create_index(op.f("ix_identities_user_id"), "identities", ["user_id"])
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.UUID(), nullable=False),
        *_user_fk(),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "auth_sessions", ["user_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        *_user_fk(),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        _created_at(),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])

    # The role RLS applies to. Roles are per server, not per database: several databases
    # (test runs, stacks) share it, so create it only if missing.
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} NOLOGIN;
          END IF;
        END $$;
        """
    )
    # The migrating role must be able to SET ROLE to it (implicit for a superuser).
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    # Tables later migrations create are the app's to use too (their policies are theirs to add).
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}")
    op.execute(f"REVOKE ALL ON alembic_version FROM {APP_ROLE}")

    # The caller, as the gateway set it for this transaction; NULL (no row visible) when unset.
    op.execute(
        """
        CREATE FUNCTION inflab_current_user_id() RETURNS uuid
        LANGUAGE sql STABLE AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$
        """
    )
    for table, column in OWNED.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY owner_only ON {table} TO {APP_ROLE} "
            f"USING ({column} = inflab_current_user_id()) WITH CHECK ({column} = inflab_current_user_id())"
        )
    for table in RUN_CHILDREN:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        # ``runs`` is itself behind its policy, so this sees only the caller's runs.
        owned_run = "run_id IN (SELECT id FROM runs)"
        op.execute(f"CREATE POLICY owner_only ON {table} TO {APP_ROLE} USING ({owned_run}) WITH CHECK ({owned_run})")


def downgrade() -> None:
    for table in (*OWNED, *RUN_CHILDREN):
        op.execute(f"DROP POLICY IF EXISTS owner_only ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS inflab_current_user_id()")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    # The role stays: other databases on the server may use it.
    op.drop_table("api_tokens")
    op.drop_table("auth_sessions")
    op.drop_table("identities")
    op.drop_column("users", "password_hash")
