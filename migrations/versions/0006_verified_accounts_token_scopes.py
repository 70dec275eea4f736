"""accounts: verified emails, preferences, idle sessions, scoped and expiring API tokens,
single-use mailed links, shared rate-limit counters

Accounts that already have a provider identity count as verified (the provider vouched
for the address when it was linked); password-only accounts are not, and can ask for a
verification link (``POST /api/auth/verify-email/resend``). ``auth_throttles`` is the
gateway's own table: row level security is on with a policy that lets ``inflab_app`` see
nothing, and the role has no privileges on it either.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APP_ROLE = "inflab_app"


def upgrade() -> None:
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("display_name", sa.String(length=100), nullable=True))
    op.add_column("users", sa.Column("theme", sa.String(length=8), server_default="dark", nullable=False))
    op.execute("UPDATE users SET email_verified_at = created_at WHERE id IN (SELECT user_id FROM identities)")

    op.add_column(
        "auth_sessions",
        sa.Column("last_seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.add_column("api_tokens", sa.Column("scope", sa.String(length=16), server_default="full", nullable=False))
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))

    op.add_column("experiments", sa.Column("api_token_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        "experiments_api_token_id_fkey", "experiments", "api_tokens", ["api_token_id"], ["id"], ondelete="SET NULL"
    )
    op.create_index(op.f("ix_experiments_api_token_id"), "experiments", ["api_token_id"])

    op.create_table(
        "email_tokens",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_email_tokens_user_id"), "email_tokens", ["user_id"])
    op.execute("ALTER TABLE email_tokens ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY owner_only ON email_tokens TO {APP_ROLE} "
        "USING (user_id = inflab_current_user_id()) WITH CHECK (user_id = inflab_current_user_id())"
    )

    op.create_table(
        "auth_throttles",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("strikes", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_auth_throttles_updated_at"), "auth_throttles", ["updated_at"])
    op.execute("ALTER TABLE auth_throttles ENABLE ROW LEVEL SECURITY")
    # Counters of every client, used before anyone is signed in: the system path only.
    op.execute(f"CREATE POLICY gateway_only ON auth_throttles TO {APP_ROLE} USING (false) WITH CHECK (false)")
    op.execute(f"REVOKE ALL ON auth_throttles FROM {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("auth_throttles")
    op.drop_table("email_tokens")
    op.drop_index(op.f("ix_experiments_api_token_id"), table_name="experiments")
    op.drop_constraint("experiments_api_token_id_fkey", "experiments", type_="foreignkey")
    op.drop_column("experiments", "api_token_id")
    op.drop_column("api_tokens", "expires_at")
    op.drop_column("api_tokens", "scope")
    op.drop_column("auth_sessions", "last_seen_at")
    op.drop_column("users", "theme")
    op.drop_column("users", "display_name")
    op.drop_column("users", "email_verified_at")
