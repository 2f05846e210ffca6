"""The stored-bytes ledger: what the ``max_stored_bytes`` quota check reads (migration 0026).

``persistence.records.stored_bytes_by_kind`` counts a project's stored bytes from its rows (every
checkpoint, dataset and artifact, and the spec of each active job): thousands of pages for a
project with a long history, on every upload and job creation. Instead every writer appends the
change it makes, ``(project_id, kind, delta)``, in its own transaction, and the check sums the
project's rows (index-only); the janitor folds them into one row per project and kind
(:func:`fold`), so the sum reads a handful of rows whatever the history.

Two parts of the reference are not sums of rows, so they are kept as per-row remainders whose
changes are the deltas: an active job counts ``max(0, reservation − its artifacts)``
(``jobs.reserved_bytes_left``: set at creation, lowered by its artifacts, 0 at its end) and a
queued or running materialization the size of its job's θ_FT unless its own weights are stored
(``materializations.reserved_bytes``). Each is written under the lock its writers already hold
(the job's row for a job's stages and end, the materialization's row for its status), and no
writer locks the project: the table has no foreign key (whose check
would), so appending adds no edge to the quota checks' project lock. ``rift-admin projects
recount-storage`` compares the ledger with the reference and repairs it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session, aliased

from persistence.models import (
    TERMINAL_STATUSES,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    Materialization,
    MaterializationStatus,
    Project,
    StoredBytesEntry,
)

CHECKPOINTS = "checkpoints"
DATASETS = "datasets"
ARTIFACTS = "artifacts"
MATERIALIZATIONS = "materializations"
ACTIVE_JOBS = "active_jobs"
KINDS = (CHECKPOINTS, DATASETS, ARTIFACTS, MATERIALIZATIONS, ACTIVE_JOBS)

#: The artifact a materialization's weights are the size of: θ_α has θ_FT's tensors.
MATERIALIZED_LIKE = "finetuned.safetensors"

_PENDING = (MaterializationStatus.QUEUED, MaterializationStatus.RUNNING)


def add(session: Session, project_id: str | None, kind: str, delta: int) -> None:
    """Append one change to the project's ledger in the caller's transaction (a job or upload
    without a project counts against no quota: nothing)."""
    if project_id is not None and delta:
        session.add(StoredBytesEntry(project_id=project_id, kind=kind, delta=int(delta)))


def totals(session: Session, project_id: str) -> dict[str, int]:
    """The project's stored bytes by kind (:data:`KINDS`), summed from its ledger."""
    sums = dict(session.execute(
        select(StoredBytesEntry.kind, func.sum(StoredBytesEntry.delta))
        .where(StoredBytesEntry.project_id == project_id)
        .group_by(StoredBytesEntry.kind)).tuples().all())
    return {kind: int(sums.get(kind) or 0) for kind in KINDS}


def job_artifact_bytes(session: Session, job_id: str) -> int:
    """The bytes of the job's artifacts as the database holds them now."""
    return int(session.execute(select(func.coalesce(func.sum(Artifact.size), 0))
                               .where(Artifact.job_id == job_id)).scalar_one())


def artifact_written(session: Session, project_id: str | None, before: int | None,
                     after: int | None) -> None:
    """An artifact row of the project was inserted (``before`` None), replaced or deleted
    (``after`` None)."""
    add(session, project_id, ARTIFACTS, (after or 0) - (before or 0))


def settle_job_reservation(session: Session, job: Job, artifacts: int | None = None) -> None:
    """Bring the locked ``job``'s remaining reservation to what it is now: ``reserved_bytes``
    less its artifacts (``artifacts``: their bytes, read if None) while it is active, else 0;
    the change goes to the ledger. Call after its artifacts or status changed."""
    if job.status in TERMINAL_STATUSES:
        left = 0
    else:
        stored = job_artifact_bytes(session, job.id) if artifacts is None else artifacts
        left = max(0, (job.reserved_bytes or 0) - stored)
    add(session, job.project_id, ACTIVE_JOBS, left - (job.reserved_bytes_left or 0))
    job.reserved_bytes_left = left


def materialization_reservation(session: Session, row: Materialization) -> int:
    """What ``row`` reserves now: the size of its job's θ_FT while it is queued or running and
    its own weights are not stored, else 0."""
    if row.status not in _PENDING:
        return 0
    made = aliased(Artifact)
    size = session.execute(
        select(Artifact.size).where(
            Artifact.job_id == row.job_id, Artifact.name == MATERIALIZED_LIKE,
            ~select(made.name).where(made.job_id == row.job_id,
                                     made.name == row.artifact_name).exists())
    ).scalar_one_or_none()
    return int(size or 0)


def settle_materialization(session: Session, row: Materialization,
                           project_id: str | None = None) -> None:
    """Bring the locked ``row``'s reservation to :func:`materialization_reservation`, the change
    to the ledger of its job's project (``project_id``, read if None). Call after its status
    or its job's artifacts changed."""
    value = materialization_reservation(session, row)
    if value == (row.reserved_bytes or 0):
        return
    if project_id is None:
        project_id = session.execute(select(Job.project_id).where(Job.id == row.job_id)
                                     ).scalar_one_or_none()
    add(session, project_id, MATERIALIZATIONS, value - (row.reserved_bytes or 0))
    row.reserved_bytes = value


def delete_job_rows(session: Session, job_id: str, *conditions: ColumnElement[bool]) -> bool:
    """Delete the job (its artifacts and materializations go with it, ON DELETE CASCADE) if it
    exists and meets ``conditions``, taking what it counted off its project's ledger; False if
    no such job. The job's row is locked first, then its materializations' (the order of
    every writer holding both): the writers of its artifacts hold the job (KEY SHARE at
    least) and those ending a materialization alone hold its row, so the sums read here are
    those of the rows deleted."""
    found = session.execute(
        select(Job.project_id, Job.reserved_bytes_left)
        .where(Job.id == job_id, *conditions).with_for_update()).one_or_none()
    if found is None:
        return False
    project_id, left = found
    artifacts = job_artifact_bytes(session, job_id)
    reserved = sum(int(size) for size in session.execute(
        select(Materialization.reserved_bytes).where(Materialization.job_id == job_id)
        .order_by(Materialization.id).with_for_update()).scalars())
    session.execute(delete(Job).where(Job.id == job_id))
    add(session, project_id, ARTIFACTS, -artifacts)
    add(session, project_id, MATERIALIZATIONS, -reserved)
    add(session, project_id, ACTIVE_JOBS, -(left or 0))
    return True


def delete_upload(session: Session, model: type[Checkpoint] | type[Dataset],
                  row_id: str) -> bool:
    """Delete the checkpoint or dataset row, its size off its project's ledger; False if it
    was gone. (The foreign keys of the jobs using it refuse the delete: IntegrityError.)"""
    deleted = session.execute(delete(model).where(model.id == row_id)
                              .returning(model.project_id, model.size)).all()
    for project_id, size in deleted:
        add(session, project_id, CHECKPOINTS if model is Checkpoint else DATASETS, -int(size))
    return bool(deleted)


def adopt_unowned_rows(session: Session, project_id: str) -> dict[str, int]:
    """Give the project every checkpoint, dataset and job with none (``rift-admin projects
    adopt``), their bytes, artifacts and remainders added to its ledger; returns how many rows
    of each moved. The jobs are locked first, then their materializations: a writer of their
    artifacts or remainders holds the job (or, ending a materialization alone, its row) and
    appends under the job's project as it reads it after this commits; the rows each UPDATE
    returns are the rows it moved, so a row inserted meanwhile is counted if moved."""
    session.execute(select(Job.id).where(Job.project_id.is_(None)).with_for_update()).all()
    moved_jobs = session.execute(
        update(Job).where(Job.project_id.is_(None)).values(project_id=project_id)
        .returning(Job.id, Job.reserved_bytes_left)).all()
    job_ids = [job_id for job_id, _ in moved_jobs]
    artifacts = reserved = 0
    for start in range(0, len(job_ids), 500):
        batch = job_ids[start:start + 500]
        session.execute(select(Materialization.id).where(Materialization.job_id.in_(batch))
                        .with_for_update()).all()
        artifacts += int(session.execute(select(func.coalesce(func.sum(Artifact.size), 0))
                                         .where(Artifact.job_id.in_(batch))).scalar_one())
        reserved += int(session.execute(
            select(func.coalesce(func.sum(Materialization.reserved_bytes), 0))
            .where(Materialization.job_id.in_(batch))).scalar_one())
    add(session, project_id, ARTIFACTS, artifacts)
    add(session, project_id, MATERIALIZATIONS, reserved)
    add(session, project_id, ACTIVE_JOBS, sum(int(left or 0) for _, left in moved_jobs))
    counts = {"jobs": len(moved_jobs)}
    for name, model, kind in (("checkpoints", Checkpoint, CHECKPOINTS),
                              ("datasets", Dataset, DATASETS)):
        sizes = session.execute(update(model).where(model.project_id.is_(None))
                                .values(project_id=project_id).returning(model.size)).scalars()
        moved = [int(size) for size in sizes]
        add(session, project_id, kind, sum(moved))
        counts[name] = len(moved)
    return counts


def fold(session: Session, *, min_rows: int = 2 * len(KINDS)) -> int:
    """Replace the ledger rows of each project holding at least ``min_rows`` by one row per
    kind with their sum; returns how many rows were removed. Commits. The rows are deleted
    with RETURNING and the sums are of the rows returned, so a row appended meanwhile by a
    transaction not yet committed is neither summed nor deleted: the totals never move."""
    # Rows of a project deleted meanwhile (its deletion deletes its rows; there is no foreign
    # key to do it for an append that raced it).
    orphans = session.execute(delete(StoredBytesEntry).where(
        ~select(Project.id).where(Project.id == StoredBytesEntry.project_id).exists())
        .returning(StoredBytesEntry.id)).all()
    removed = len(orphans)
    projects = list(session.execute(
        select(StoredBytesEntry.project_id).group_by(StoredBytesEntry.project_id)
        .having(func.count() >= min_rows)).scalars())
    for project_id in projects:
        rows = session.execute(delete(StoredBytesEntry)
                               .where(StoredBytesEntry.project_id == project_id)
                               .returning(StoredBytesEntry.kind, StoredBytesEntry.delta)).all()
        sums: dict[str, int] = {}
        for kind, delta in rows:
            sums[kind] = sums.get(kind, 0) + int(delta)
        for kind, total in sorted(sums.items()):
            add(session, project_id, kind, total)
        session.commit()
        removed += len(rows) - sum(1 for total in sums.values() if total)
    session.commit()
    return removed


def settle_project(session: Session, project_id: str) -> None:
    """Bring every remainder of the project's jobs and materializations to what it is now
    (their changes to the ledger): the first half of a recount. Commits."""
    jobs = session.execute(
        select(Job).where(Job.project_id == project_id,
                          (Job.status.not_in(TERMINAL_STATUSES)) | (Job.reserved_bytes_left != 0))
        .order_by(Job.id).with_for_update().execution_options(populate_existing=True)).scalars()
    for job in list(jobs):
        settle_job_reservation(session, job)
    rows = session.execute(
        select(Materialization).join(Job, Job.id == Materialization.job_id)
        .where(Job.project_id == project_id,
               Materialization.status.in_(_PENDING) | (Materialization.reserved_bytes != 0))
        .order_by(Materialization.id).with_for_update(of=Materialization)
        .execution_options(populate_existing=True)).scalars()
    for row in list(rows):
        settle_materialization(session, row, project_id)
    session.commit()

