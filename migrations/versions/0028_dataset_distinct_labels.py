"""``datasets.num_distinct_labels`` and ``datasets.distinct_labels``: how many distinct labels an
uploaded npz holds (train and test), and which, in ascending order, when there are at most 1,000
(JSON), found by the upload's validation as it scans the labels. Job creation's refusal of too
few classes then says when labels skip numbers (0, 100, 200 count 201 classes: renumber them),
as the library does. NULL on rows recorded before (not recounted: that would re-read each stored
file), on ImageFolder rows, and for the list past 1,000 labels; those keep today's message.

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-27 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("num_distinct_labels", "distinct_labels")


def upgrade() -> None:
    op.add_column("datasets", sa.Column("num_distinct_labels", sa.Integer(), nullable=True))
    op.add_column("datasets", sa.Column(
        "distinct_labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
        nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        if op.get_bind().dialect.name == "sqlite":
            # SQLite (3.35+) drops a plain column in place. A batch "move and copy" would drop
            # the datasets table, which the jobs' foreign keys refuse (or, with ON DELETE
            # CASCADE, obey by deleting their rows).
            op.execute(f"ALTER TABLE datasets DROP COLUMN {column}")
        else:
            op.drop_column("datasets", column)
