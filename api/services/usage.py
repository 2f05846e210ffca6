"""A project's usage (GET /v1/usage, GET /v1/admin/projects/{name}/usage): the counters the
quota checks read (:mod:`persistence.usage`) shaped as the API answers them, with the live
counts the request-rate and stream checks keep (:mod:`api.limits`: in Redis or in this API
process, never in the database)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import Caller
from api.limits import RateLimiter, StreamSlots, project_rate_key
from api.schemas import (
    ActiveJobsOut,
    EventStreamsOut,
    PendingMaterializationsOut,
    RequestWindowOut,
    StoredBytesOut,
    UsageOut,
)
from persistence.models import Project
from persistence.settings import Settings
from persistence.usage import ProjectLimits, ProjectUsage, project_usage

#: The rate check's window (``api.auth.get_caller``: max_requests_per_minute).
_RATE_WINDOW_S = 60


def usage_out(usage: ProjectUsage, *, project_id: str, key_id: str | None,
              limiter: RateLimiter, slots: StreamSlots) -> UsageOut:
    stored, limits = usage.stored, usage.limits
    window = limiter.current(project_rate_key(project_id), _RATE_WINDOW_S)
    return UsageOut(
        project=usage.project_name,
        stored_bytes=StoredBytesOut(
            used=stored.total, limit=limits.max_stored_bytes, checkpoints=stored.checkpoints,
            datasets=stored.datasets, artifacts=stored.artifacts,
            reserved_by_active_jobs=stored.reserved_by_active_jobs,
            reserved_by_materializations=stored.reserved_by_materializations),
        active_jobs=ActiveJobsOut(used=usage.active_jobs, limit=limits.max_active_jobs),
        pending_materializations=PendingMaterializationsOut(
            used=usage.pending_materializations, limit=limits.max_pending_materializations),
        max_job_cost=limits.max_job_cost,
        max_job_gflop=limits.max_job_gflop,
        max_requests_per_minute=limits.max_requests_per_minute,
        max_streams_per_key=limits.max_streams_per_key,
        requests_this_minute=RequestWindowOut(
            used=window.used, limit=limits.max_requests_per_minute,
            resets_in_seconds=round(window.resets_in_seconds, 3),
            counted_in="shared" if window.counted_in == "shared" else "process"),
        event_streams=EventStreamsOut(
            open_by_this_key=slots.open_for_key(key_id) if key_id is not None else None,
            open_by_project=slots.open_for_project(project_id),
            limit_per_key=limits.max_streams_per_key))


def caller_usage(session: Session, caller: Caller, limiter: RateLimiter,
                 slots: StreamSlots) -> UsageOut:
    """The caller's project, against the limits this request's checks would use."""
    return usage_out(project_usage(session, project_id=caller.project_id,
                                   project_name=caller.project_name, limits=caller.limits),
                     project_id=caller.project_id, key_id=caller.key_id, limiter=limiter,
                     slots=slots)


def project_usage_out(session: Session, settings: Settings, project: Project,
                      limiter: RateLimiter, slots: StreamSlots) -> UsageOut:
    """Any project's usage (the admin view)."""
    return usage_out(project_usage(session, project_id=project.id, project_name=project.name,
                                   limits=ProjectLimits.of(project, settings)),
                     project_id=project.id, key_id=None, limiter=limiter, slots=slots)
