"""Removing stored objects after their rows, and deleting a whole project: the rows first (one
transaction), then the objects (the rows' keys, and everything under each deleted job's
``jobs/<id>/`` prefix).

An object whose delete fails after its row is gone is an orphan that the janitor removes
(``persistence/janitor.py``: ``checkpoints/`` and ``datasets/`` objects no row points at,
``jobs/<id>/`` objects of jobs that no longer exist); the reverse order could leave a row
pointing at nothing. The API's deletion of one checkpoint, dataset or job
(``api/services/deletion.py``) and the deletion of a whole project both remove objects with
:func:`delete_objects`.

A project is deleted only while none of its jobs is queued or running: a worker running a stage
writes the job's rows and objects until it stops. ``force`` first revokes the project's keys (so
it cannot start another job meanwhile) and cancels its jobs, then waits for their workers to
stop; a worker checks for cancellation between batches (``PROGRESS_INTERVAL_SECONDS``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from persistence.audit import Actor, record_audit_event
from persistence.jobs import JobAlreadyFinished, request_cancel
from persistence.models import (
    ApiKey,
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobStatus,
    Project,
    StoredBytesEntry,
    WebhookEndpoint,
    utcnow,
)
from persistence.object_keys import job_prefix
from persistence.storage import ObjectStore
from persistence.transactions import (
    PersistenceError,
    ProjectNotFound,
    lock_project,
    transaction,
)

logger = logging.getLogger(__name__)

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
#: How many job ids an error lists.
LISTED_JOBS = 20
#: Pause between two looks at jobs being cancelled: a worker stops within a batch.
_POLL_S = 0.2


class ProjectHasActiveJobs(PersistenceError):
    """The project has queued or running jobs (HTTP 409); ``stopping``: their cancellation was
    asked for (``force``) and their workers have not stopped yet."""

    def __init__(self, project_name: str, job_ids: list[str], *, stopping: bool) -> None:
        if stopping:
            message = (f"project '{project_name}' still has {len(job_ids)} running job(s) after "
                       "their cancellation was requested; their workers stop at the next batch, "
                       "retry the deletion in a few seconds")
        else:
            message = (f"project '{project_name}' has {len(job_ids)} queued or running job(s); "
                       "cancel them first, or delete with force (which cancels them)")
        super().__init__(message)
        self.code = "jobs_stopping" if stopping else "project_has_active_jobs"
        self.job_ids = job_ids[:LISTED_JOBS]
        self.stopping = stopping


class ProjectInputsReferenced(PersistenceError):
    """Another project's jobs name a checkpoint or dataset of this project (rows from before
    projects existed, given to different projects): HTTP 409, nothing deleted."""

    code = "project_referenced"

    def __init__(self, project_name: str, job_ids: list[str]) -> None:
        super().__init__(f"jobs of other projects use checkpoints or datasets of project "
                         f"'{project_name}'; delete those jobs first")
        self.job_ids = job_ids[:LISTED_JOBS]


class ProjectAlreadyDeleted(PersistenceError):
    """Another deletion of the same project (a second admin, a retried request) finished while
    this one ran (HTTP 404, as a deletion sent after it gets)."""

    code = "project_not_found"

    def __init__(self, project_name: str) -> None:
        super().__init__(f"no project named '{project_name[:64]}' (deleted meanwhile)")


@dataclass(frozen=True)
class DeletedProject:
    """What went with the project (rows), and how many stored objects were removed."""

    name: str
    jobs: int
    checkpoints: int
    datasets: int
    webhooks: int
    keys: int
    objects: int


def delete_objects(store: ObjectStore, keys: Iterable[str]) -> int:
    """Delete each object after its row is gone; returns how many went. A failure is logged
    and left to the janitor (the row is already gone, so the object is an orphan it removes)."""
    batch = list(dict.fromkeys(keys))
    try:
        # One request per 1,000 keys on S3 (a project holds thousands of objects).
        failed = store.delete_many(batch)
    except Exception as exc:  # StoreError and transport errors: the janitor retries
        logger.warning("could not delete %d objects after their rows: %s", len(batch),
                       type(exc).__name__)
        return 0
    for key, reason in failed.items():
        logger.warning("could not delete object %s after its row: %s", key, reason)
    return len(batch) - len(failed)


def job_objects(store: ObjectStore, job_ids: Iterable[str]) -> list[str]:
    """The keys under each job's ``jobs/<id>/`` prefix: besides its artifacts, the records its
    stages wrote for later stages (``mrc.json``) and what abandoned attempts left. Call once the
    rows are gone (nothing writes there then); a listing that fails is logged and its objects
    left to the janitor."""
    keys: list[str] = []
    for job_id in job_ids:
        try:
            keys.extend(item.key for item in store.list_objects(job_prefix(job_id)))
        except Exception as exc:  # StoreError and transport errors: the janitor retries
            logger.warning("could not list the objects of deleted job %s: %s", job_id,
                           type(exc).__name__)
    return keys


def active_job_ids(session: Session, project_id: str) -> list[str]:
    """The project's queued and running jobs, oldest first."""
    return list(session.execute(
        select(Job.id).where(Job.project_id == project_id, Job.status.in_(ACTIVE))
        .order_by(Job.created_at, Job.id)).scalars())


def revoke_project_keys(session: Session, project_id: str) -> None:
    """Revoke every live key of the project at once (commits)."""
    with transaction(session):
        session.execute(update(ApiKey).where(ApiKey.project_id == project_id,
                                             ApiKey.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))


def cancel_active_jobs(session: Session, project_id: str) -> list[str]:
    """Ask every queued or running job of the project to stop (queued ones, and running ones no
    worker holds, stop at once); returns the ids asked."""
    asked = active_job_ids(session, project_id)
    session.commit()
    for job_id in asked:
        with suppress(JobAlreadyFinished):  # ended meanwhile
            request_cancel(session, job_id)
    return asked


def wait_until_stopped(session: Session, project_id: str, timeout_s: float, *,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Wait up to ``timeout_s`` for the project's jobs to end; returns those still active."""
    deadline = clock() + timeout_s
    while True:
        active = active_job_ids(session, project_id)
        session.commit()  # a fresh snapshot next time
        if not active or clock() >= deadline:
            return active
        sleep(_POLL_S)


def delete_project(session: Session, store: ObjectStore, project: Project, *, force: bool,
                   wait_s: float, actor: Actor | None = None) -> DeletedProject:
    """Delete the project, its keys, webhooks, jobs (with everything recorded about them:
    stages, events, artifacts, materializations), checkpoints and datasets, then their stored
    objects. :class:`ProjectHasActiveJobs` while it has queued or running jobs, unless ``force``
    (see the module docstring), which waits up to ``wait_s`` for them to stop. The rows' deletion
    records ``actor``'s ``project.deleted`` in its transaction (the trail outlives the project:
    ``audit_events.project_id`` is no foreign key)."""
    name, project_id = project.name, project.id
    if not force:
        return _delete_rows_then_objects(session, store, name, project_id, actor, force)
    # Twice at most: a job request of one of its keys that authenticated before the keys were
    # revoked (a CI loop submitting while the project goes) may insert its job after the first
    # round of cancellations; the second round cancels it, instead of a 409 that told the
    # caller to use the force it had used.
    rounds_left = 2
    while True:
        rounds_left -= 1
        revoke_project_keys(session, project_id)
        if cancel_active_jobs(session, project_id):
            still = wait_until_stopped(session, project_id, wait_s)
            if still:
                raise ProjectHasActiveJobs(name, still, stopping=True)
        try:
            return _delete_rows_then_objects(session, store, name, project_id, actor, force)
        except ProjectHasActiveJobs:
            if not rounds_left:
                raise


def project_storage_keys(session: Session, project_id: str) -> list[str]:
    """The storage keys its rows name: its jobs' artifacts, its checkpoints and datasets."""
    return [*session.execute(select(Artifact.storage_key)
                             .join(Job, Job.id == Artifact.job_id)
                             .where(Job.project_id == project_id)).scalars(),
            *session.execute(select(Checkpoint.storage_key)
                             .where(Checkpoint.project_id == project_id)).scalars(),
            *session.execute(select(Dataset.storage_key)
                             .where(Dataset.project_id == project_id)).scalars()]


def _delete_rows_then_objects(session: Session, store: ObjectStore, name: str,
                              project_id: str, actor: Actor | None = None,
                              force: bool = False) -> DeletedProject:
    """:func:`delete_project`'s rows (one transaction under the project's lock), then its
    objects; :class:`ProjectHasActiveJobs` (nothing deleted) while it has active jobs."""
    with transaction(session):
        # Under the project's lock nothing of the project can be created meanwhile: inserts
        # take it first (persistence.transactions.lock_project), and find it gone afterwards.
        try:
            lock_project(session, project_id)
        except ProjectNotFound as exc:
            # Not the caller's own project gone (the 401 of lock_project's other callers).
            raise ProjectAlreadyDeleted(name) from exc
        active = active_job_ids(session, project_id)
        if active:
            raise ProjectHasActiveJobs(name, active, stopping=False)
        job_ids = list(session.execute(select(Job.id).where(Job.project_id == project_id))
                       .scalars())
        keys = project_storage_keys(session, project_id)
        # Jobs before their inputs (the foreign keys restrict); each job's own tables go with
        # it (ON DELETE CASCADE), as do each webhook's deliveries and the keys.
        foreign = _foreign_jobs_using_inputs(session, project_id)
        if foreign:
            raise ProjectInputsReferenced(name, foreign)
        counts = {model.__tablename__: _rowcount(session.execute(
            delete(model).where(model.project_id == project_id)))
            for model in (Job, WebhookEndpoint, Checkpoint, Dataset, ApiKey)}
        # Its stored-bytes ledger goes with it (no foreign key: persistence.storage_ledger).
        session.execute(delete(StoredBytesEntry).where(StoredBytesEntry.project_id == project_id))
        session.execute(delete(Project).where(Project.id == project_id))
        if actor is not None:
            record_audit_event(session, actor, "project.deleted", project_id=project_id,
                               resource_id=project_id,
                               details={"name": name, "force": force,
                                        "jobs": counts["jobs"],
                                        "checkpoints": counts["checkpoints"],
                                        "datasets": counts["datasets"],
                                        "webhooks": counts["webhook_endpoints"],
                                        "keys": counts["api_keys"]})
    objects = delete_objects(store, dict.fromkeys([*keys, *job_objects(store, job_ids)]))
    logger.info("deleted project %s (%s): %s, %d objects", name, project_id, counts, objects)
    return DeletedProject(name=name, jobs=counts["jobs"], checkpoints=counts["checkpoints"],
                          datasets=counts["datasets"], webhooks=counts["webhook_endpoints"],
                          keys=counts["api_keys"], objects=objects)


def _foreign_jobs_using_inputs(session: Session, project_id: str) -> list[str]:
    """Jobs outside the project naming one of its checkpoints or datasets: the foreign keys
    would refuse the deletion (checked first, so the answer names them instead of a 500)."""
    owned_checkpoints = select(Checkpoint.id).where(Checkpoint.project_id == project_id)
    owned_datasets = select(Dataset.id).where(Dataset.project_id == project_id)
    return list(session.execute(
        select(Job.id).where(Job.project_id.is_distinct_from(project_id),
                             Job.checkpoint_id.in_(owned_checkpoints)
                             | Job.dataset_id.in_(owned_datasets))
        .order_by(Job.created_at, Job.id).limit(LISTED_JOBS)).scalars())


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
