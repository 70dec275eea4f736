"""runs: the dispatch outbox (which runs are handed to JetStream, on which queue) and the
Idempotency-Key a run was started with

A run is committed with ``dispatched_at`` NULL, in the same transaction as its row: that
row is the outbox entry. The gateway's dispatcher publishes the train request and sets
``dispatched_at`` afterwards (``inflab.gateway.dispatch``), so a gateway that dies between
the commit and the publish loses nothing. Runs from before this revision were published
when they were created: they count as dispatched then.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("dispatch_queue", sa.String(128), nullable=True))
    op.add_column("runs", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.execute("UPDATE runs SET dispatched_at = created_at")
    op.create_unique_constraint("uq_runs_owner_idempotency_key", "runs", ["owner_id", "idempotency_key"])
    # What the dispatcher reads: the queued runs of its queue, oldest first.
    op.create_index(
        "ix_runs_queued_dispatch", "runs", ["dispatch_queue", "created_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_queued_dispatch", table_name="runs")
    op.drop_constraint("uq_runs_owner_idempotency_key", "runs", type_="unique")
    op.drop_column("runs", "idempotency_key")
    op.drop_column("runs", "dispatch_queue")
    op.drop_column("runs", "dispatched_at")
