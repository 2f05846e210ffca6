"""A job's labels carry the job's project and creation instant, and are indexed in the job
list's order: ``job_labels (project_id, key, value, created_at, job_id)``.

``GET /v1/jobs?label=k=v`` read every job carrying the label in every project before (the
index was ``(key, value)``; ``job_labels`` had neither the project nor the time): 8,867 pages
for a label on 10 % of the jobs (bench/api_load.py). Now a filtered page walks the project's
entries of the label newest first from the cursor and reads its ``limit`` rows.

The existing rows get the copies from their jobs (``project_id`` stays NULL for jobs from before
projects, as the job's does). ``ix_job_labels_key_value`` goes: the label filter was its only
reader.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-27 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "job_labels"
OLD = ("ix_job_labels_key_value", ["key", "value"])
NEW = ("ix_job_labels_project_id_key_value_created_at_job_id",
       ["project_id", "key", "value", "created_at", "job_id"])


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("project_id", sa.String(32), nullable=True))
    op.add_column(TABLE, sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    # Correlated subqueries: the same statement on SQLite and Postgres; one pass over the labels.
    op.execute(
        "UPDATE job_labels SET "
        "project_id = (SELECT jobs.project_id FROM jobs WHERE jobs.id = job_labels.job_id), "
        "created_at = (SELECT jobs.created_at FROM jobs WHERE jobs.id = job_labels.job_id)")
    # A label whose job is gone (SQLite without foreign keys enforced could leave one) has no
    # instant to copy and shows in no list: it goes, so that the column can be NOT NULL.
    op.execute("DELETE FROM job_labels WHERE created_at IS NULL")
    # Batch mode: SQLite sets NOT NULL only by rebuilding the table, which nothing references.
    with op.batch_alter_table(TABLE) as batch:
        batch.alter_column("created_at", existing_type=sa.DateTime(timezone=True),
                           nullable=False)
    op.create_index(NEW[0], TABLE, NEW[1])
    op.drop_index(OLD[0], table_name=TABLE)


def downgrade() -> None:
    op.create_index(OLD[0], TABLE, OLD[1])
    op.drop_index(NEW[0], table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("created_at")
        batch.drop_column("project_id")
