"""``audit_events``: who did what. Nothing recorded which key created a job, checkpoint or
dataset, or who revoked a key, deleted a job or a project: once done, such a change left no
trace. Each change a key (or ``rift-admin``) makes now writes one row in its own transaction
(``persistence.audit``): the change and its trail commit together or not at all.

``project_id`` is a plain column, not a foreign key: a project's trail must survive the
project's deletion (a cascade would delete the very record of who deleted it). The janitor
prunes rows older than ``AUDIT_RETENTION_DAYS``.

Revision ID: 0034
Revises: 0033
Create Date: 2026-11-28 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0034"
down_revision: str | None = "0033"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "audit_events"
INDEXES = {
    # A project's page, newest first (GET /v1/audit-events).
    "ix_audit_events_project_id_occurred_at_id": ["project_id", "occurred_at", "id"],
    # Every project's page (the admin's list) and the janitor's prune by age.
    "ix_audit_events_occurred_at_id": ["occurred_at", "id"],
}


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=True),
        sa.Column("actor", sa.String(16), nullable=False),
        sa.Column("actor_key_id", sa.String(32), nullable=True),
        sa.Column("actor_key_prefix", sa.String(16), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_kind", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("details", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
    )
    for name, columns in INDEXES.items():
        op.create_index(name, TABLE, columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name=TABLE)
    op.drop_table(TABLE)
