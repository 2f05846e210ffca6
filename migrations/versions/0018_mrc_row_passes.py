"""MRC rows record the ascent passes run and whether the row's values are exact: under
``mrc.table = "selection"`` a module stopped early carries lower bounds (``exact`` false). NULL on
rows recorded before (every such row ran all passes: exact).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-26 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mrc_rows", sa.Column("passes", sa.Integer(), nullable=True))
    op.add_column("mrc_rows", sa.Column("exact", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("mrc_rows", "exact")
    op.drop_column("mrc_rows", "passes")
