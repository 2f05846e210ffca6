"""Datasets record what the validator found on upload: content (images or feature vectors),
image shape or feature count, examples, classes and the label range.

Revision ID: 0003
Revises: 0002 (which added num_examples)
Create Date: 2026-11-25 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Nullable: rows recorded before this revision keep None (their geometry is read from the store).
COLUMNS = (
    ("content", sa.String(16)),
    ("image_channels", sa.Integer()),
    ("image_height", sa.Integer()),
    ("image_width", sa.Integer()),
    ("num_features", sa.Integer()),
    ("num_classes", sa.Integer()),
    ("label_min", sa.BigInteger()),
    ("label_max", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        for name, column_type in COLUMNS:
            batch.add_column(sa.Column(name, column_type, nullable=True))
        batch.create_check_constraint(op.f("ck_datasets_content"), "content IN ('images', 'features')")


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint(op.f("ck_datasets_content"), type_="check")
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
