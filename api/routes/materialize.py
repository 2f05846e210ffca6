"""``POST /v1/jobs/{id}/materialize``: θ_α = (1 − α) θ_AT + α θ_FT of a succeeded job at any α,
without retraining, as the artifact ``tuned@<α>.safetensors``, with its clean and robust accuracy
on the test split when ``evaluate`` is true. A worker makes it (the API has no torch); the answer
is the request's record (202 while queued), to poll at its ``url``. α = 0 and α = 1 give θ_AT and
θ_FT bit for bit (:func:`rift.interpolation.interpolate_weights` copies the end points).
New weights count against the project's stored bytes from the request on (413
``quota_exceeded``, field ``max_stored_bytes``, like an upload); at most
``MATERIALIZE_MAX_PENDING`` of a project's are queued or running at once (429 ``quota_exceeded``,
field ``max_pending_materializations``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, DispatcherDep, SessionDep
from api.dispatch import DispatchError
from api.errors import ServiceUnavailable, TooManyRequests
from api.paging import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from api.routes.jobs import job_link, load_job
from api.services.quotas import storage_exceeded
from persistence.logs import current_request_id
from persistence.materializations import (
    TooManyPendingMaterializations,
    fail_materialization,
    get_materialization,
    page_materializations,
    request_materialization,
)
from persistence.models import Materialization
from persistence.records import StorageQuotaReached

router = APIRouter(prefix="/jobs", tags=["results"])


class MaterializeIn(BaseModel):
    # Strict like every request body: "alpha": "0.5" or true, "evaluate": "yes" are 422s.
    model_config = ConfigDict(extra="forbid", strict=True)

    alpha: float = Field(ge=0.0, le=1.0, description="Interpolation weight: 0 is θ_AT, 1 is θ_FT; "
                         "rounded to 6 significant digits (the answer's alpha is the one used).")
    evaluate: bool = Field(False, description="Also measure clean and robust accuracy (test split, "
                           "the job's attack and evaluation settings).")


class MaterializationOut(BaseModel):
    id: str
    job_id: str
    alpha: float
    evaluate: bool
    status: Literal["queued", "running", "succeeded", "failed"]
    artifact: str = Field(description="Name of the weights artifact once succeeded.")
    artifact_url: str | None = Field(description="Download link once succeeded.")
    clean_accuracy: float | None = Field(description="Percent, when evaluated.")
    robust_accuracy: float | None = Field(description="Percent, when evaluated.")
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    url: str


class MaterializationListOut(BaseModel):
    job_id: str
    items: list[MaterializationOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


def materialization_out(row: Materialization) -> MaterializationOut:
    done = row.status == "succeeded"
    return MaterializationOut(
        id=row.id, job_id=row.job_id, alpha=row.alpha, evaluate=row.evaluate, status=row.status,
        artifact=row.artifact_name,
        artifact_url=job_link(row.job_id, f"/artifacts/{row.artifact_name}") if done else None,
        clean_accuracy=row.clean_accuracy, robust_accuracy=row.robust_accuracy,
        error=row.error_message, created_at=row.created_at, finished_at=row.finished_at,
        url=job_link(row.job_id, f"/materializations/{row.id}"))


@router.post("/{job_id}/materialize", response_model=MaterializationOut, status_code=202,
             summary="Make the weights at another α (and evaluate them) from θ_AT and θ_FT",
             responses={200: {"description": "This α was made (or is being made) already"},
                        409: {"description": "The job has not succeeded; or evaluate "
                              "asked for an α being made without it"},
                        413: {"description": "The weights would pass the project's "
                              "max_stored_bytes"},
                        429: {"description": "The project has MATERIALIZE_MAX_PENDING "
                              "materializations queued or running"}})
def materialize(job_id: str, body: MaterializeIn, response: Response, session: SessionDep,
                caller: CallerDep, dispatcher: DispatcherDep) -> MaterializationOut:
    job = load_job(session, caller, job_id)
    # JobNotSucceeded is the 409 api/errors.py maps once, naming job_id.
    try:
        requested = request_materialization(
            session, job.id, body.alpha, evaluate=body.evaluate, request_id=current_request_id(),
            max_stored_bytes=caller.limits.max_stored_bytes,
            max_pending=caller.limits.max_pending_materializations, actor=caller.actor)
    except StorageQuotaReached as exc:
        raise storage_exceeded(caller, exc.used, exc.incoming, exc.limit) from exc
    except TooManyPendingMaterializations as exc:
        raise TooManyRequests(exc.message, field="max_pending_materializations",
                              code="quota_exceeded", headers={"Retry-After": "30"},
                              details={"quota": "max_pending_materializations",
                                       "limit": exc.limit, "used": exc.pending,
                                       "pending": exc.pending}) from exc
    if requested.must_dispatch:
        try:
            dispatcher.enqueue_materialization(requested.row.id)
        except DispatchError as exc:
            fail_materialization(session, requested.row.id, str(exc))
            raise ServiceUnavailable(f"{exc}; retry later", code="broker_unavailable") from exc
    else:
        response.status_code = 200
    out = materialization_out(requested.row)
    # Where to follow it (RFC 9110 §15.3.3: a 202 points at the request's status), as
    # POST /v1/jobs' Location does; it was only in the body's "url".
    response.headers["Location"] = out.url
    return out


@router.get("/{job_id}/materializations", response_model=MaterializationListOut,
            summary="The weights made at other α, newest first, paged like GET /v1/jobs")
def read_materializations(job_id: str, session: SessionDep, caller: CallerDep,
                          limit: PageLimit = DEFAULT_PAGE_SIZE,
                          cursor: PageCursor = None) -> MaterializationListOut:
    job = load_job(session, caller, job_id)
    page = page_materializations(session, job.id, limit=limit, cursor=cursor)
    return MaterializationListOut(job_id=job.id, items=[materialization_out(r) for r in page.items],
                                  next_cursor=page.next_cursor)


@router.get("/{job_id}/materializations/{materialization_id}", response_model=MaterializationOut,
            summary="One materialization request")
def read_materialization(job_id: str, materialization_id: str, session: SessionDep, caller: CallerDep
                         ) -> MaterializationOut:
    job = load_job(session, caller, job_id)
    return materialization_out(get_materialization(session, job.id, materialization_id[:64]))
