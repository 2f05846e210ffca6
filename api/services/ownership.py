"""Ownership, in one place: a resource is visible only to keys of the project that owns it.

Another project's resource looks exactly like a missing one (a 404 with the same message), so a
caller learns nothing about ids it does not own. Events and artifacts belong to their job.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from api.errors import NotFound
from api.schemas import is_resource_id
from persistence.jobs import JobSummary, get_job_summary
from persistence.models import Checkpoint, Dataset, Job
from persistence.transactions import JobNotFound, load_job

Owned = TypeVar("Owned", Checkpoint, Dataset)


def find_owned(session: Session, model: type[Owned], project_id: str,
               resource_id: str, *, fresh: bool = False, lock: bool = False) -> Owned | None:
    """The ``model`` row ``resource_id`` if ``project_id`` owns it, else None; ``fresh``: read
    from the database even when the session holds the row already (a concurrent request may
    have deleted it since); ``lock``: fresh, and row-locked until the transaction ends."""
    if not is_resource_id(resource_id):
        return None
    row = session.get(model, resource_id, populate_existing=fresh or lock,
                      with_for_update=lock or None)
    return row if row is not None and row.project_id == project_id else None


def owned_checkpoint(session: Session, project_id: str, checkpoint_id: str, *,
                     fresh: bool = False, lock: bool = False) -> Checkpoint:
    row = find_owned(session, Checkpoint, project_id, checkpoint_id, fresh=fresh, lock=lock)
    if row is None:
        raise NotFound(f"no checkpoint with id '{checkpoint_id[:64]}'", field="checkpoint_id",
                       code="checkpoint_not_found")
    return row


def owned_dataset(session: Session, project_id: str, dataset_id: str, *,
                  fresh: bool = False, lock: bool = False) -> Dataset:
    row = find_owned(session, Dataset, project_id, dataset_id, fresh=fresh, lock=lock)
    if row is None:
        raise NotFound(f"no dataset with id '{dataset_id[:64]}'", field="dataset_id",
                       code="dataset_not_found")
    return row


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id '{job_id[:64]}'", field="job_id", code="job_not_found")


def owned_job(session: Session, project_id: str, job_id: str, *, lock: bool = False) -> Job:
    """The job (labels and stages loaded, fresh) if ``project_id`` owns it; else a 404.
    ``lock``: its row is locked until the transaction ends."""
    job = None
    if is_resource_id(job_id):
        try:
            job = load_job(session, job_id, for_update=lock)
        except JobNotFound:
            job = None
    if job is None or job.project_id != project_id:
        raise _job_not_found(job_id)
    return job


def owned_job_summary(session: Session, project_id: str, job_id: str) -> JobSummary:
    """The job read as plain rows (the fast read path) if ``project_id`` owns it; else a 404."""
    summary = None
    if is_resource_id(job_id):
        try:
            summary = get_job_summary(session, job_id)
        except JobNotFound:
            summary = None
    if summary is None or summary.project_id != project_id:
        raise _job_not_found(job_id)
    return summary
