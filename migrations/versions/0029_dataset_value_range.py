"""``datasets.value_min``/``value_max`` and ``channel_value_min``/``channel_value_max``: the
smallest and largest input value of an uploaded npz (x and x_test, in the inputs' units: uint8
pixels as value / 255), overall and per channel (images) or feature (feature vectors, up to
1,000; JSON lists), found by the upload's validation as it reads the values. Job creation then
refuses an explicit ``attack.domain`` the data lie outside (``"unit"`` on feature vectors,
bounds narrower than the values), as the library does when the job runs. NULL on rows recorded
before (not rescanned: that would re-read each stored file; their jobs keep the run-time check
alone), on ImageFolder rows, and for the lists past 1,000 features.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-27 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("value_min", "value_max", "channel_value_min", "channel_value_max")


def upgrade() -> None:
    op.add_column("datasets", sa.Column("value_min", sa.Float(), nullable=True))
    op.add_column("datasets", sa.Column("value_max", sa.Float(), nullable=True))
    for column in ("channel_value_min", "channel_value_max"):
        op.add_column("datasets", sa.Column(
            column, sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    for column in reversed(COLUMNS):
        if op.get_bind().dialect.name == "sqlite":
            # SQLite (3.35+) drops a plain column in place. A batch "move and copy" would drop
            # the datasets table, which the jobs' foreign keys refuse (or, with ON DELETE
            # CASCADE, obey by deleting their rows).
            op.execute(f"ALTER TABLE datasets DROP COLUMN {column}")
        else:
            op.drop_column("datasets", column)
