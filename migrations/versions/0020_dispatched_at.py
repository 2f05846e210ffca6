"""Rows a message drives remember when it was last sent: ``dispatched_at`` on job stages,
materializations, MRC shards and sweep candidates. The workers' recovery loop sends again a row
still waiting for a worker ``QUEUED_RESEND_AFTER_SECONDS`` after it (``persistence/resend.py``): a
message lost before any worker took it (a broker restarted without persistence, a process killed
between its commit and the send) left a queued materialization queued for ever. Rows from before
stay null and count from their ``created_at`` (a stage: its job's ``updated_at``, the rule stages
had before).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-26 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("job_stages", "materializations", "mrc_shards", "sweep_candidates")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "dispatched_at")
