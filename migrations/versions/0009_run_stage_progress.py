"""runs.stage_progress: each stage's latest reported fraction, kept on the run row

The persister used to re-read every progress event of a run to recompute its progress bar
on each event (O(steps²) over a run). Each stage's latest fraction, with the producer's
time that decides "latest", is now kept on the run (``{"train": {"fraction": 0.4,
"time": "..."}}``) and updated as events arrive. Runs still going are filled in from their
stored progress events.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column("stage_progress", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.execute(
        """
        UPDATE runs SET stage_progress = latest.fractions
        FROM (
            SELECT run_id, jsonb_object_agg(key, jsonb_build_object('fraction', fraction, 'time', at)) AS fractions
            FROM (
                SELECT DISTINCT ON (run_id, stage, method)
                       run_id,
                       CASE WHEN stage = 'influence' AND method IS NOT NULL THEN 'influence.' || method
                            ELSE stage END AS key,
                       COALESCE((payload->>'fraction')::float, 0) AS fraction,
                       payload->>'time' AS at
                FROM run_events
                WHERE kind = 'progress'
                ORDER BY run_id, stage, method, (payload->>'time')::timestamptz DESC, id DESC
            ) AS per_stage
            GROUP BY run_id
        ) AS latest
        WHERE runs.id = latest.run_id AND runs.status NOT IN ('completed', 'failed', 'cancelled')
        """
    )


def downgrade() -> None:
    op.drop_column("runs", "stage_progress")
