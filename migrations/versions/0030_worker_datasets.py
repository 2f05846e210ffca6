"""``workers.datasets``: the built-in datasets (cifar10, cifar100, svhn, mnist) whose files the
worker found in its ``DATA_ROOT``, as a JSON list of names, written at registration and again
when they change (persistence/workers.py), so that job creation can refuse a built-in dataset
that no live worker holds. NULL on the rows of workers that do not report it (a release before
this one, during a rolling upgrade): those count as holding any dataset, as before.

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-27 23:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers", sa.Column(
        "datasets", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a plain column in place, as 0028 does.
        op.execute("ALTER TABLE workers DROP COLUMN datasets")
    else:
        op.drop_column("workers", "datasets")
