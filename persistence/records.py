"""Database rows of uploaded checkpoints and datasets (the bytes live in the object store):
recording them, reading one, and listing a project's, newest first.

The API writes the object first and the row second, so a row always points at stored bytes; if
writing the row fails (the stored-bytes quota included), the API deletes the object it stored.

With ``max_stored_bytes`` the row is inserted only if the project's stored bytes plus this
upload stay within it, counted under a lock on the project's row in the inserting transaction:
concurrent uploads of one project queue there, so together they cannot pass the quota.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased

from persistence import storage_ledger
from persistence.audit import Actor, record_audit_event
from persistence.cost import modules_bound, sweep_size
from persistence.models import (
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobStatus,
    Materialization,
    MaterializationStatus,
    new_id,
    utcnow,
)
from persistence.pages import Collection, Page, before_cursor, list_binding, page_of
from persistence.storage_ledger import MATERIALIZED_LIKE
from persistence.transactions import PersistenceError, lock_project

Upload = TypeVar("Upload", Checkpoint, Dataset)


class StorageQuotaReached(PersistenceError):
    """Storing the upload would take the project past its ``max_stored_bytes`` (HTTP 413)."""

    code = "quota_exceeded"

    def __init__(self, used: int, incoming: int, limit: int) -> None:
        super().__init__(f"the project stores {used} bytes; {incoming} more would pass its "
                         f"limit of {limit}")
        self.used, self.incoming, self.limit = used, incoming, limit


def materialization_bytes(session: Session, job_id: str) -> int:
    """What one more materialization of ``job_id`` will store: the size of its θ_FT."""
    size = session.execute(select(Artifact.size).where(
        Artifact.job_id == job_id, Artifact.name == MATERIALIZED_LIKE)).scalar_one_or_none()
    return int(size or 0)


def job_reserved_copies(spec: Mapping[str, Any], num_tensors: int) -> int:
    """How many checkpoint-sized files a job with ``spec`` (``RiftConfig`` as JSON) on a
    checkpoint of ``num_tensors`` tensors stores at most: θ_FT of each fine-tuned candidate
    (``persistence.cost.sweep_size``, as the cost estimate counts them: one module when
    ``finetune.module`` names it, never more modules than the checkpoint can hold; all but the
    winner's are deleted when the sweep ends) and the tuned weights. (Before, every
    ``finetune.candidates`` counted: 17 copies for a named module with ``candidates: 16``.)"""
    return sweep_size(spec, modules_bound(spec, num_tensors)) + 1


def job_reserved_bytes(checkpoint_size: int, spec: Mapping[str, Any], num_tensors: int) -> int:
    """What a new job may store before it ends (see :func:`job_reserved_copies`)."""
    return checkpoint_size * job_reserved_copies(spec, num_tensors)


def _active_job_reservations(session: Session, project_id: str) -> int:
    """The bytes the project's queued and running jobs may still store: each job's reservation
    less the artifacts it has stored (counted with the artifacts)."""
    active = session.execute(
        select(Job.id, Job.spec, Checkpoint.size, Checkpoint.num_tensors)
        .join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
        .where(Job.project_id == project_id,
               Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
    if not active:
        return 0
    stored = dict(session.execute(
        select(Artifact.job_id, func.sum(Artifact.size))
        .where(Artifact.job_id.in_([job_id for job_id, _, _, _ in active]))
        .group_by(Artifact.job_id)).tuples().all())
    return sum(max(0, job_reserved_bytes(size, spec, tensors) - int(stored.get(job_id) or 0))
               for job_id, spec, size, tensors in active)


@dataclass(frozen=True)
class StoredBytes:
    """What counts against a project's ``max_stored_bytes``, by kind; :attr:`total` is the
    number the quota checks compare with the limit (GET /v1/usage shows the parts)."""

    checkpoints: int
    datasets: int
    artifacts: int  # job outputs, materialized weights included
    reserved_by_materializations: int
    reserved_by_active_jobs: int

    @property
    def total(self) -> int:
        return (self.checkpoints + self.datasets + self.artifacts
                + self.reserved_by_materializations + self.reserved_by_active_jobs)


def stored_bytes_by_kind(session: Session, project_id: str) -> StoredBytes:
    """The reference count (``rift-admin projects recount-storage`` compares the ledger with
    it; the quota checks read :func:`ledger_stored_bytes_by_kind`, which equals it). Bytes the
    project keeps in the object store: checkpoints, datasets and job artifacts,
    plus the bytes reserved by its materializations still queued or running (each the size of
    its job's θ_FT) and by its jobs still queued or running (:func:`job_reserved_bytes`), so
    that requests made before a worker writes them count against the quota too."""
    made = aliased(Artifact)
    like = aliased(Artifact)
    # The four sums in one statement (a round trip each before): job creation runs this in
    # its transaction, on the way to the queue.
    sums: list[Select[Any]] = [
        select(func.coalesce(func.sum(Checkpoint.size), 0)).where(
            Checkpoint.project_id == project_id),
        select(func.coalesce(func.sum(Dataset.size), 0)).where(
            Dataset.project_id == project_id),
        select(func.coalesce(func.sum(Artifact.size), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.project_id == project_id),
        select(func.coalesce(func.sum(like.size), 0))
        .select_from(Materialization)
        .join(Job, Job.id == Materialization.job_id)
        .join(like, (like.job_id == Materialization.job_id) & (like.name == MATERIALIZED_LIKE))
        .where(Job.project_id == project_id,
               Materialization.status.in_([MaterializationStatus.QUEUED,
                                           MaterializationStatus.RUNNING]),
               # Asked again (evaluation added) after its weights were stored: counted
               # with the artifacts.
               ~select(made.name).where(made.job_id == Materialization.job_id,
                                      made.name == Materialization.artifact_name).exists()),
    ]
    checkpoints, datasets, artifacts, materializations = session.execute(
        select(*(query.scalar_subquery() for query in sums))).one()
    return StoredBytes(
        checkpoints=int(checkpoints), datasets=int(datasets), artifacts=int(artifacts),
        reserved_by_materializations=int(materializations),
        reserved_by_active_jobs=_active_job_reservations(session, project_id),
    )


def ledger_stored_bytes_by_kind(session: Session, project_id: str) -> StoredBytes:
    """:func:`stored_bytes_by_kind` as the project's stored-bytes ledger sums it
    (:mod:`persistence.storage_ledger`): a few index rows, whatever the project's history."""
    sums = storage_ledger.totals(session, project_id)
    return StoredBytes(
        checkpoints=sums[storage_ledger.CHECKPOINTS], datasets=sums[storage_ledger.DATASETS],
        artifacts=sums[storage_ledger.ARTIFACTS],
        reserved_by_materializations=sums[storage_ledger.MATERIALIZATIONS],
        reserved_by_active_jobs=sums[storage_ledger.ACTIVE_JOBS])


def _by_kind(stored: StoredBytes) -> dict[str, int]:
    return {storage_ledger.CHECKPOINTS: stored.checkpoints,
            storage_ledger.DATASETS: stored.datasets, storage_ledger.ARTIFACTS: stored.artifacts,
            storage_ledger.MATERIALIZATIONS: stored.reserved_by_materializations,
            storage_ledger.ACTIVE_JOBS: stored.reserved_by_active_jobs}


def _fill_reservations(session: Session, project_id: str) -> None:
    """Give the project's active jobs that have none (rows written by other means than
    ``jobs.create_job``) their ``reserved_bytes``, as job creation computes it."""
    missing = session.execute(
        select(Job, Checkpoint.size, Checkpoint.num_tensors)
        .join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
        .where(Job.project_id == project_id, Job.reserved_bytes.is_(None),
               Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .with_for_update(of=Job)).all()
    for job, size, tensors in missing:
        job.reserved_bytes = job_reserved_bytes(size, job.spec, tensors)
    session.commit()


def recount_stored_bytes(session: Session, project_id: str, *,
                         repair: bool = False) -> dict[str, int]:
    """How far the project's ledger is from :func:`stored_bytes_by_kind`: reference − ledger by
    kind (``storage_ledger.KINDS``), kinds that agree left out. With ``repair``, the remainders
    of its jobs and materializations are settled and the ledger corrected to the reference.
    Commits. Both are read from one snapshot of the database (every writer commits its rows
    and its ledger change together, so a snapshot holds both or neither): writers running
    meanwhile neither show as a difference nor are corrected away."""
    _one_snapshot(session)
    differences = _differences(session, project_id)
    session.commit()
    if repair and differences:
        _fill_reservations(session, project_id)
        storage_ledger.settle_project(session, project_id)
        _one_snapshot(session)
        for kind, difference in _differences(session, project_id).items():
            storage_ledger.add(session, project_id, kind, difference)
        session.commit()
    return differences


def _one_snapshot(session: Session) -> None:
    """Start a transaction whose reads all see one snapshot: REPEATABLE READ on Postgres (its
    READ COMMITTED takes one per statement); a SQLite transaction reads one already."""
    session.commit()
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _differences(session: Session, project_id: str) -> dict[str, int]:
    reference = _by_kind(stored_bytes_by_kind(session, project_id))
    counted = storage_ledger.totals(session, project_id)
    return {kind: reference[kind] - counted[kind] for kind in storage_ledger.KINDS
            if reference[kind] != counted[kind]}


def stored_bytes(session: Session, project_id: str) -> int:
    """The project's stored bytes as ``max_stored_bytes`` counts them (its ledger's sum)."""
    return ledger_stored_bytes_by_kind(session, project_id).total


def hold_stored_bytes(session: Session, project_id: str | None, incoming: int,
                      limit: int | None) -> None:
    """Lock the project and raise :class:`StorageQuotaReached` unless ``incoming`` more bytes
    keep it within ``limit`` (None: no limit). Call inside the transaction that records them."""
    if limit is None or project_id is None:
        return
    lock_project(session, project_id)
    used = stored_bytes(session, project_id)
    if used + incoming > limit:
        raise StorageQuotaReached(used, incoming, limit)


def create_checkpoint(
    session: Session,
    *,
    filename: str,
    size: int,
    sha256: str,
    format: str,
    storage_key: str,
    num_tensors: int,
    num_parameters: int,
    checkpoint_id: str | None = None,
    now: datetime | None = None,
    project_id: str | None = None,
    max_stored_bytes: int | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    entries: list[str] | None = None,
    actor: Actor | None = None,
) -> Checkpoint:
    """Record a validated checkpoint (``format``: ``safetensors`` or ``torch``; size in bytes;
    ``entries``: the key paths of its weights entries).

    ``checkpoint_id`` lets the caller choose the id before storing the bytes under a key that
    contains it. ``actor``'s ``checkpoint.uploaded`` commits with the row. Commits. Raises
    :class:`StorageQuotaReached` (nothing recorded) when ``max_stored_bytes`` is given and the
    project would pass it.
    """
    hold_stored_bytes(session, project_id, size, max_stored_bytes)
    checkpoint = Checkpoint(
        id=checkpoint_id or new_id(), filename=filename, size=size, sha256=sha256, format=format,
        storage_key=storage_key, num_tensors=num_tensors, num_parameters=num_parameters,
        created_at=now or utcnow(), project_id=project_id, idempotency_key=idempotency_key,
        request_hash=request_hash, entries=entries,
    )
    session.add(checkpoint)
    storage_ledger.add(session, project_id, storage_ledger.CHECKPOINTS, size)
    if actor is not None:
        record_audit_event(session, actor, "checkpoint.uploaded", project_id=project_id,
                           resource_id=checkpoint.id,
                           details={"filename": filename[:128], "size": size})
    session.commit()
    return checkpoint


def get_checkpoint(session: Session, checkpoint_id: str) -> Checkpoint | None:
    """The checkpoint row, or None."""
    return session.get(Checkpoint, checkpoint_id)


def create_dataset(
    session: Session,
    *,
    filename: str,
    kind: str,
    size: int,
    sha256: str,
    storage_key: str,
    dataset_id: str | None = None,
    now: datetime | None = None,
    project_id: str | None = None,
    content: str | None = None,
    image_shape: tuple[int, int, int] | None = None,
    num_features: int | None = None,
    num_examples: int | None = None,
    num_classes: int | None = None,
    label_min: int | None = None,
    label_max: int | None = None,
    num_distinct_labels: int | None = None,
    distinct_labels: Sequence[int] | None = None,
    value_min: float | None = None,
    value_max: float | None = None,
    channel_value_min: Sequence[float] | None = None,
    channel_value_max: Sequence[float] | None = None,
    image_sizes_differ: bool | None = None,
    max_stored_bytes: int | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    actor: Actor | None = None,
) -> Dataset:
    """Record an uploaded dataset archive (``kind``: ``npz`` or ``imagefolder``) with what its
    validation found (``content``: ``images`` or ``features``; ``image_shape`` (C, H, W)).
    ``actor``'s ``dataset.uploaded`` commits with the row. Commits. Raises
    :class:`StorageQuotaReached` as :func:`create_checkpoint` does."""
    hold_stored_bytes(session, project_id, size, max_stored_bytes)
    channels, height, width = image_shape if image_shape is not None else (None, None, None)
    dataset = Dataset(
        id=dataset_id or new_id(), filename=filename, kind=kind, size=size, sha256=sha256,
        storage_key=storage_key, created_at=now or utcnow(), project_id=project_id,
        content=content,
        image_channels=channels, image_height=height, image_width=width,
        num_features=num_features, num_examples=num_examples, num_classes=num_classes,
        label_min=label_min, label_max=label_max, num_distinct_labels=num_distinct_labels,
        distinct_labels=list(distinct_labels) if distinct_labels is not None else None,
        value_min=value_min, value_max=value_max,
        channel_value_min=list(channel_value_min) if channel_value_min is not None else None,
        channel_value_max=list(channel_value_max) if channel_value_max is not None else None,
        image_sizes_differ=image_sizes_differ,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(dataset)
    storage_ledger.add(session, project_id, storage_ledger.DATASETS, size)
    if actor is not None:
        record_audit_event(session, actor, "dataset.uploaded", project_id=project_id,
                           resource_id=dataset.id,
                           details={"filename": filename[:128], "size": size})
    session.commit()
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    """The dataset row, or None."""
    return session.get(Dataset, dataset_id)


def list_checkpoints(session: Session, *, project_id: str, limit: int, cursor: str | None = None,
                     format: str | None = None) -> Page[Checkpoint]:
    """The project's checkpoints, newest first, ``limit`` per page (:mod:`persistence.pages`);
    ``format`` keeps one format (``safetensors`` or ``torch``). One statement."""
    query = select(Checkpoint).where(Checkpoint.project_id == project_id)
    if format is not None:
        query = query.where(Checkpoint.format == format)
    binding = list_binding(project_id, format)
    if cursor is not None:
        query = query.where(
            before_cursor("checkpoints", cursor, Checkpoint.created_at, Checkpoint.id, binding))
    return _newest_first(session, "checkpoints", query, Checkpoint, limit, binding)


def list_datasets(session: Session, *, project_id: str, limit: int, cursor: str | None = None,
                  kind: str | None = None) -> Page[Dataset]:
    """The project's uploaded datasets, newest first, ``limit`` per page
    (:mod:`persistence.pages`); ``kind`` keeps one kind (``npz`` or ``imagefolder``). One
    statement. The built-in datasets are no rows, so never listed."""
    query = select(Dataset).where(Dataset.project_id == project_id)
    if kind is not None:
        query = query.where(Dataset.kind == kind)
    binding = list_binding(project_id, kind)
    if cursor is not None:
        query = query.where(before_cursor("datasets", cursor, Dataset.created_at, Dataset.id,
                                          binding))
    return _newest_first(session, "datasets", query, Dataset, limit, binding)


def _newest_first(session: Session, collection: Collection, query: Select[Any],
                  model: type[Upload], limit: int, binding: str) -> Page[Upload]:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows: list[Upload] = list(session.execute(query).scalars())
    return page_of(collection, rows, limit, _sort_key, binding)


def _sort_key(row: Checkpoint | Dataset) -> tuple[datetime, str]:
    return row.created_at, row.id
