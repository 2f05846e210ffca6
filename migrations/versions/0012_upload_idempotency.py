"""Uploads and webhook registrations honour an Idempotency-Key as job creation does: checkpoints,
datasets and webhook endpoints record the key (scoped to the project, hashed) and what it stood
for (the file's name and SHA-256; the registration's URL, events and description).

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

IDEMPOTENT_TABLES = ("checkpoints", "datasets", "webhook_endpoints")


def upgrade() -> None:
    # Plain ALTERs and a unique index: on SQLite a constraint would rebuild each table, which
    # jobs' foreign keys forbid once rows exist.
    for table in IDEMPOTENT_TABLES:
        op.add_column(table, sa.Column("idempotency_key", sa.String(255), nullable=True))
        op.add_column(table, sa.Column("request_hash", sa.String(64), nullable=True))
        op.create_index(f"ix_{table}_idempotency_key", table, ["idempotency_key"], unique=True)


def downgrade() -> None:
    for table in reversed(IDEMPOTENT_TABLES):
        op.drop_index(f"ix_{table}_idempotency_key", table_name=table)
        op.drop_column(table, "request_hash")
        op.drop_column(table, "idempotency_key")
