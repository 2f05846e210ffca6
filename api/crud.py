"""Database operations only the API needs (the shared ones live in ``persistence/``)."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from persistence.audit import withdraw_audit_events
from persistence.models import Checkpoint, Job
from persistence.storage_ledger import delete_job_rows, delete_upload


def job_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job created with this Idempotency-Key, or None."""
    query = select(Job).where(Job.idempotency_key == key).execution_options(populate_existing=True)
    job = session.execute(query).scalar_one_or_none()
    session.commit()  # end the read transaction (SQLite holds its lock until then)
    return job


def delete_job(session: Session, job_id: str) -> None:
    """Remove a job that could not be queued; labels, stages and events go with it (the
    foreign keys cascade), and its ``job.created`` audit event: the request failed. Commits."""
    delete_job_rows(session, job_id)  # its reservation off the project's ledger
    withdraw_audit_events(session, job_id)
    session.commit()


def delete_checkpoint(session: Session, checkpoint_id: str) -> None:
    """Remove a checkpoint row that no job references (the foreign key refuses otherwise), with
    its ``checkpoint.uploaded`` event: the multipart job request that stored it failed."""
    delete_upload(session, Checkpoint, checkpoint_id)
    withdraw_audit_events(session, checkpoint_id)
    session.commit()


def ping(session: Session) -> None:
    """A round trip to the database; raises if it cannot be reached."""
    session.execute(text("SELECT 1"))
    session.commit()
