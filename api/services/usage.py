"""A project's usage (GET /v1/usage, GET /v1/admin/projects/{name}/usage): the counters the
quota checks read (:mod:`persistence.usage`) shaped as the API answers them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import Caller
from api.schemas import ActiveJobsOut, StoredBytesOut, UsageOut
from persistence.models import Project
from persistence.settings import Settings
from persistence.usage import ProjectLimits, ProjectUsage, project_usage


def usage_out(usage: ProjectUsage) -> UsageOut:
    stored, limits = usage.stored, usage.limits
    return UsageOut(
        project=usage.project_name,
        stored_bytes=StoredBytesOut(
            used=stored.total, limit=limits.max_stored_bytes, checkpoints=stored.checkpoints,
            datasets=stored.datasets, artifacts=stored.artifacts,
            reserved_by_active_jobs=stored.reserved_by_active_jobs,
            reserved_by_materializations=stored.reserved_by_materializations),
        active_jobs=ActiveJobsOut(used=usage.active_jobs, limit=limits.max_active_jobs),
        max_job_cost=limits.max_job_cost,
        max_requests_per_minute=limits.max_requests_per_minute,
        max_streams_per_key=limits.max_streams_per_key)


def caller_usage(session: Session, caller: Caller) -> UsageOut:
    """The caller's project, against the limits this request's checks would use."""
    return usage_out(project_usage(session, project_id=caller.project_id,
                                   project_name=caller.project_name, limits=caller.limits))


def project_usage_out(session: Session, settings: Settings, project: Project) -> UsageOut:
    """Any project's usage (the admin view)."""
    return usage_out(project_usage(session, project_id=project.id, project_name=project.name,
                                   limits=ProjectLimits.of(project, settings)))
