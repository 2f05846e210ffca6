"""Deleting checkpoints, datasets and jobs: the rows first (one transaction), then the stored
objects with :func:`persistence.deletion.delete_objects` (the one way objects are removed after
their rows, also used when a whole project is deleted).

A checkpoint or dataset that a queued or running job uses is 409 ``in_use``; one that finished
jobs still reference is 409 ``referenced`` (delete those jobs first: a job's record names its
inputs). A job that has not finished is 409 ``job_active``: cancel it first.

With an ``If-Match`` (or, for a job, ``If-Unmodified-Since``) the row is read locked, checked
against the representation its GET answers (:mod:`api.write_conditions`) and deleted in the
same transaction.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.auth import Caller
from api.errors import Conflict
from api.services.jobs import job_out
from api.services.ownership import owned_checkpoint, owned_dataset, owned_job
from api.services.upload_records import checkpoint_out, dataset_out
from api.write_conditions import WriteConditions, require_unchanged
from persistence.audit import record_audit_event
from persistence.deletion import ACTIVE, LISTED_JOBS, delete_objects, job_objects
from persistence.models import Artifact, Checkpoint, Dataset, Job
from persistence.storage import ObjectStore
from persistence.storage_ledger import delete_job_rows, delete_upload


def _refuse_if_used(session: Session, column: InstrumentedAttribute[str | None],
                    resource_id: str, what: str) -> None:
    rows = session.execute(
        select(Job.id, Job.status).where(column == resource_id)
        .order_by(Job.created_at, Job.id).limit(1000)).all()
    active = [job_id for job_id, status in rows if status in ACTIVE]
    if active:
        raise Conflict(
            f"{what} {resource_id} is used by {len(active)} queued or running job(s); cancel "
            "them or wait until they finish", field=f"{what}_id", code="in_use",
            details={"job_ids": active[:LISTED_JOBS]})
    if rows:
        ids = [job_id for job_id, _ in rows]
        raise Conflict(
            f"{what} {resource_id} is referenced by {len(ids)} finished job(s); delete those "
            "jobs first", field=f"{what}_id", code="referenced",
            details={"job_ids": ids[:LISTED_JOBS]})


def _delete_unused_row(session: Session, model: type[Checkpoint | Dataset],
                       column: InstrumentedAttribute[str | None], resource_id: str,
                       what: Literal["checkpoint", "dataset"], caller: Caller) -> None:
    """Delete the row that :func:`_refuse_if_used` found unused. A job naming it may have been
    committed since (a concurrent POST /v1/jobs): the foreign key then refuses the delete, and
    the answer is the 409 the check gives now, not a 500. A concurrent DELETE of the same row
    that won makes this one a 404, as it would be sent after it (not a second 204). The
    deletion's audit event commits with it."""
    project_id = caller.project_id
    try:
        deleted = delete_upload(session, model, resource_id)  # its bytes off the ledger
        if deleted:
            record_audit_event(session, caller.actor, "checkpoint.deleted" if what == "checkpoint"
                               else "dataset.deleted", project_id=project_id,
                               resource_id=resource_id)
        session.commit()
    except IntegrityError:
        session.rollback()
        _refuse_if_used(session, column, resource_id, what)
        raise
    if not deleted:
        owned = owned_checkpoint if model is Checkpoint else owned_dataset
        owned(session, project_id, resource_id, fresh=True)


#: No precondition: the default of the functions below.
UNCONDITIONAL = WriteConditions(if_match=None, if_unmodified_since=None)


def delete_checkpoint(session: Session, store: ObjectStore, caller: Caller,
                      checkpoint_id: str, conditions: WriteConditions = UNCONDITIONAL) -> None:
    row = owned_checkpoint(session, caller.project_id, checkpoint_id, lock=conditions.present)
    require_unchanged(conditions, checkpoint_out(row))
    _refuse_if_used(session, Job.checkpoint_id, row.id, "checkpoint")
    key = row.storage_key
    _delete_unused_row(session, Checkpoint, Job.checkpoint_id, row.id, "checkpoint", caller)
    delete_objects(store, [key])


def delete_dataset(session: Session, store: ObjectStore, caller: Caller, dataset_id: str,
                   conditions: WriteConditions = UNCONDITIONAL) -> None:
    row = owned_dataset(session, caller.project_id, dataset_id, lock=conditions.present)
    require_unchanged(conditions, dataset_out(row))
    _refuse_if_used(session, Job.dataset_id, row.id, "dataset")
    key = row.storage_key
    _delete_unused_row(session, Dataset, Job.dataset_id, row.id, "dataset", caller)
    delete_objects(store, [key])


def _still_active(job: Job) -> str:
    """Why an active job cannot be deleted yet, and what to do: a job already asked to stop (a
    cancellation, or a part's failure waiting for its running siblings) needs no cancel, only
    time for its running parts to reach their next batch."""
    if not job.cancel_requested:
        return (f"job {job.id} is {job.status}: cancel it first (POST /v1/jobs/{job.id}/cancel), "
                "then delete it once it has stopped")
    why = (f"its failure ({job.error_code}) waits for its running parts to stop"
           if job.error_code else "it was cancelled and its running parts are stopping")
    return (f"job {job.id} is still {job.status}: {why}; delete it once its status is final "
            f"(GET /v1/jobs/{job.id})")


def delete_job(session: Session, store: ObjectStore, caller: Caller, job_id: str,
               conditions: WriteConditions = UNCONDITIONAL) -> None:
    """Delete a finished job with its records, artifacts and every other object its stages
    wrote (409 while it is queued/running)."""
    job = owned_job(session, caller.project_id, job_id, lock=conditions.present)
    if conditions.present:
        require_unchanged(conditions, job_out(session, job), updated_at=job.updated_at)
    if job.status in ACTIVE:
        raise Conflict(_still_active(job), field="job_id", code="job_active",
                       details={"status": job.status, "cancel_requested": job.cancel_requested})
    keys = list(session.execute(
        select(Artifact.storage_key).where(Artifact.job_id == job.id)).scalars())
    # The status is re-checked in the DELETE itself, so a job that started meanwhile stays.
    deleted = delete_job_rows(session, job.id, Job.status.not_in(ACTIVE))
    if deleted:
        record_audit_event(session, caller.actor, "job.deleted", project_id=caller.project_id,
                           resource_id=job.id, details={"status": job.status})
    session.commit()
    if not deleted:
        # Gone: a concurrent DELETE of the same job won (404, as a DELETE sent after it gets).
        owned_job(session, caller.project_id, job.id)
        raise Conflict(f"job {job.id} is running again: cancel it first", field="job_id",
                       code="job_active")
    delete_objects(store, dict.fromkeys([*keys, *job_objects(store, [job.id])]))
