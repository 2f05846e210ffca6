"""The audit trail as the API lists it: a project's own events, or (admin) any project's."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import AuditEventOut, AuditEventPageOut
from persistence.audit import page_audit_events


def audit_page_out(session: Session, *, project_id: str | None, limit: int,
                   cursor: str | None, action: str | None, resource_id: str | None,
                   every_project: bool = False) -> AuditEventPageOut:
    """A page of events, newest first (see :func:`persistence.audit.page_audit_events`)."""
    page = page_audit_events(session, project_id=project_id, limit=limit, cursor=cursor,
                             action=action, resource_id=resource_id,
                             every_project=every_project)
    return AuditEventPageOut(
        items=[AuditEventOut.model_validate(event, from_attributes=True) for event in page.items],
        next_cursor=page.next_cursor)
