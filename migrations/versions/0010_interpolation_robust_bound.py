"""Interpolation points record the upper bound of a point whose attack stopped early
(``robust_accuracy_at_most``, interpolation.curve 'selection'), so the API can show it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows recorded before this revision keep NULL: their bound was never stored.
    op.add_column("interpolation_points",
                  sa.Column("robust_accuracy_at_most", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("interpolation_points", "robust_accuracy_at_most")
