"""The audit trail: who (which key, or ``rift-admin``) did what to which resource, and when.

:func:`record_audit_event` adds the row to the session of the change it records, before that
change commits: the change and its trail commit together or not at all (a refused or failed
change leaves none). Callers pass an :class:`Actor`; an idempotent replay makes no change and
records nothing. The row never holds a secret: a key is named by its id and its public prefix.
``project_id`` is a plain value (no foreign key), so a deleted project's trail stays until the
janitor prunes it (:func:`prune_audit_events`, ``AUDIT_RETENTION_DAYS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from persistence.logs import current_request_id
from persistence.models import AuditEvent, new_id, utcnow
from persistence.pages import Page, list_binding, newest_first

#: Every action recorded; ``resource_kind`` is the part before the dot.
Action = Literal[
    "job.created", "job.cancelled", "job.deleted", "checkpoint.uploaded", "checkpoint.deleted",
    "dataset.uploaded", "dataset.deleted", "key.created", "key.revoked", "project.created",
    "project.deleted", "project.limits_changed", "webhook.created", "webhook.deleted",
    "materialization.requested", "mlflow_export.requested"]

#: The ``actor`` of a change made from the command line (no key: whoever can reach the
#: database is the operator).
ADMIN_CLI = "rift-admin"
#: The ``actor`` of a change made with an API key.
API_KEY = "api_key"


@dataclass(frozen=True)
class Actor:
    """Who makes a change: an API key (its id and public prefix) or ``rift-admin``."""

    kind: str
    key_id: str | None = None
    key_prefix: str | None = None

    @classmethod
    def key(cls, key_id: str, key_prefix: str) -> Actor:
        return cls(API_KEY, key_id, key_prefix)

    @classmethod
    def admin_cli(cls) -> Actor:
        return cls(ADMIN_CLI)


def record_audit_event(session: Session, actor: Actor, action: Action, *,
                       project_id: str | None, resource_id: str | None,
                       details: dict[str, Any] | None = None,
                       now: datetime | None = None) -> AuditEvent:
    """Add the event to ``session`` (not committed: it commits with the change it records).
    The request id is the one the API logs for the current request (None outside one)."""
    event = AuditEvent(
        id=new_id(), occurred_at=now or utcnow(), project_id=project_id, actor=actor.kind,
        actor_key_id=actor.key_id, actor_key_prefix=actor.key_prefix, action=action,
        resource_kind=action.split(".", 1)[0], resource_id=resource_id,
        request_id=current_request_id(), details=details)
    session.add(event)
    return event


def withdraw_audit_events(session: Session, resource_id: str) -> None:
    """Delete the events of ``resource_id`` (not committed: with the row's removal): for a
    row made and then removed by the same request that failed (a job its broker did not take, a
    multipart job's checkpoint when the job was refused), whose answer says nothing was made."""
    session.execute(delete(AuditEvent).where(AuditEvent.resource_id == resource_id))


def page_audit_events(session: Session, *, project_id: str | None, limit: int,
                      cursor: str | None, action: str | None = None,
                      resource_id: str | None = None,
                      every_project: bool = False) -> Page[AuditEvent]:
    """A page of events, newest first: ``project_id``'s (``every_project``: all of them,
    ``project_id`` then filters if given), optionally one ``action`` or ``resource_id`` only."""
    query = select(AuditEvent)
    if not every_project or project_id is not None:
        query = query.where(AuditEvent.project_id == project_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if resource_id is not None:
        query = query.where(AuditEvent.resource_id == resource_id)
    binding = list_binding("all" if every_project else "project", project_id, action,
                           resource_id)
    return newest_first(session, "audit_events", query, AuditEvent.occurred_at, AuditEvent.id,
                        limit, cursor, binding)


def prune_audit_events(session: Session, retention_days: int, now: datetime | None = None,
                       *, dry_run: bool = False) -> int:
    """Delete the events older than ``retention_days`` (0: keep every one); how many
    (``dry_run``: how many would go, none deleted). Commits."""
    if retention_days <= 0:
        return 0
    older = AuditEvent.occurred_at < (now or utcnow()) - timedelta(days=retention_days)
    if dry_run:
        count = int(session.execute(select(func.count()).where(older)).scalar_one())
        # Ended at once: on SQLite every transaction holds the write lock (BEGIN IMMEDIATE).
        session.commit()
        return count
    result = session.execute(delete(AuditEvent).where(older))
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)
