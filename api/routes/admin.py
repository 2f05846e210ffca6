"""``/v1/admin``: projects (their limits, usage and deletion) and their API keys, and the live
workers, for keys with the ``admin`` scope (an operator's key, made with ``rift-admin keys
create --scope admin``; it manages every project).

A new key is shown once, in the answer that creates it; lists never show secrets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from api.auth import AdminDep, require_admin
from api.deps import RateLimiterDep, SessionDep, SettingsDep, StoreDep, StreamSlotsDep
from api.errors import Conflict, InvalidInput, NotFound
from api.paging import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from api.routes.audit import ActionFilter, ProjectFilter, ResourceFilter
from api.schemas import AuditEventPageOut, UsageOut
from api.services.audit import audit_page_out
from api.services.usage import project_usage_out
from api.services.workers import list_live_workers
from api.write_conditions import WriteConditionsDep, representation_etag, require_unchanged
from persistence.api_keys import (
    LIMIT_MAXIMA,
    PROJECT_NAME_PATTERN,
    AdminError,
    create_key,
    create_project,
    list_keys,
    list_projects,
    project_by_name,
    revoke_key,
    set_project_limits,
)
from persistence.deletion import delete_project
from persistence.models import ApiKey, Project

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

ProjectName = Annotated[str, StringConstraints(pattern=PROJECT_NAME_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Bounds from persistence.api_keys.LIMIT_MAXIMA (the BIGINT columns' maximum, where larger
# values would be refused by the database with an error that cannot name the field).
class ProjectLimitsIn(_Body):
    """A project's own limits; null (or left out on creation) means the setting's default."""

    max_active_jobs: int | None = Field(None, ge=1, le=LIMIT_MAXIMA["max_active_jobs"])
    max_stored_bytes: int | None = Field(None, ge=1, le=LIMIT_MAXIMA["max_stored_bytes"])
    max_job_cost: int | None = Field(None, ge=1, le=LIMIT_MAXIMA["max_job_cost"])
    max_job_gflop: int | None = Field(None, ge=1, le=LIMIT_MAXIMA["max_job_gflop"])
    max_requests_per_minute: int | None = Field(None, ge=1,
                                                le=LIMIT_MAXIMA["max_requests_per_minute"])
    max_streams_per_key: int | None = Field(None, ge=1, le=LIMIT_MAXIMA["max_streams_per_key"])


class ProjectCreate(ProjectLimitsIn):
    name: ProjectName


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    max_active_jobs: int | None
    max_stored_bytes: int | None
    max_job_cost: int | None
    max_job_gflop: int | None
    max_requests_per_minute: int | None
    max_streams_per_key: int | None


ScopeName = Literal["read", "write", "admin"]


def _default_scopes() -> list[ScopeName]:
    return ["read", "write"]


class KeyCreate(_Body):
    scopes: list[ScopeName] = Field(default_factory=_default_scopes, min_length=1, max_length=3)
    name: str | None = Field(None, max_length=128)


class KeyOut(BaseModel):
    id: str
    project: str
    prefix: str = Field(description="The public part of the key, rift_<prefix>_…")
    scopes: list[ScopeName]
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, store it now.")


class WorkerOut(BaseModel):
    id: str = Field(description="The process's id, host:pid:random, also the lease owner of the "
                    "stages it runs.")
    hostname: str
    queues: list[str] = Field(description="The Celery queues it consumes.")
    devices: dict[str, int] = Field(description="Its devices by type, e.g. {\"cpu\": 1, "
                                    "\"cuda\": 2}.")
    device_override: str | None = Field(description="Its WORKER_DEVICE: every job runs there.")
    datasets: list[str] | None = Field(
        description="The built-in datasets (cifar10, cifar100, svhn, mnist) whose files its "
        "DATA_ROOT holds, looked at every WORKER_DATASETS_CHECK_SECONDS; a job naming one that "
        "no live worker holds is refused (422 dataset_unavailable). null: the worker does not "
        "say (an earlier release), and counts as holding every one.")
    started_at: datetime
    last_seen_at: datetime = Field(description="Its last heartbeat (WORKER_HEARTBEAT_SECONDS).")


class WorkerListOut(BaseModel):
    items: list[WorkerOut]


class ProjectListOut(BaseModel):
    items: list[ProjectOut]


class KeyListOut(BaseModel):
    items: list[KeyOut]


def _project_out(project: Project) -> ProjectOut:
    return ProjectOut.model_validate(project, from_attributes=True)


def _key_out(key: ApiKey, project: Project) -> KeyOut:
    return KeyOut(id=key.id, project=project.name, prefix=key.prefix, scopes=key.scopes.split(),
                  name=key.name, created_at=key.created_at, last_used_at=key.last_used_at,
                  revoked_at=key.revoked_at)


def _project(session: SessionDep, name: str, *, lock: bool = False) -> Project:
    """The project ``name`` or a 404; ``lock``: read fresh and row-locked until the transaction
    ends, so that a write's ``If-Match`` is checked against the row it changes
    (:mod:`api.write_conditions`)."""
    if lock:
        project = session.execute(
            select(Project).where(Project.name == name).with_for_update()
            .execution_options(populate_existing=True)).scalar_one_or_none()
    else:
        project = project_by_name(session, name)
    if project is None:
        raise NotFound(f"no project named '{name[:64]}'", field="name", code="project_not_found")
    return project


def _gone_meanwhile(session: Session, name: str) -> None:
    """After a write about the project ``name`` failed because its row went (a concurrent
    DELETE /v1/admin/projects/{name} between the lookup and the write): the 404 a request sent
    after the deletion gets. Returns if the project is still there (another failure)."""
    session.rollback()
    _project(session, name)


@router.get("/projects", response_model=ProjectListOut, summary="All projects")
def read_projects(session: SessionDep) -> ProjectListOut:
    return ProjectListOut(items=[_project_out(p) for p in list_projects(session)])


@router.post("/projects", status_code=201, response_model=ProjectOut, summary="Create a project",
             responses={409: {"description": "The name is taken"}})
def create_project_route(body: ProjectCreate, session: SessionDep, caller: AdminDep,
                         response: Response) -> ProjectOut:
    try:
        project = create_project(session, body.name, actor=caller.actor)
    except AdminError as exc:
        raise Conflict(str(exc), field="name", code="project_exists") from exc
    set_project_limits(session, project, body.model_dump(include=set(LIMIT_MAXIMA)),
                       actor=caller.actor)
    response.headers["Location"] = f"/v1/admin/projects/{project.name}"
    return _project_out(project)


@router.get("/projects/{name}", response_model=ProjectOut, summary="A project and its limits",
            description="Its ETag is the one PATCH and DELETE compare an If-Match with.")
def read_project(name: str, session: SessionDep) -> ProjectOut:
    return _project_out(_project(session, name))


_PRECONDITION: dict[int | str, dict[str, Any]] = {412: {
    "description": "If-Match names another ETag than the resource's GET answers now (it "
    "changed since it was read)"}}


@router.patch("/projects/{name}", response_model=ProjectOut, summary="Change a project's limits",
              description="Only the limits in the body change; null sets one back to the "
              "setting's default. rift-admin projects limits does the same. If-Match: only if "
              "the project is unchanged since GET /v1/admin/projects/{name} (else 412).",
              responses=_PRECONDITION)
def update_project_limits(name: str, body: ProjectLimitsIn, session: SessionDep,
                          conditions: WriteConditionsDep, caller: AdminDep) -> ProjectOut:
    project = _project(session, name, lock=conditions.present)
    require_unchanged(conditions, _project_out(project))
    try:
        return _project_out(set_project_limits(
            session, project, body.model_dump(include=body.model_fields_set), actor=caller.actor))
    except StaleDataError:
        _gone_meanwhile(session, name)
        raise


@router.get("/projects/{name}/usage", response_model=UsageOut, summary="A project's usage",
            description="What GET /v1/usage answers to the project's own keys (without "
            "event_streams.open_by_this_key).")
def read_project_usage(name: str, session: SessionDep, settings: SettingsDep,
                       limiter: RateLimiterDep, slots: StreamSlotsDep) -> UsageOut:
    return project_usage_out(session, settings, _project(session, name), limiter, slots)


@router.delete(
    "/projects/{name}", status_code=204, summary="Delete a project and everything it stores",
    description="Deletes the project's keys (they answer 401 at once), webhooks, jobs with their "
    "records and artifacts, materializations, checkpoints and datasets, and their stored "
    "objects. While the project has queued or running jobs: 409 project_has_active_jobs, "
    "unless ?force=true, which revokes its keys, cancels the jobs and waits up to "
    "PROJECT_DELETE_WAIT_SECONDS for their workers to stop (409 jobs_stopping if they have "
    "not: retry). rift-admin projects delete does the same. If-Match: only if the project is "
    "unchanged since GET /v1/admin/projects/{name} (else 412).",
    responses={404: {"description": "No such project"},
               409: {"description": "Queued or running jobs (see the description)"},
               **_PRECONDITION})
def delete_project_route(name: str, session: SessionDep, settings: SettingsDep, store: StoreDep,
                         conditions: WriteConditionsDep, caller: AdminDep,
                         force: bool = False) -> Response:
    # The lock holds until the deletion's own transaction commits (without force: the check
    # and the deletion are one transaction; with force, its key revocation commits first).
    project = _project(session, name, lock=conditions.present)
    require_unchanged(conditions, _project_out(project))
    delete_project(session, store, project, force=force,
                   wait_s=settings.project_delete_wait_seconds, actor=caller.actor)
    return Response(status_code=204)


@router.get("/projects/{name}/keys", response_model=KeyListOut, summary="A project's keys")
def read_keys(name: str, session: SessionDep) -> KeyListOut:
    project = _project(session, name)
    return KeyListOut(items=[_key_out(k, project) for k in list_keys(session, project.id)])


#: Every field of KeyCreate has a default, so the body may be left out (read and write, no name).
_DEFAULT_KEY = KeyCreate()


@router.post("/projects/{name}/keys", status_code=201, response_model=NewKeyOut,
             summary="Create a key (shown once)",
             description="The body may be left out: a read and write key without a name.")
def create_key_route(name: str, session: SessionDep, response: Response, caller: AdminDep,
                     body: KeyCreate = _DEFAULT_KEY) -> NewKeyOut:
    project = _project(session, name)
    try:
        new = create_key(session, project, [str(s) for s in body.scopes], body.name,
                         actor=caller.actor)
    except AdminError as exc:
        raise InvalidInput(str(exc), field="scopes") from exc
    except IntegrityError:
        _gone_meanwhile(session, name)
        raise
    response.headers["Location"] = f"/v1/admin/projects/{project.name}/keys/{new.row.id}"
    return NewKeyOut(**_key_out(new.row, project).model_dump(), key=new.key)


def _key(session: Session, project: Project, key_id: str, *, lock: bool = False) -> ApiKey:
    """The project's key or a 404 (``lock``: fresh and row-locked, as :func:`_project`)."""
    row = session.get(ApiKey, key_id[:64], with_for_update=lock or None, populate_existing=lock)
    if row is None or row.project_id != project.id:
        raise _no_such_key(project, key_id)
    return row


def _no_such_key(project: Project, key_id: str) -> NotFound:
    return NotFound(f"project '{project.name}' has no key '{key_id[:64]}'", field="key_id",
                    code="key_not_found")


#: What a key's ETag leaves out: its use moves last_used_at (at most once a minute,
#: persistence.api_keys.LAST_USED_RESOLUTION), which no client writes, so a tag including it
#: failed the If-Match of a revoke whenever the key had been used since it was read.
_KEY_VOLATILE = frozenset({"last_used_at"})


@router.get("/projects/{name}/keys/{key_id}", response_model=KeyOut, summary="A key",
            description="Never its secret. Its ETag is the one DELETE compares an If-Match "
            "with: it covers everything but last_used_at, so a key in use keeps its ETag (and "
            "an If-None-Match never gets a 304 here: the answer always comes whole, with the "
            "current last_used_at).")
def read_key(name: str, key_id: str, session: SessionDep, response: Response) -> KeyOut:
    project = _project(session, name)
    key = _key_out(_key(session, project, key_id), project)
    response.headers["ETag"] = representation_etag(key, volatile=_KEY_VOLATILE)
    return key


@router.delete("/projects/{name}/keys/{key_id}", response_model=KeyOut,
               summary="Revoke a key (it answers 401 from now on)",
               description="If-Match: only if the key is unchanged since GET "
               "/v1/admin/projects/{name}/keys/{key_id} (else 412).", responses=_PRECONDITION)
def revoke_key_route(name: str, key_id: str, session: SessionDep,
                     conditions: WriteConditionsDep, caller: AdminDep) -> KeyOut:
    project = _project(session, name)
    if conditions.present:
        require_unchanged(conditions, _key_out(_key(session, project, key_id, lock=True),
                                               project), volatile=_KEY_VOLATILE)
    row = revoke_key(session, key_id[:64], project.id, actor=caller.actor)
    if row is None:
        raise _no_such_key(project, key_id)
    return _key_out(row, project)


@router.get("/audit-events", response_model=AuditEventPageOut,
            summary="Every project's audit trail, newest first",
            description="As GET /v1/audit-events, across projects; ?project_id= one project's "
            "(a deleted project's too: its trail outlives it). rift-admin audit list does the "
            "same.")
def read_audit_events(session: SessionDep, limit: PageLimit = DEFAULT_PAGE_SIZE,
                      cursor: PageCursor = None,
                      project_id: ProjectFilter = None,
                      action: ActionFilter = None,
                      resource_id: ResourceFilter = None) -> AuditEventPageOut:
    return audit_page_out(session, project_id=project_id, limit=limit, cursor=cursor,
                          action=action, resource_id=resource_id, every_project=True)


@router.get("/workers", response_model=WorkerListOut, summary="Live workers",
            description="The worker processes seen within 3 heartbeats (WORKER_HEARTBEAT_SECONDS) "
            "with their queues, devices and the built-in datasets their DATA_ROOT holds, by id.")
def read_workers(session: SessionDep, settings: SettingsDep) -> WorkerListOut:
    return WorkerListOut(items=[WorkerOut.model_validate(w, from_attributes=True)
                                for w in list_live_workers(session, settings)])
