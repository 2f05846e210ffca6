"""The event log gets an index by kind within a job.

``GET /v1/jobs/{id}`` (and its report page) now show the job's warnings, read from the event log
(:mod:`persistence.job_warnings`), and a resumed stage reads its earlier ``module_scored`` /
``alpha_evaluated`` events (:func:`persistence.stages.stored_events`). Through ``(job_id, id)``
both read every event of the job and drop the other kinds by filter: for the most polled route,
the job's whole log (a row per scored module, epoch and α point) at every poll. With ``(job_id,
kind, id)`` they read the rows of their kind only, in event order.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-27 09:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "job_events"
INDEX = ("ix_job_events_job_id_kind_id", ["job_id", "kind", "id"])


def upgrade() -> None:
    op.create_index(INDEX[0], TABLE, INDEX[1])


def downgrade() -> None:
    op.drop_index(INDEX[0], table_name=TABLE)
