"""validations: counterfactual validations of a run's attributions (LDS, removal test)

A run's child table like influence_results: row level security through the run.

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "inflab_app"


def upgrade() -> None:
    op.create_table(
        "validations",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("settings", JSONB, nullable=False),
        sa.Column("plan", JSONB, nullable=False),
        sa.Column("estimate", JSONB, nullable=True),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("summary", JSONB, nullable=True),
        sa.Column("detail_key", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_validations_run_id", "validations", ["run_id"])
    op.execute("ALTER TABLE validations ENABLE ROW LEVEL SECURITY")
    # ``runs`` is itself behind its policy, so this sees only the caller's runs.
    owned_run = "run_id IN (SELECT id FROM runs)"
    op.execute(f"CREATE POLICY owner_only ON validations TO {APP_ROLE} USING ({owned_run}) WITH CHECK ({owned_run})")


def downgrade() -> None:
    op.execute("DROP POLICY IF EXISTS owner_only ON validations")
    op.drop_table("validations")
