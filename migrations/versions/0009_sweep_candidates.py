"""Sweeps in the service: one row per (module, lr) candidate, run by its own worker task under
its own lease (persistence/stage_shards.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "'pending', 'running', 'done', 'failed', 'cancelled'"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweep_candidates",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("candidate", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(255), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "candidate", name="pk_sweep_candidates"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_sweep_candidates_job_id_jobs"),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="ck_sweep_candidates_status"),
    )
    op.create_index("ix_sweep_candidates_status_lease_expires_at", "sweep_candidates",
                    ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sweep_candidates_status_lease_expires_at", table_name="sweep_candidates")
    op.drop_table("sweep_candidates")
