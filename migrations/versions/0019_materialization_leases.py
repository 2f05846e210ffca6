"""Materializations get a lease like a stage's: the worker making one holds it (``lease_owner``
until ``lease_expires_at``, renewed by a heartbeat), so one whose worker died is queued again by
the recovery loop instead of staying ``running`` for ever; ``attempts`` counts claims and
``started_at`` is the first claim. Rows running before have no lease: they count as expired
(their worker is gone after the upgrade's restart) and are queued again.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-26 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("materializations", sa.Column("lease_owner", sa.String(255), nullable=True))
    op.add_column("materializations",
                  sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("materializations",
                  sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("materializations",
                  sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_materializations_status_lease_expires_at", "materializations",
                    ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_materializations_status_lease_expires_at", table_name="materializations")
    op.drop_column("materializations", "started_at")
    op.drop_column("materializations", "attempts")
    op.drop_column("materializations", "lease_expires_at")
    op.drop_column("materializations", "lease_owner")
