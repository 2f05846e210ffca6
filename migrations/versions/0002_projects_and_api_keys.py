"""Projects and API keys; every checkpoint, dataset and job belongs to a project.

Rows written before this revision have no project (``project_id`` NULL): no key can see them.
Jobs get their cost estimate (example-passes) and datasets their number of training examples.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED_TABLES = ("checkpoints", "datasets", "jobs")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_job_cost", sa.BigInteger(), nullable=True),
        sa.Column("max_requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_streams_per_key", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.UniqueConstraint("name", name="uq_projects_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE",
                                name="fk_api_keys_project_id_projects"),
    )
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"])
    for table in OWNED_TABLES:
        # Batch mode: SQLite adds a foreign key only by rebuilding the table.
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
            batch.create_foreign_key(f"fk_{table}_project_id_projects", "projects",
                                     ["project_id"], ["id"], ondelete="RESTRICT")
            batch.create_index(f"ix_{table}_project_id", ["project_id"])
            if table == "jobs":
                batch.add_column(sa.Column("cost_estimate", sa.BigInteger(), nullable=True))
            if table == "datasets":
                batch.add_column(sa.Column("num_examples", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_project_id_created_at_id", "jobs",
                    ["project_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_project_id_created_at_id", table_name="jobs")
    for table in reversed(OWNED_TABLES):
        with op.batch_alter_table(table) as batch:
            if table == "jobs":
                batch.drop_column("cost_estimate")
            if table == "datasets":
                batch.drop_column("num_examples")
            batch.drop_index(f"ix_{table}_project_id")
            batch.drop_constraint(f"fk_{table}_project_id_projects", type_="foreignkey")
            batch.drop_column("project_id")
    op.drop_index("ix_api_keys_project_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("projects")
