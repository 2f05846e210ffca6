"""Idempotency-Key replays of jobs that an earlier release recorded.

A job's request hash covers its config with every default filled in
(:func:`api.job_requests.fingerprint`). A setting added since the job was recorded is in the
hash this release computes for the same request but not in the stored one, so a client retrying
its ``POST /v1/jobs`` across an upgrade (its first answer lost as the service restarted) got 409
``idempotency_conflict`` for the very request that made the job. Where the hashes differ, the
request is compared with what the job recorded instead."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas import JobSpec
from persistence.models import Checkpoint, Job
from rift.config import stored_config


def asks_for_recorded_job(session: Session, job: Job, spec: JobSpec, checkpoint_ref: str) -> bool:
    """Whether ``spec`` asks for ``job`` as recorded: the same config once the settings its
    release did not have take their defaults (:func:`rift.config.stored_config`), the same
    checkpoint (``checkpoint_ref``: an id, or ``sha256:<hex>`` of an uploaded file, as in the
    fingerprint), dataset, labels and time limit."""
    if job.spec is None:
        return False
    try:
        recorded = stored_config(job.spec).model_dump(mode="json")
    except ValidationError:  # nothing a request accepted today can equal
        return False
    if recorded != spec.config.model_dump(mode="json"):
        return False
    if checkpoint_ref.startswith("sha256:"):
        checkpoint = session.get(Checkpoint, job.checkpoint_id)
        if checkpoint is None or f"sha256:{checkpoint.sha256}" != checkpoint_ref:
            return False
    elif job.checkpoint_id != checkpoint_ref:
        return False
    return (job.dataset_id == spec.dataset_id and job.label_dict == dict(spec.labels or {})
            and job.time_limit_seconds == spec.time_limit_seconds)
