"""Asking again for a succeeded job's MLflow export (``POST /v1/jobs/{id}/mlflow-export``).

The worker exports a job once, after it succeeds; a worker lost meanwhile, or a tracking server
down then, left it unexported for good. A request is one ``mlflow_export_requested`` event (the
poll's cursor: the outcome is the next ``mlflow_exported`` or export ``warning``) and one queued
task; no table, since the export itself is idempotent (it finds the job's finished run by its
``rift.job_id`` tag and returns it with its model version), so each request simply runs it again.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from persistence.audit import Actor, record_audit_event
from persistence.materializations import JobNotSucceeded
from persistence.models import JobEvent, JobStatus, utcnow
from persistence.transactions import load_job, log_event, transaction

#: The event a request adds; the worker's outcome follows it.
EXPORT_REQUESTED = "mlflow_export_requested"


def request_mlflow_export(session: Session, job_id: str, request_id: str | None, *,
                          actor: Actor | None = None) -> JobEvent:
    """Record the request as a job event (and ``actor``'s ``mlflow_export.requested``);
    :class:`JobNotSucceeded` unless the job succeeded (only a succeeded job has the tuned
    weights and results an export logs)."""
    with transaction(session):
        # Row-locked: a deletion of the job waits for (or comes before) this event's write.
        job = load_job(session, job_id, for_update=True, relations=False)
        if job.status != JobStatus.SUCCEEDED:
            raise JobNotSucceeded(f"job {job_id} is {job.status}; it can be exported to MLflow "
                                  "once it has succeeded")
        event = log_event(session, job_id, EXPORT_REQUESTED, {"request_id": request_id},
                          utcnow())
        if actor is not None:
            record_audit_event(session, actor, "mlflow_export.requested",
                               project_id=job.project_id, resource_id=job_id)
    return event
