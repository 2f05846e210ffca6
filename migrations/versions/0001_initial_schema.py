"""Initial schema: checkpoints, datasets, jobs and everything a job records.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"
STAGES = "'mrc', 'finetune', 'interpolate'"
STAGE_STATUSES = "'pending', 'running', 'done', 'failed', 'cancelled'"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _job_fk() -> sa.Column:
    return sa.Column("job_id", sa.String(32), nullable=False)


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("num_tensors", sa.Integer(), nullable=False),
        sa.Column("num_parameters", sa.BigInteger(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.CheckConstraint("format IN ('safetensors', 'torch')", name="ck_checkpoints_format"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.CheckConstraint("kind IN ('npz', 'imagefolder')", name="ck_datasets_kind"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=True),
        sa.Column("stage_progress", sa.Float(), nullable=False),
        sa.Column("progress_message", sa.String(500), nullable=True),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("checkpoint_id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("selected_module", sa.String(255), nullable=True),
        sa.Column("chosen_alpha", sa.Float(), nullable=True),
        sa.Column("metrics", _json(), nullable=True),
        _timestamp("created_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="RESTRICT",
                                name="fk_jobs_checkpoint_id_checkpoints"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="RESTRICT",
                                name="fk_jobs_dataset_id_datasets"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
        sa.CheckConstraint(f"status IN ({JOB_STATUSES})", name="ck_jobs_status"),
        sa.CheckConstraint(f"stage IS NULL OR stage IN ({STAGES})", name="ck_jobs_stage"),
    )
    op.create_index("ix_jobs_status_created_at_id", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_created_at_id", "jobs", ["created_at", "id"])

    op.create_table(
        "job_labels",
        _job_fk(),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key", name="pk_job_labels"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_job_labels_job_id_jobs"),
    )
    op.create_index("ix_job_labels_key_value", "job_labels", ["key", "value"])

    op.create_table(
        "job_stages",
        _job_fk(),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        _timestamp("lease_expires_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("job_id", "stage", name="pk_job_stages"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_job_stages_job_id_jobs"),
        sa.CheckConstraint(f"stage IN ({STAGES})", name="ck_job_stages_stage"),
        sa.CheckConstraint(f"status IN ({STAGE_STATUSES})", name="ck_job_stages_status"),
    )
    op.create_index("ix_job_stages_status_lease_expires_at", "job_stages",
                    ["status", "lease_expires_at"])

    op.create_table(
        "mrc_rows",
        _job_fk(),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(255), nullable=False),
        sa.Column("parameters", sa.BigInteger(), nullable=False),
        sa.Column("mrc", sa.Float(), nullable=False),
        sa.Column("worst_robust_loss", sa.Float(), nullable=False),
        sa.Column("robust_accuracy_at_worst", sa.Float(), nullable=True),
        sa.Column("robust_accuracy_drop", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "position", name="pk_mrc_rows"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_mrc_rows_job_id_jobs"),
    )
    op.create_table(
        "epoch_metrics",
        _job_fk(),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("train_accuracy", sa.Float(), nullable=True),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "epoch", name="pk_epoch_metrics"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_epoch_metrics_job_id_jobs"),
    )
    op.create_table(
        "interpolation_points",
        _job_fk(),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("clean_accuracy", sa.Float(), nullable=False),
        sa.Column("robust_accuracy", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "position", name="pk_interpolation_points"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_interpolation_points_job_id_jobs"),
    )
    op.create_table(
        "job_events",
        # BIGINT on Postgres; SQLite auto-increments only a column declared INTEGER PRIMARY KEY.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        _job_fk(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_job_events_job_id_jobs"),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])

    op.create_table(
        "artifacts",
        _job_fk(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("job_id", "name", name="pk_artifacts"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_artifacts_job_id_jobs"),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_index("ix_job_events_job_id_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_table("interpolation_points")
    op.drop_table("epoch_metrics")
    op.drop_table("mrc_rows")
    op.drop_index("ix_job_stages_status_lease_expires_at", table_name="job_stages")
    op.drop_table("job_stages")
    op.drop_index("ix_job_labels_key_value", table_name="job_labels")
    op.drop_table("job_labels")
    op.drop_index("ix_jobs_created_at_id", table_name="jobs")
    op.drop_index("ix_jobs_status_created_at_id", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("datasets")
    op.drop_table("checkpoints")
