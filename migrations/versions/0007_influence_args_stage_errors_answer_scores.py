"""experiments.influence_args, runs.stage_errors, generations.scores

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # '{}' for existing rows: every method's default arguments, and no stage errors.
    op.add_column("experiments", sa.Column("influence_args", JSONB, nullable=False,
                                           server_default=sa.text("'{}'::jsonb")))
    op.add_column("runs", sa.Column("stage_errors", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")))
    # Null for answers stored before they were scored, and for questions without a reference.
    op.add_column("generations", sa.Column("scores", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("generations", "scores")
    op.drop_column("runs", "stage_errors")
    op.drop_column("experiments", "influence_args")
