"""A stored-bytes ledger: the quota check sums it instead of the project's whole history.

``max_stored_bytes`` was checked by summing every checkpoint, dataset and artifact of the
project and reading the spec of each of its active jobs, on every upload and job creation (under
the project's lock) and ``GET /v1/usage``: 3,354 pages for a project of 5,000 jobs. Now every
writer appends its change to ``stored_bytes_ledger`` (``persistence.storage_ledger``) and the
check sums the project's rows from the index ``(project_id, kind, delta)``; the janitor folds
them into one row per project and kind. (No foreign key to ``projects``: its check would lock
the project's row at every append, an edge from every writer to the quota checks' lock; the
project's deletion deletes its rows.) The parts that are not sums of rows are kept as
remainders: ``jobs.reserved_bytes`` (what the job may store) and ``reserved_bytes_left`` (what
its artifacts have not taken yet while it is active), ``materializations.reserved_bytes`` (its
job's θ_FT size while queued or running and its weights not stored).

The upgrade fills them and the ledger from the rows as they are, with the reservation rule of
the code being installed (``persistence.records.job_reserved_bytes``, from each active job's
spec: it is not expressible in SQL); ``rift-admin projects recount-storage --all`` checks it.

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-27 12:15:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "stored_bytes_ledger"
INDEX = ("ix_stored_bytes_ledger_project_id_kind_delta", ["project_id", "kind", "delta"])
THETA_FT = "finetuned.safetensors"

# Each kind's sum per project, as persistence.records.stored_bytes_by_kind counts it.
LEDGER_FROM_ROWS = {
    "checkpoints": "SELECT project_id, SUM(size) AS total FROM checkpoints "
                   "WHERE project_id IS NOT NULL GROUP BY project_id",
    "datasets": "SELECT project_id, SUM(size) AS total FROM datasets "
                "WHERE project_id IS NOT NULL GROUP BY project_id",
    "artifacts": "SELECT jobs.project_id AS project_id, SUM(artifacts.size) AS total FROM artifacts "
                 "JOIN jobs ON jobs.id = artifacts.job_id "
                 "WHERE jobs.project_id IS NOT NULL GROUP BY jobs.project_id",
    "materializations": "SELECT jobs.project_id AS project_id, SUM(materializations.reserved_bytes) AS total "
                        "FROM materializations JOIN jobs ON jobs.id = materializations.job_id "
                        "WHERE jobs.project_id IS NOT NULL GROUP BY jobs.project_id",
    "active_jobs": "SELECT project_id, SUM(reserved_bytes_left) AS total FROM jobs "
                   "WHERE project_id IS NOT NULL GROUP BY project_id",
}


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
        sqlite_autoincrement=True,
    )
    op.create_index(INDEX[0], TABLE, INDEX[1])
    op.add_column("jobs", sa.Column("reserved_bytes", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("reserved_bytes_left", sa.BigInteger(), nullable=False,
                                    server_default="0"))
    op.add_column("materializations", sa.Column("reserved_bytes", sa.BigInteger(),
                                                nullable=False, server_default="0"))
    _fill()


def _fill() -> None:
    from persistence.records import job_reserved_bytes

    bind = op.get_bind()
    active = bind.execute(sa.text(
        "SELECT jobs.id, jobs.spec, checkpoints.size, checkpoints.num_tensors, "
        "(SELECT COALESCE(SUM(size), 0) FROM artifacts WHERE artifacts.job_id = jobs.id) "
        "FROM jobs JOIN checkpoints ON checkpoints.id = jobs.checkpoint_id "
        "WHERE jobs.status IN ('queued', 'running')")).all()
    for job_id, spec, size, tensors, stored in active:
        reserved = job_reserved_bytes(int(size), json.loads(spec) if isinstance(spec, str)
                                      else spec, int(tensors))
        bind.execute(sa.text("UPDATE jobs SET reserved_bytes = :reserved, "
                             "reserved_bytes_left = :left WHERE id = :id"),
                     {"reserved": reserved, "left": max(0, reserved - int(stored)), "id": job_id})
    bind.execute(sa.text(
        "UPDATE materializations SET reserved_bytes = COALESCE((SELECT artifacts.size "
        "FROM artifacts WHERE artifacts.job_id = materializations.job_id "
        "AND artifacts.name = :like), 0) "
        "WHERE status IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM artifacts made "
        "WHERE made.job_id = materializations.job_id "
        "AND made.name = materializations.artifact_name)"), {"like": THETA_FT})
    for kind, query in LEDGER_FROM_ROWS.items():
        bind.execute(sa.text(f"INSERT INTO {TABLE} (project_id, kind, delta) "
                             f"SELECT sums.project_id, '{kind}', sums.total FROM ({query}) "
                             "AS sums WHERE sums.total <> 0"))


def downgrade() -> None:
    with op.batch_alter_table("materializations") as batch:
        batch.drop_column("reserved_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reserved_bytes_left")
        batch.drop_column("reserved_bytes")
    op.drop_index(INDEX[0], table_name=TABLE)
    op.drop_table(TABLE)
