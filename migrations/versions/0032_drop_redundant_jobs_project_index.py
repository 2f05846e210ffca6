"""Drop ``ix_jobs_project_id``: every query it could serve is served by
``ix_jobs_project_id_created_at_id`` and ``ix_jobs_project_id_status_created_at_id``, which lead
with ``project_id`` too (and the foreign key's checks as well). Kept, it misled the planner on a
project with few jobs: the active-job count of every job creation's quota check (``status IN
('queued', 'running')``) was read through it, every job of the project fetched and filtered,
instead of the active ones alone from the status index (``tests/api/test_query_plans.py`` failed
on about half its runs on a 2-core machine); and every job insert maintained one index more.

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-28 01:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0032"
down_revision: str | None = "0031"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_jobs_project_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_project_id", "jobs", ["project_id"])
