"""The service's tables as SQLAlchemy 2 typed models.

The schema is created and changed only by Alembic migrations (``migrations/``); these classes
describe it for queries. Ids are uuid4 hex strings; timestamps are timezone-aware UTC (SQLite stores
them as naive UTC text, :class:`UTCDateTime` puts the zone back). Status columns are strings with
CHECK constraints, so both SQLite and Postgres reject an unknown value.

A job runs three stages in order (docs/algorithm.md): ``mrc`` (module robust criticality of every
module), ``finetune`` (the least critical module on clean data) and ``interpolate`` (θ_α between the
adversarially trained and the fine-tuned weights). Each stage has a row in ``job_stages`` with the
lease of the worker running it; a stage's outputs are written in the transaction that marks it done.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

T = TypeVar("T")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class StageName(enum.StrEnum):
    MRC = "mrc"
    FINETUNE = "finetune"
    INTERPOLATE = "interpolate"


#: The order in which a job's stages run.
STAGE_ORDER: tuple[StageName, ...] = (StageName.MRC, StageName.FINETUNE, StageName.INTERPOLATE)


class StageStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DatasetKind(enum.StrEnum):
    NPZ = "npz"
    IMAGEFOLDER = "imagefolder"


#: A module's dotted path: as long as a model's nesting makes it (PostgreSQL: TEXT, migration
#: 0016). SQLite does not enforce declared lengths, and its tables keep the VARCHAR(255) they
#: were made with: changing a type there means recreating the table, which with foreign keys on
#: would cascade-delete the rows that reference it.
MODULE_NAME = Text().with_variant(String(255), "sqlite")


def by_code_point(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """``items`` sorted by the text ``key`` gives, in Python (code point order), not by ORDER BY:
    Postgres orders text by the database's collation (en_US puts "a_b" before "a-c" before "ab",
    "a" before "B"), SQLite by code point, so a list sorted by the database came in a different
    order from each."""
    return sorted(items, key=key)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; naive datetimes are refused on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC (persistence.models.utcnow)")
        value = value.astimezone(UTC)
        # SQLite keeps text: store naive UTC so that string comparison is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")

# Explicit constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Project(Base):
    """A tenant: every checkpoint, dataset and job belongs to one. A limit column left NULL
    means "the setting's default" (``persistence.settings``)."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)  # queued + running
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    max_job_cost: Mapped[int | None] = mapped_column(BigInteger)  # example-passes
    max_requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_streams_per_key: Mapped[int | None] = mapped_column(Integer)
    max_job_gflop: Mapped[int | None] = mapped_column(BigInteger)  # GFLOP (migration 0027)


class ApiKey(Base):
    """An API key of a project. The key ``rift_<prefix>_<secret>`` is shown once; only the
    prefix (to find the row) and the SHA-256 of the secret are stored. ``scopes`` is a
    space-separated subset of ``read write admin``."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Checkpoint(Base):
    """An uploaded checkpoint, validated before the row is written."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(16))  # "safetensors" | "torch"
    storage_key: Mapped[str] = mapped_column(String(1024))
    num_tensors: Mapped[int] = mapped_column(Integer)
    num_parameters: Mapped[int] = mapped_column(BigInteger)  # elements over all tensors
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True)
    # The upload's Idempotency-Key (scoped to the project, hashed) and what it stood for.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, index=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Key paths of the weights entries in the file (a model and its EMA: a job names one in
    # config.checkpoint_entry); [] when its weights are at its top level; None: recorded before
    # entries were (migration 0017).
    entries: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)

    __table_args__ = (
        CheckConstraint("format IN ('safetensors', 'torch')", name="format"),
        # A project's checkpoints, newest first (GET /v1/checkpoints pages walk it).
        Index("ix_checkpoints_project_id_created_at_id", "project_id", "created_at", "id"),
    )


class Dataset(Base):
    """An uploaded dataset archive (``.npz`` or a tar of an ImageFolder tree)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"), index=True)
    # The upload's Idempotency-Key (scoped to the project, hashed) and what it stood for.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, index=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # What the validator found on upload (None on rows recorded before it was stored):
    content: Mapped[str | None] = mapped_column(String(16))  # "images" | "features"
    image_channels: Mapped[int | None] = mapped_column(Integer)
    image_height: Mapped[int | None] = mapped_column(Integer)
    image_width: Mapped[int | None] = mapped_column(Integer)
    num_features: Mapped[int | None] = mapped_column(Integer)  # feature vectors only
    num_examples: Mapped[int | None] = mapped_column(BigInteger)  # every example: x + x_test
    num_classes: Mapped[int | None] = mapped_column(Integer)  # label_max + 1 (npz), folders
    label_min: Mapped[int | None] = mapped_column(BigInteger)
    label_max: Mapped[int | None] = mapped_column(BigInteger)
    # An npz's distinct labels (train and test): how many, and which (ascending) when there are
    # at most 1,000 (validator.distinct_labels), so that job creation can say that labels
    # skipping numbers (0, 100, 200) need renumbering. None on ImageFolder rows (their labels
    # skip none), on rows recorded before migration 0028, and for the list past 1,000.
    num_distinct_labels: Mapped[int | None] = mapped_column(Integer)
    distinct_labels: Mapped[list[int] | None] = mapped_column(JSONType)
    # An npz's smallest and largest input value (x and x_test, in the inputs' units: uint8
    # pixels as value / 255), and each channel's (images) or feature's when there are at most
    # 1,000 (validator.value_range), so that job creation can refuse an attack.domain the data
    # lie outside, as the library would when the job runs. None on ImageFolder rows (a sample
    # of their images is decoded), on rows recorded before migration 0029 (their jobs are
    # checked when they run only), and for the lists past 1,000 features.
    value_min: Mapped[float | None] = mapped_column(Float)
    value_max: Mapped[float | None] = mapped_column(Float)
    channel_value_min: Mapped[list[float] | None] = mapped_column(JSONType)
    channel_value_max: Mapped[list[float] | None] = mapped_column(JSONType)
    # An ImageFolder whose images (in the folders the library reads) are not all of one size:
    # a job must resize them (dataset.image_size). None on rows recorded before it was stored.
    image_sizes_differ: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (
        CheckConstraint(_in("kind", DatasetKind), name="kind"),
        # A project's datasets, newest first (GET /v1/datasets pages walk it).
        Index("ix_datasets_project_id_created_at_id", "project_id", "created_at", "id"),
        CheckConstraint("content IN ('images', 'features')", name="content"),
    )

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the images, when known."""
        if self.image_channels is None or self.image_height is None or self.image_width is None:
            return None
        return (self.image_channels, self.image_height, self.image_width)


class Job(Base):
    """One RiFT run. ``spec`` is ``RiftConfig.model_dump(mode="json")``; ``stage`` is the stage
    running or next to run (None before the first claim and after the end)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(16))
    stage_progress: Mapped[float] = mapped_column(Float, default=0.0)  # fraction in [0, 1]
    progress_message: Mapped[str | None] = mapped_column(String(500))
    spec: Mapped[dict[str, Any]]
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="RESTRICT"))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The config setting the failure's library error blames (RiftError.field), or NULL.
    error_field: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # stage claims over all stages
    selected_module: Mapped[str | None] = mapped_column(MODULE_NAME)
    chosen_alpha: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None]
    # The X-Request-ID of the request that created the job; workers log it with the job id.
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # No index of its own (migration 0032): the composite indexes in __table_args__ lead with it.
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="RESTRICT"))
    cost_estimate: Mapped[int | None] = mapped_column(BigInteger)  # example-passes
    # The estimate's compute (persistence.cost.CostEstimate.gflop); NULL: the model's FLOPs
    # were not counted at creation (unknown geometry, or a job from before migration 0027).
    cost_gflop: Mapped[float | None] = mapped_column(Float)
    # The job's own wall-clock limit (seconds); NULL: the service's JOB_TIME_LIMIT_SECONDS.
    time_limit_seconds: Mapped[float | None] = mapped_column(Float)
    # What the job may store before it ends (persistence.records.job_reserved_bytes), and the
    # part of it its artifacts have not taken yet while it is queued or running (0 once it
    # ended): its share of the stored-bytes ledger's ``active_jobs`` (migration 0026).
    reserved_bytes: Mapped[int | None] = mapped_column(BigInteger)
    reserved_bytes_left: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    checkpoint: Mapped[Checkpoint] = relationship(lazy="raise_on_sql")
    dataset: Mapped[Dataset | None] = relationship(lazy="raise_on_sql")
    labels: Mapped[list[JobLabel]] = relationship(
        back_populates="job", cascade="all, delete-orphan", lazy="selectin",
    )
    stages: Mapped[list[JobStage]] = relationship(
        back_populates="job", cascade="all, delete-orphan", lazy="selectin",
        order_by="JobStage.position",
    )

    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(f"stage IS NULL OR {_in('stage', StageName)}", name="stage"),
        # Queue position and listing by status walk this index in creation order.
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        # A project's jobs, newest first (lists are always per project).
        Index("ix_jobs_project_id_created_at_id", "project_id", "created_at", "id"),
        # A project's jobs of one status, newest first (?status=), and its active-job count
        # (migration 0021).
        Index("ix_jobs_project_id_status_created_at_id", "project_id", "status", "created_at",
              "id"),
        # The jobs using a checkpoint or dataset (deleting one; the foreign keys' checks).
        Index("ix_jobs_checkpoint_id", "checkpoint_id"),
        Index("ix_jobs_dataset_id", "dataset_id"),
    )

    @property
    def label_dict(self) -> dict[str, str]:
        """The labels as a mapping, keys in code point order (:func:`by_code_point`)."""
        return {label.key: label.value for label in by_code_point(self.labels, lambda label: label.key)}

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobLabel(Base):
    """A ``key=value`` label of a job: a table, so filtering is the same SQL on every backend.

    ``project_id`` and ``created_at`` are copies of the job's (written with the label, never
    changed: neither changes on a job) so that a project's jobs carrying a label are one range
    of an index in the job list's order (migration 0024). Without them a label filter read
    every job carrying the label in every project."""

    __tablename__ = "job_labels"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    # No foreign key: the job's own one ties the row to the project (and a project is deleted
    # after its jobs).
    project_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]

    job: Mapped[Job] = relationship(back_populates="labels")

    __table_args__ = (
        # A project's jobs with ``key=value``, newest first: a filtered page walks it from the
        # cursor, as an unfiltered one walks ix_jobs_project_id_created_at_id.
        Index("ix_job_labels_project_id_key_value_created_at_job_id",
              "project_id", "key", "value", "created_at", "job_id"),
    )


class JobStage(Base):
    """One stage of one job and the lease of the worker that runs it.

    A worker may run the stage only while ``lease_owner`` is its id and ``lease_expires_at`` lies
    in the future; ``attempts`` counts claims, so a stage that keeps crashing its worker ends.
    """

    __tablename__ = "job_stages"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # 0, 1, 2 in STAGE_ORDER
    status: Mapped[str] = mapped_column(String(16), default=StageStatus.PENDING)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When the stage's message was last sent (migration 0020; :mod:`persistence.resend`): null
    # until the stage becomes the job's current one.
    dispatched_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="stages")

    __table_args__ = (
        CheckConstraint(_in("stage", StageName), name="stage"),
        CheckConstraint(_in("status", StageStatus), name="status"),
        # Recovery looks for running stages whose lease has expired.
        Index("ix_job_stages_status_lease_expires_at", "status", "lease_expires_at"),
    )


class MRCRow(Base):
    """One module's robust criticality (docs/algorithm.md, step 1); ``position`` keeps the
    table's order."""

    __tablename__ = "mrc_rows"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    module: Mapped[str] = mapped_column(MODULE_NAME)
    parameters: Mapped[int] = mapped_column(BigInteger)
    mrc: Mapped[float] = mapped_column(Float)  # robust-loss increase under the weight perturbation
    worst_robust_loss: Mapped[float] = mapped_column(Float)
    robust_accuracy_at_worst: Mapped[float | None] = mapped_column(Float)  # percent
    robust_accuracy_drop: Mapped[float | None] = mapped_column(Float)  # percentage points
    seconds: Mapped[float | None] = mapped_column(Float)
    # Largest loss after an ascent pass, Δ = 0 not counted; breaks MRC ties (docs/algorithm.md).
    max_ascent_loss: Mapped[float | None] = mapped_column(Float)
    # Ascent passes run and whether the values are the module's own (False: lower bounds of a
    # module stopped early by mrc.table = "selection"). NULL on rows recorded before: exact.
    passes: Mapped[int | None] = mapped_column(Integer)
    exact: Mapped[bool | None] = mapped_column(Boolean)
    # The module's weight gradient was exactly zero on every MRC batch (rift.mrc_zero_gradient):
    # MRC 0 by construction, never chosen. NULL on rows recorded before: unknown.
    zero_gradient: Mapped[bool | None] = mapped_column(Boolean)


class EpochMetric(Base):
    """One fine-tuning epoch (docs/algorithm.md, step 2). Accuracies in percent."""

    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based
    lr: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)  # clean, on the validation split
    seconds: Mapped[float | None] = mapped_column(Float)


class LeasedPart:
    """The columns of one part of a stage split across worker tasks, each part under its own
    lease like a stage (see ``persistence/stage_shards.py``): MRC shards and sweep candidates.
    ``result`` holds what the part recorded once done."""

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=StageStatus.PENDING)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    # When the part's message was last sent (migration 0020; :mod:`persistence.resend`).
    dispatched_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class MRCShard(LeasedPart, Base):
    """One shard of a sharded MRC stage (``mrc.shards`` > 1): a group of modules scored by one
    worker task. ``result`` is the shard's part of the MRC table (``MRCStageResult.to_json``);
    ``inputs_key`` is the object-store key of the adversarial set every shard scores on.
    """

    __tablename__ = "mrc_shards"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    modules: Mapped[list[str]] = mapped_column(JSONType)
    inputs_key: Mapped[str] = mapped_column(String(1024))

    __table_args__ = (
        CheckConstraint(_in("status", StageStatus), name="status"),
        Index("ix_mrc_shards_status_lease_expires_at", "status", "lease_expires_at"),
    )


class SweepCandidate(LeasedPart, Base):
    """One (module, lr) candidate of a sweep (``finetune.candidates`` > 1 or ``lr_grid``): a
    fine-tune from θ_AT and its interpolation curve, run by one worker task (``rift.sweep``).
    ``candidate`` is its index in the sweep's order (``rift.sweep.candidates_from_mrc``);
    ``result`` holds its outcome, stage records and its θ_FT's object key, size and SHA-256
    (once another candidate is picked: key null, ``deleted: true`` and a ``reason``)."""

    __tablename__ = "sweep_candidates"

    candidate: Mapped[int] = mapped_column(Integer, primary_key=True)
    module: Mapped[str] = mapped_column(MODULE_NAME)
    lr: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint(_in("status", StageStatus), name="status"),
        Index("ix_sweep_candidates_status_lease_expires_at", "status", "lease_expires_at"),
    )


class InterpolationPoint(Base):
    """Accuracy of θ_α at one α (docs/algorithm.md, step 3). Accuracies in percent."""

    __tablename__ = "interpolation_points"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    alpha: Mapped[float] = mapped_column(Float)
    clean_accuracy: Mapped[float] = mapped_column(Float)
    # NULL: not measured in full because it could not change the choice (interpolation.curve
    # 'selection').
    robust_accuracy: Mapped[float | None] = mapped_column(Float)
    # An upper bound where the attack stopped early (robust_accuracy is NULL there); NULL for a
    # point measured in full or never attacked (migration 0010).
    robust_accuracy_at_most: Mapped[float | None] = mapped_column(Float)


class JobEvent(Base):
    """The job's event log, in ``id`` order (stage started/finished, epoch, warning, ...)."""

    __tablename__ = "job_events"

    # BIGINT on Postgres; SQLite only auto-increments a column declared INTEGER PRIMARY KEY.
    # Clients read the id as the event's identity and resume after it: one is never reused.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        # A job's events of one kind (its warnings at every GET, a resumed stage's rows).
        Index("ix_job_events_job_id_kind_id", "job_id", "kind", "id"),
        # SQLite: ids are never given twice, as a Postgres sequence's (migration 0022).
        {"sqlite_autoincrement": True},
    )


class Artifact(Base):
    """A file a job produced, stored in the object store under ``storage_key``."""

    __tablename__ = "artifacts"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """A project's URL that receives signed ``job.*`` notifications (Standard Webhooks).

    ``secret`` is ``whsec_<base64>``; it must be kept readable (the workers sign with it), and is
    shown to the client only when the endpoint is created. ``project_id`` names the owning
    project (a foreign key to the projects table once that exists)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The registration's Idempotency-Key (scoped to the project, hashed) and what it stood for.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, index=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_webhook_endpoints_project_id_created_at", "project_id",
                            "created_at"),)


class WebhookDeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One message to one endpoint; ``id`` is the message's ``webhook-id`` (the same on every
    attempt, so receivers can drop duplicates). ``body`` is the exact JSON that is signed."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("status", WebhookDeliveryStatus), name="status"),
        # A job ends once: one message per endpoint and event, whatever writes it twice.
        Index("uq_webhook_deliveries_endpoint_job_event", "endpoint_id", "job_id", "event_type",
              unique=True),
        # The delivery log of an endpoint, newest first, paged by (created_at, id) (0023).
        Index("ix_webhook_deliveries_endpoint_id_created_at_id", "endpoint_id", "created_at",
              "id"),
        # The workers' sweep for messages whose task was lost.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # The messages already written for a job's end (migration 0021).
        Index("ix_webhook_deliveries_job_id_event_type", "job_id", "event_type"),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what the receiver answered, or why nothing was sent."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))
    started_at: Mapped[datetime]
    duration_ms: Mapped[float | None] = mapped_column(Float)


class MaterializationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Materialization(Base):
    """Weights θ_α at an α the user asked for after the job (``tuned@<α>.safetensors``), made by
    a worker from the stored θ_AT and θ_FT; accuracies (percent) when evaluation was asked.

    The worker making it holds a lease like a stage's (:mod:`persistence.leases`, migration
    0019): once ``lease_expires_at`` has passed (the worker died) the recovery loop queues it
    again; ``attempts`` counts claims, so one that keeps killing its worker ends failed.
    ``dispatched_at`` is when its message was last sent (migration 0020): one still queued long
    after it is sent again (:mod:`persistence.resend`)."""

    __tablename__ = "materializations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    alpha: Mapped[float] = mapped_column(Float)
    evaluate: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=MaterializationStatus.QUEUED)
    artifact_name: Mapped[str] = mapped_column(String(64))
    clean_accuracy: Mapped[float | None] = mapped_column(Float)
    robust_accuracy: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # While queued or running and its weights are not stored: the size of its job's θ_FT (what
    # it will store); else 0. Its share of the stored-bytes ledger (migration 0026).
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        # One materialization per α of a job: asking again returns the one already made.
        UniqueConstraint("job_id", "artifact_name", name="uq_materializations_job_id"),
        CheckConstraint(_in("status", MaterializationStatus), name="status"),
        # Recovery looks for running materializations whose lease has expired.
        Index("ix_materializations_status_lease_expires_at", "status", "lease_expires_at"),
    )


class StoredBytesEntry(Base):
    """One change of a project's stored bytes (``persistence.storage_ledger``): the quota
    check sums the project's rows, by ``kind``, instead of its checkpoints, datasets,
    artifacts and reservations; the janitor folds them into one row per project and kind
    (migration 0026)."""

    __tablename__ = "stored_bytes_ledger"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    # No foreign key, on purpose: its check would take a share lock on the project's row at
    # every append, and the writers (a materialization's end under its row's lock, say) would
    # wait for a quota check holding the project's row while it waits for theirs. The project's
    # deletion deletes its rows (persistence.deletion).
    project_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # The sum reads this index only (delta in it), never the table.
        Index("ix_stored_bytes_ledger_project_id_kind_delta", "project_id", "kind", "delta"),
    )


class Worker(Base):
    """A running worker process (:mod:`persistence.workers`): registered when it is ready,
    ``last_seen_at`` renewed every ``WORKER_HEARTBEAT_SECONDS``, deleted on a clean shutdown (the
    janitor deletes the rows of those that died). ``id`` is the process's lease owner id, the
    ``lease_owner`` of the stages it runs; ``devices`` counts its devices by type
    (``{"cpu": 1, "cuda": 2}``); ``device_override`` is its ``WORKER_DEVICE``, which it runs every
    job on whatever the job names; ``datasets`` names the built-in datasets whose files its
    ``DATA_ROOT`` holds (``rift.data_root``), NULL when it does not say (an older worker)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSONType)
    devices: Mapped[dict[str, int]] = mapped_column(JSONType)
    device_override: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    datasets: Mapped[list[str] | None] = mapped_column(JSONType)


class AuditEvent(Base):
    """Who did what (:mod:`persistence.audit`): one row per change a key or ``rift-admin``
    made, written in the change's own transaction (migration 0034). ``project_id`` is a plain
    value, no foreign key: a project's trail outlives its deletion (the janitor prunes it after
    ``AUDIT_RETENTION_DAYS``). ``actor_key_id``/``actor_key_prefix`` name the acting key (never
    its secret); both NULL with ``actor`` ``rift-admin`` for the command line."""

    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    occurred_at: Mapped[datetime]
    project_id: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(16))
    actor_key_id: Mapped[str | None] = mapped_column(String(32))
    actor_key_prefix: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource_kind: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        # A project's page, newest first (GET /v1/audit-events), and the admin's across
        # projects; the janitor's prune reads the second by time.
        Index("ix_audit_events_project_id_occurred_at_id", "project_id", "occurred_at", "id"),
        Index("ix_audit_events_occurred_at_id", "occurred_at", "id"),
    )
