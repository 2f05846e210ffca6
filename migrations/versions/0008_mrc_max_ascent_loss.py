"""MRC rows record the largest loss the ascent reached (Δ = 0 not counted), the tie-breaker of the
selection rule (docs/algorithm.md, "Selection").

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-25 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mrc_rows", sa.Column("max_ascent_loss", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("mrc_rows", "max_ascent_loss")
