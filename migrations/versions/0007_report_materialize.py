"""The request id of a job (logs from API to worker) and the weights materialized at other α.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-25 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MATERIALIZATION_STATUSES = "'queued', 'running', 'succeeded', 'failed'"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("request_id", sa.String(64), nullable=True))
    op.create_table(
        "materializations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("evaluate", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("artifact_name", sa.String(64), nullable=False),
        sa.Column("clean_accuracy", sa.Float(), nullable=True),
        sa.Column("robust_accuracy", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_materializations"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_materializations_job_id_jobs"),
        sa.UniqueConstraint("job_id", "artifact_name", name="uq_materializations_job_id"),
        sa.CheckConstraint(f"status IN ({MATERIALIZATION_STATUSES})",
                           name="ck_materializations_status"),
    )


def downgrade() -> None:
    op.drop_table("materializations")
    op.drop_column("jobs", "request_id")
