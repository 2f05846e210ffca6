"""MRC across workers and the exact α selection: the mrc_shards table, and interpolation points
whose robust accuracy was not measured (NULL).

Revision ID: 0006
Revises: 0007
Create Date: 2026-11-25 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARD_STATUSES = "'pending', 'running', 'done', 'failed', 'cancelled'"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "mrc_shards",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("modules", _json(), nullable=False),
        sa.Column("inputs_key", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "shard", name="pk_mrc_shards"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_mrc_shards_job_id_jobs"),
        sa.CheckConstraint(f"status IN ({SHARD_STATUSES})", name="ck_mrc_shards_status"),
    )
    op.create_index("ix_mrc_shards_status_lease_expires_at", "mrc_shards",
                    ["status", "lease_expires_at"])
    with op.batch_alter_table("interpolation_points") as batch:
        batch.alter_column("robust_accuracy", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM interpolation_points WHERE robust_accuracy IS NULL")
    with op.batch_alter_table("interpolation_points") as batch:
        batch.alter_column("robust_accuracy", existing_type=sa.Float(), nullable=False)
    op.drop_index("ix_mrc_shards_status_lease_expires_at", table_name="mrc_shards")
    op.drop_table("mrc_shards")
