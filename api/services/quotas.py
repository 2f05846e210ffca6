"""Per-project quotas, checked where resources are made: active jobs, stored bytes, job cost
(example-passes and GFLOP).

Active jobs and stored bytes are counted again where the row is inserted, under a lock on the
project's row (``persistence.jobs.create_job``, ``persistence.records``), so concurrent requests
cannot pass a quota together; the checks here fail early, before a body is read or stored.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import Caller
from api.errors import InvalidInput, PayloadTooLarge, TooManyRequests
from persistence.cost import CostEstimate
from persistence.jobs import count_active_jobs
from persistence.records import stored_bytes

#: Retry-After of a 429 for too many active jobs: jobs take minutes, not seconds.
ACTIVE_JOBS_RETRY_AFTER_S = 60


def active_jobs(session: Session, project_id: str) -> int:
    """The project's queued and running jobs."""
    return count_active_jobs(session, project_id)


def check_active_jobs(session: Session, caller: Caller) -> None:
    """Raise 429 ``quota_exceeded`` if the project already has its limit of active jobs."""
    limit = caller.limits.max_active_jobs
    count = active_jobs(session, caller.project_id)
    if count >= limit:
        raise active_jobs_exceeded(caller, count, limit)


def active_jobs_exceeded(caller: Caller, count: int, limit: int) -> TooManyRequests:
    """The 429 for a project at its limit of active jobs."""
    return TooManyRequests(
        f"project '{caller.project_name}' has {count} queued or running jobs, its quota "
        f"max_active_jobs is {limit}; wait for one to finish or cancel one",
        field="max_active_jobs", code="quota_exceeded",
        headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_S)},
        details={"quota": "max_active_jobs", "limit": limit, "used": count})


def check_storage(session: Session, caller: Caller, incoming: int) -> None:
    """Raise 413 ``quota_exceeded`` if storing ``incoming`` more bytes passes the project's
    quota."""
    limit = caller.limits.max_stored_bytes
    used = stored_bytes(session, caller.project_id)
    if used + incoming > limit:
        raise storage_exceeded(caller, used, incoming, limit)


def check_job_storage(session: Session, caller: Caller, uploading: int, reserved: int) -> None:
    """Raise 413 ``quota_exceeded`` if the job's checkpoint sent with it (``uploading`` bytes)
    and what the job may store (``reserved``) pass the project's quota."""
    limit = caller.limits.max_stored_bytes
    used = stored_bytes(session, caller.project_id)
    if used + uploading + reserved > limit:
        raise job_storage_exceeded(caller, used, reserved, limit, uploading=uploading)


def job_storage_exceeded(caller: Caller, used: int, reserved: int, limit: int, *,
                         uploading: int = 0) -> PayloadTooLarge:
    """The 413 for a job whose outputs may not fit the project's stored-bytes quota.

    ``used`` is what the project stores and reserves now (GET /v1/usage's figure); the
    checkpoint sent with the job (``uploading``, not stored yet) is incoming with the
    reservation: counted in ``used`` it made the answer's use disagree with the usage's."""
    sent = (f"the checkpoint sent with it ({uploading} bytes) and " if uploading else "")
    return PayloadTooLarge(
        f"{sent}the job may store up to {reserved} bytes (its tuned weights and each "
        f"fine-tuned candidate's, each the checkpoint's size), which would take project "
        f"'{caller.project_name}' from {used} to {used + uploading + reserved} bytes, over its "
        f"quota max_stored_bytes of {limit}; delete checkpoints, datasets or jobs first",
        field="max_stored_bytes", code="quota_exceeded",
        details={"quota": "max_stored_bytes", "limit": limit, "used": used,
                 "incoming": uploading + reserved})


def storage_exceeded(caller: Caller, used: int, incoming: int, limit: int) -> PayloadTooLarge:
    """The 413 for an upload that would take the project past its stored-bytes quota."""
    return PayloadTooLarge(
        f"storing {incoming} more bytes would take project '{caller.project_name}' to "
        f"{used + incoming} bytes, over its quota max_stored_bytes of {limit}; delete "
        "checkpoints, datasets or jobs first",
        field="max_stored_bytes", code="quota_exceeded",
        details={"quota": "max_stored_bytes", "limit": limit, "used": used,
                 "incoming": incoming})


def check_cost(caller: Caller, estimate: CostEstimate) -> None:
    """Raise 422 ``cost_limit_exceeded`` if the job's estimate passes the project's limit."""
    limit = caller.limits.max_job_cost
    if estimate.total > limit:
        raise InvalidInput(
            f"the job's cost estimate is {estimate.total} example-passes, over the project's "
            f"limit max_job_cost of {limit}; lower epochs, attack.steps, mrc.num_examples, "
            "mrc.steps or raise interpolation.alpha_step",
            field="max_job_cost", code="cost_limit_exceeded",
            details={"limit": limit, "estimate": estimate.to_json()})


def check_compute(caller: Caller, estimate: CostEstimate) -> None:
    """Raise 422 ``cost_limit_exceeded`` (field ``max_job_gflop``) if the job's compute estimate
    passes the project's limit. A job whose model's FLOPs were not counted (``gflop`` None) is
    not checked: its example-passes still are, against ``max_job_cost``."""
    limit = caller.limits.max_job_gflop
    gflop = estimate.gflop
    if gflop is not None and gflop > limit:
        raise InvalidInput(
            f"the job's compute estimate is {gflop:.4g} GFLOP ({estimate.total} example-passes of "
            f"a model of {estimate.to_json()['example_gflop']:.4g} GFLOP per example forward), "
            f"over the project's limit max_job_gflop of {limit}; use a smaller model or lower "
            "epochs, attack.steps, mrc.num_examples, mrc.steps or raise "
            "interpolation.alpha_step",
            field="max_job_gflop", code="cost_limit_exceeded",
            details={"limit": limit, "estimate": estimate.to_json()})


def check_time_limit(requested_seconds: float | None, service_seconds: float) -> None:
    """Raise 422 if a job asks for a longer wall-clock limit than the service allows."""
    if requested_seconds is not None and requested_seconds > service_seconds:
        raise InvalidInput(
            f"time_limit_seconds is {requested_seconds:g}, over the service's limit of "
            f"{service_seconds:g} s (JOB_TIME_LIMIT_SECONDS); ask for {service_seconds:g} or "
            "less, or leave it out for the service's limit",
            field="time_limit_seconds", code="time_limit_exceeded",
            details={"limit": service_seconds, "requested": requested_seconds})
