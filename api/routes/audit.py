"""``/v1/audit-events``: who changed what in the caller's project (any key with ``read``).
The admin's view of every project is ``GET /v1/admin/audit-events`` (api/routes/admin.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ProjectIdDep, SessionDep
from api.paging import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from api.schemas import RESOURCE_ID_PATTERN, AuditEventPageOut
from api.services.audit import audit_page_out
from persistence.audit import Action

router = APIRouter(tags=["audit"])

#: The filters, declared once for this route and the admin's.
ActionFilter = Annotated[Action | None, Query(description="Only events of this action.")]
# An id's characters only: a NUL would reach the database (Postgres refuses it unnamed).
ResourceFilter = Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN,
                                             description="Only events about this resource id.")]
ProjectFilter = Annotated[str | None, Query(pattern=RESOURCE_ID_PATTERN,
                                            description="Only this project's events (its id: "
                                            "a deleted project's too).")]


@router.get("/audit-events", response_model=AuditEventPageOut,
            summary="The project's audit trail, newest first, paged like GET /v1/jobs",
            description="Every change a key of the project (or rift-admin) made: jobs created, "
            "cancelled, deleted; checkpoints and datasets deleted; keys created and revoked; "
            "the project's limits changed. Each names the acting key by id and prefix (never "
            "its secret) and the request id. Kept AUDIT_RETENTION_DAYS.")
def list_audit_events(session: SessionDep, project_id: ProjectIdDep,
                      limit: PageLimit = DEFAULT_PAGE_SIZE, cursor: PageCursor = None,
                      action: ActionFilter = None,
                      resource_id: ResourceFilter = None) -> AuditEventPageOut:
    return audit_page_out(session, project_id=project_id, limit=limit, cursor=cursor,
                          action=action, resource_id=resource_id)
