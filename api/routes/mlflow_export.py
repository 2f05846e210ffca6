"""``POST /v1/jobs/{id}/mlflow-export``: export a succeeded job to MLflow again.

The worker exports a job once, after it succeeds; a worker lost during it or a tracking server
down then left it unexported (a ``warning`` event) with no way to try again. A worker does it
(the API has no mlflow client); the answer is 202 with a ``Location`` on the job's events after
the request's own ``mlflow_export_requested`` event: the outcome is the next ``mlflow_exported``
(run id, model, version) or ``warning`` (stage ``export``) there, the job staying succeeded.

Each request queues the export once more (no table, no deduplication): the export is idempotent
(the job's finished run is found by its ``rift.job_id`` tag and given back with its version), so
asking again costs a look-up, not a second run or version.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import CallerDep, DispatcherDep, SessionDep, SettingsDep
from api.dispatch import DispatchError
from api.errors import Conflict, ServiceUnavailable
from api.routes.jobs import job_link, load_job
from persistence.logs import current_request_id
from persistence.mlflow_exports import request_mlflow_export

router = APIRouter(prefix="/jobs", tags=["results"])


class MlflowExportOut(BaseModel):
    job_id: str
    status: Literal["queued"] = Field(description="Always 'queued': a worker exports the job.")
    event_id: int = Field(description="The request's mlflow_export_requested event; the outcome "
                          "is a later mlflow_exported or warning (stage 'export') event.")
    url: str = Field(description="The job's events after this request (also in Location).")


@router.post("/{job_id}/mlflow-export", response_model=MlflowExportOut, status_code=202,
             summary="Export a succeeded job to MLflow again (its run and version if it was)",
             responses={409: {"description": "The job has not succeeded; or the service has no "
                              "MLFLOW_TRACKING_URI"},
                        503: {"description": "The broker did not take the request"}})
def export_to_mlflow(job_id: str, response: Response, session: SessionDep, caller: CallerDep,
                     dispatcher: DispatcherDep, settings: SettingsDep) -> MlflowExportOut:
    job = load_job(session, caller, job_id)
    if not settings.mlflow_tracking_uri:
        raise Conflict("this service exports to no MLflow: MLFLOW_TRACKING_URI is not set",
                       field="MLFLOW_TRACKING_URI", code="mlflow_not_configured")
    # JobNotSucceeded is the 409 job_not_succeeded api/errors.py maps, naming job_id.
    event = request_mlflow_export(session, job.id, current_request_id(),
                                  actor=caller.actor)
    try:
        dispatcher.enqueue_mlflow_export(job.id, event.id)
    except DispatchError as exc:
        # The event stays: it says a request was made; the 503 says it was not queued.
        raise ServiceUnavailable(f"{exc}; retry later", code="broker_unavailable") from exc
    url = job_link(job.id, f"/events?after={event.id}")
    response.headers["Location"] = url
    return MlflowExportOut(job_id=job.id, status="queued", event_id=event.id, url=url)
