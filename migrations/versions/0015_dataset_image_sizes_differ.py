"""``datasets.image_sizes_differ``: whether an uploaded ImageFolder's images are not all of one
size, found by the upload scan, so that ``POST /v1/jobs`` can ask for ``dataset.image_size``
instead of queueing a job that fails reading them. NULL on rows recorded before (unknown).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26 09:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("image_sizes_differ", sa.Boolean(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a plain column in place. A batch "move and copy" would drop the
        # datasets table, which the jobs' foreign keys refuse (or, with ON DELETE CASCADE, obey
        # by deleting their rows).
        op.execute("ALTER TABLE datasets DROP COLUMN image_sizes_differ")
        return
    op.drop_column("datasets", "image_sizes_differ")
