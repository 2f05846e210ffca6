"""Indexes an organisation-sized database needs (bench/api_load.py: 50 projects, 20,000 jobs):

* ``jobs (project_id, status, created_at, id)``: a project's jobs filtered by status
  (``GET /v1/jobs?status=``) walk it newest first from the cursor instead of reading every job of
  the project with that status and sorting them; the active-job count of the quota checks and
  ``GET /v1/usage`` reads the project's queued and running entries only.
* ``jobs (checkpoint_id)`` and ``jobs (dataset_id)``: deleting a checkpoint or a dataset looks
  for the jobs that use it, and Postgres' foreign-key check of the delete does too; both read
  the whole jobs table before.
* ``webhook_deliveries (job_id, event_type)``: a job's end looks up the messages already
  written for it (one per endpoint), which read the whole delivery log before.

and one less: ``jobs (created_at, id)`` (every project's jobs newest first) served no query (each
list is one project's), and the planner took it for a project's page, walking every project's
newer jobs to find the project's (15,048 rows read for a 101-row page of a project whose jobs
were older than the others').

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-27 02:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_jobs_project_id_status_created_at_id", "jobs",
     ["project_id", "status", "created_at", "id"]),
    ("ix_jobs_checkpoint_id", "jobs", ["checkpoint_id"]),
    ("ix_jobs_dataset_id", "jobs", ["dataset_id"]),
    ("ix_webhook_deliveries_job_id_event_type", "webhook_deliveries", ["job_id", "event_type"]),
)


DROPPED = ("ix_jobs_created_at_id", "jobs", ["created_at", "id"])


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    op.drop_index(DROPPED[0], table_name=DROPPED[1])


def downgrade() -> None:
    op.create_index(*DROPPED)
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
