"""predictions: the arithmetic each tracked answer was decoded in

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null for rows stored before the trainer reported it (they were float32).
    op.add_column("predictions", sa.Column("precision", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("predictions", "precision")
