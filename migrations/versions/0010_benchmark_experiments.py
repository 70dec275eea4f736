"""experiments.benchmark: a benchmark experiment's ground truth and function tokens

A benchmark experiment (``kind: benchmark``) keeps its documents as training pairs and its
queries as evaluation questions; this column holds the rest of its ``BenchmarkSpec``
(query id -> relevant document ids, the function tokens). NULL for every other experiment,
including all rows from before this revision.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("benchmark", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("experiments", "benchmark")
