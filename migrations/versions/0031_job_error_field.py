"""``jobs.error_field``: the config setting a failed job's library error blames
(``RiftError.field``, e.g. ``attack.domain``), shown as ``error.field`` in the job's JSON. Before,
it reached only the ``failure_pending``/``job_failed`` events' payloads: the job row had no column
for it, so ``GET /v1/jobs/{id}`` showed the error's code and message only. NULL on the rows of
jobs that failed before this one (and where no setting is blamed).

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-28 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("error_field", sa.Text(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a plain column in place, as 0028 does.
        op.execute("ALTER TABLE jobs DROP COLUMN error_field")
    else:
        op.drop_column("jobs", "error_field")
