"""MRC rows record whether the module's weight gradient was exactly zero on every MRC batch
(``rift.mrc_zero_gradient``: the output does not depend on it, its MRC is 0 by construction and
the selection never chooses it). NULL on rows recorded before: unknown, read as not flagged.

Revision ID: 0033
Revises: 0032
Create Date: 2026-11-28 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0033"
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mrc_rows", sa.Column("zero_gradient", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("mrc_rows", "zero_gradient")
