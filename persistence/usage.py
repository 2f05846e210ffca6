"""A project's limits and what it uses of them, counted exactly as the quota checks count.

:class:`ProjectLimits` is what every check compares with (the API's caller carries one), and
:func:`project_usage` reads the same counters the checks read (``count_active_jobs``, the
stored-bytes ledger's ``ledger_stored_bytes_by_kind``,
``count_pending_materializations``), so GET /v1/usage, ``rift-admin projects
usage`` and the 413/429 answers cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from persistence.jobs import count_active_jobs
from persistence.materializations import count_pending_materializations
from persistence.models import Project
from persistence.records import StoredBytes, ledger_stored_bytes_by_kind
from persistence.settings import Settings


@dataclass(frozen=True)
class ProjectLimits:
    """A project's limits: its own column where set, else the setting's default."""

    max_active_jobs: int
    max_stored_bytes: int
    max_job_cost: int
    max_job_gflop: int
    max_requests_per_minute: int
    max_streams_per_key: int
    # A setting (MATERIALIZE_MAX_PENDING), the same for every project: no column of its own.
    max_pending_materializations: int

    @classmethod
    def of(cls, project: Project, settings: Settings) -> ProjectLimits:
        def pick(own: int | None, default: int) -> int:
            return own if own is not None else default

        return cls(
            max_active_jobs=pick(project.max_active_jobs, settings.default_max_active_jobs),
            max_stored_bytes=pick(project.max_stored_bytes, settings.default_max_stored_bytes),
            max_job_cost=pick(project.max_job_cost, settings.default_max_job_cost),
            max_job_gflop=pick(project.max_job_gflop, settings.default_max_job_gflop),
            max_requests_per_minute=pick(project.max_requests_per_minute,
                                         settings.default_max_requests_per_minute),
            max_streams_per_key=pick(project.max_streams_per_key,
                                     settings.default_max_streams_per_key),
            max_pending_materializations=settings.materialize_max_pending)


@dataclass(frozen=True)
class ProjectUsage:
    """What a project uses now, beside its limits."""

    project_name: str
    limits: ProjectLimits
    stored: StoredBytes
    active_jobs: int  # queued + running, as max_active_jobs counts them
    pending_materializations: int  # queued + running, as max_pending_materializations counts


def project_usage(session: Session, *, project_id: str, project_name: str,
                  limits: ProjectLimits) -> ProjectUsage:
    """The project's usage against ``limits``, from the counters the quota checks use."""
    return ProjectUsage(project_name=project_name, limits=limits,
                        stored=ledger_stored_bytes_by_kind(session, project_id),
                        active_jobs=count_active_jobs(session, project_id),
                        pending_materializations=count_pending_materializations(session,
                                                                                project_id))
