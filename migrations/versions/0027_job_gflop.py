"""The cost estimate's compute: ``jobs.cost_gflop`` and the per-project ``max_job_gflop``.

The estimate counted example-passes only, so an example-pass of a ResNet-50 cost as much as one
of ``small_cnn``. Job creation's fit check now counts the model's forward FLOPs on one example
(``validator/fit.py``) and the estimate gives the job's GFLOP (``persistence.cost``), stored on
the job and bounded by ``projects.max_job_gflop`` (NULL: the setting ``DEFAULT_MAX_JOB_GFLOP``).
Jobs created before keep NULL: their model's count was never made, and is not made up here.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-27 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cost_gflop", sa.Float(), nullable=True))
    op.add_column("projects", sa.Column("max_job_gflop", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("max_job_gflop")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cost_gflop")
