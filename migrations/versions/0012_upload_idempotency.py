"""Uploads honour an Idempotency-Key as job creation does: checkpoints and datasets record the
key (scoped to the project, hashed) and what it stood for (the file's name and SHA-256).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPLOAD_TABLES = ("checkpoints", "datasets")


def upgrade() -> None:
    for table in UPLOAD_TABLES:
        # Batch mode: SQLite adds a unique constraint only by rebuilding the table.
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
            batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
            batch.create_unique_constraint(f"uq_{table}_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    for table in reversed(UPLOAD_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_idempotency_key", type_="unique")
            batch.drop_column("request_hash")
            batch.drop_column("idempotency_key")
