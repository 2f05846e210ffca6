"""A job may carry its own wall-clock limit (``time_limit_seconds``, at most the service's
``JOB_TIME_LIMIT_SECONDS``); NULL keeps the service's.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("time_limit_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "time_limit_seconds")
