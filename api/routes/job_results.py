"""A job's results: the MRC table (the rows scored so far while its stage runs:
:mod:`persistence.mrc_tables`), the fine-tuning and interpolation curves, and the artifacts
(tuned weights, fine-tuned end point, MRC CSV, result.json) with HTTP Range support (one range,
or several as multipart/byteranges: :mod:`api.byte_ranges`) and conditional GET
(:mod:`api.conditional`), or a redirect to a short-lived presigned URL when the object store is
S3. An artifact a job does not have is a 404 once it has succeeded, and a 409
naming its status before (queued or running: it may still come; failed or cancelled: it never
will)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from api.auth import Caller
from api.byte_ranges import MAX_RANGES, MultipartRanges, parse_ranges
from api.conditional import failed_precondition, http_date, is_not_modified, range_allowed
from api.deps import CallerDep, SessionDep, SettingsDep, StoreDep
from api.errors import Conflict, NotFound, PreconditionFailed, quote
from api.routes.jobs import job_link, load_job
from api.schemas import (
    ArtifactListOut,
    ArtifactOut,
    CandidateCurveOut,
    CandidateWeightsOut,
    CurvesOut,
    EpochOut,
    InterpolationPointOut,
    MRCRowOut,
    MRCTableOut,
)
from persistence.jobs import (
    get_artifact,
    get_epoch_metrics,
    get_interpolation_points,
    get_sweep_candidates,
    list_artifacts,
)
from persistence.models import Artifact, Job, JobStatus, SweepCandidate
from persistence.mrc_tables import read_mrc_table
from persistence.stage_shards import DISCARDED_REASON
from persistence.storage import ObjectNotFound, ObjectStore

router = APIRouter(prefix="/jobs", tags=["results"])

#: The fine-tune stage's θ_FT artifact (``rift.stage_outputs.FINETUNED``; not imported: the API
#: process does not import the library, which imports torch).
FINETUNED = "finetuned.safetensors"
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@\-]{0,63}")  # @: tuned@<α>.safetensors


@router.get("/{job_id}/mrc", response_model=MRCTableOut,
            summary="Module robust criticality per module, the selected module flagged",
            description="Once the MRC stage is done: the recorded table (complete true). "
                        "Before (and for a job that failed or was cancelled during it): the "
                        "rows scored so far, in table order, with complete false, "
                        "modules_scored and modules_total; the ETag changes as rows arrive.")
def read_mrc(job_id: str, session: SessionDep, caller: CallerDep) -> MRCTableOut:
    job = load_job(session, caller, job_id)
    table = read_mrc_table(session, job.id)
    return MRCTableOut(
        job_id=job.id, status=job.status, selected_module=job.selected_module,
        rows=[MRCRowOut(position=r.position, module=r.module, parameters=r.parameters, mrc=r.mrc,
                        worst_robust_loss=r.worst_robust_loss,
                        robust_accuracy_at_worst=r.robust_accuracy_at_worst,
                        robust_accuracy_drop=r.robust_accuracy_drop, seconds=r.seconds,
                        max_ascent_loss=r.max_ascent_loss, passes=r.passes, exact=r.exact,
                        zero_gradient=r.zero_gradient,
                        selected=table.complete and r.module == job.selected_module)
              for r in table.rows],
        complete=table.complete, modules_scored=len(table.rows),
        modules_total=table.modules_total)


@router.get("/{job_id}/curves", response_model=CurvesOut,
            summary="Fine-tuning epochs and the interpolation curve with the chosen α; a "
                    "sweep's candidate curves side by side")
def read_curves(job_id: str, session: SessionDep, caller: CallerDep) -> CurvesOut:
    job = load_job(session, caller, job_id)
    epochs = get_epoch_metrics(session, job.id)
    points = get_interpolation_points(session, job.id)
    chosen = job.chosen_alpha
    sweep = (job.metrics or {}).get("sweep")
    winner = sweep.get("chosen") if isinstance(sweep, dict) else None
    kept = get_artifact(session, job.id, FINETUNED) if isinstance(winner, int) else None
    return CurvesOut(
        job_id=job.id, status=job.status, selected_module=job.selected_module,
        epochs=[EpochOut.model_validate(e, from_attributes=True) for e in epochs],
        interpolation=[_point(p.alpha, p.clean_accuracy, p.robust_accuracy,
                              p.robust_accuracy_at_most, chosen) for p in points],
        chosen_alpha=chosen, metrics=job.metrics,
        candidates=[_candidate(c, winner, job.id, kept)
                    for c in get_sweep_candidates(session, job.id)],
        chosen_candidate=winner if isinstance(winner, int) else None)


def _point(alpha: float, clean: float, robust: float | None, robust_at_most: float | None,
           chosen: float | None) -> InterpolationPointOut:
    return InterpolationPointOut(
        alpha=alpha, clean_accuracy=clean, robust_accuracy=robust,
        robust_accuracy_at_most=robust_at_most,
        chosen=chosen is not None and math.isclose(alpha, chosen, abs_tol=1e-9))


def _candidate(row: SweepCandidate, winner: object, job_id: str,
               kept: Artifact | None) -> CandidateCurveOut:
    # Rows of candidates still running have no result yet: their outcome fields stay null.
    outcome = (row.result or {}).get("outcome") or {}
    alpha = outcome.get("chosen_alpha")
    # A candidate excluded from the pick (its fine-tuning diverged) is a done part to the
    # sweep's bookkeeping and a failed candidate to the reader.
    excluded = bool(outcome.get("excluded"))
    return CandidateCurveOut(
        finetuned=_candidate_weights(row, winner, job_id, kept),
        index=row.candidate, module=row.module, lr=row.lr,
        status="failed" if excluded else row.status,
        reason=outcome.get("reason") if excluded else None,
        attempts=row.attempts, chosen=winner == row.candidate, chosen_alpha=alpha,
        clean_accuracy=outcome.get("clean_accuracy"),
        robust_accuracy=outcome.get("robust_accuracy"), best_epoch=outcome.get("best_epoch"),
        points=[_point(p["alpha"], p["clean_accuracy"], p.get("robust_accuracy"),
                       p.get("robust_accuracy_at_most"), alpha)
                for p in outcome.get("points", [])])


def _candidate_weights(row: SweepCandidate, winner: object, job_id: str,
                       kept: Artifact | None) -> CandidateWeightsOut | None:
    """What a candidate's θ_FT is to a reader: the job's finetuned.safetensors for the chosen
    one, else gone or never published. Decided from the pick, not from the recorded key, so
    rows recorded before the keys were cleared read the same."""
    recorded = (row.result or {}).get("finetuned")
    if not isinstance(recorded, dict):
        return None  # not finished
    size, sha256 = recorded.get("size"), recorded.get("sha256")
    if isinstance(winner, int) and row.candidate == winner and kept is not None:
        return CandidateWeightsOut(available=True, artifact=kept.name,
                                   url=job_link(job_id, f"/artifacts/{kept.name}"),
                                   size=kept.size, sha256=kept.sha256, deleted=False, reason=None)
    if isinstance(winner, int) and row.candidate != winner:
        reason = DISCARDED_REASON.format(winner=winner)
        deleted = True
    else:  # no pick yet (running), or none will come (the job failed or was cancelled)
        reason = ("not downloadable: a candidate's θ_FT becomes the job's artifact "
                  f"{FINETUNED} only if the sweep picks it")
        deleted = False
    return CandidateWeightsOut(available=False, artifact=None, url=None,
                               size=size if isinstance(size, int) else None,
                               sha256=sha256 if isinstance(sha256, str) else None,
                               deleted=deleted, reason=reason)


def _artifact_out(job_id: str, artifact: Artifact) -> ArtifactOut:
    return ArtifactOut(name=artifact.name, size=artifact.size, sha256=artifact.sha256,
                       content_type=artifact.content_type, created_at=artifact.created_at,
                       url=job_link(job_id, f"/artifacts/{artifact.name}"))


@router.get("/{job_id}/artifacts", response_model=ArtifactListOut,
            summary="The files a job produced")
def read_artifacts(job_id: str, session: SessionDep, caller: CallerDep) -> ArtifactListOut:
    job = load_job(session, caller, job_id)
    artifacts = list_artifacts(session, job.id)
    return ArtifactListOut(job_id=job.id, items=[_artifact_out(job.id, a) for a in artifacts])


def _missing_artifact(session: Session, job: Job, name: str) -> NotFound | Conflict:
    """The error for an artifact ``job`` lacks: 404 once it succeeded, else 409 naming its status,
    so that a client asking too early (or of a failed job) is told why, not "no such file"."""
    available = ", ".join(a.name for a in list_artifacts(session, job.id)) or "none yet"
    shown = repr(name[:64])
    if job.status == JobStatus.SUCCEEDED:
        return NotFound(f"job {job.id} has no artifact {shown} (available: {available})",
                        field="name", code="artifact_not_found")
    when = ("it may appear as the job goes on" if job.status in (JobStatus.QUEUED,
                                                                  JobStatus.RUNNING)
            else "it will not be made")
    return Conflict(f"job {job.id} is {job.status}, not succeeded: it has no artifact {shown} "
                    f"yet, and {when} (available: {available})", field="job_id",
                    code="job_not_succeeded", details={"status": job.status})


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an artifact",
    description=(
        "Streams the file; honours 'Range: bytes=a-b' (206, or 416 outside the file) and "
        f"several ranges in one header, at most {MAX_RANGES} (206 multipart/byteranges, one "
        "part per range, overlapping or adjacent ranges merged; more ranges, or any "
        "malformed one: the whole file, 200) under 'If-Range' (strong ETag or the "
        "Last-Modified date), 'If-Match' / 'If-Unmodified-Since' (412 when the file is "
        "another) and 'If-None-Match' / 'If-Modified-Since' (304). A missing "
        "artifact: 404 if the job succeeded, else 409 job_not_succeeded naming its status. "
        "With the S3 store and ?redirect=true (default: S3_REDIRECT_DOWNLOADS), answers 307 "
        "to a short-lived presigned URL instead; a request for several ranges is streamed "
        "unless ?redirect=true is given (S3 answers one range per request)."
    ),
    response_class=StreamingResponse,
    response_model=None,
    responses={200: {"content": {"application/octet-stream": {}}},
               206: {"description": "Partial content: one range, or several as "
                                    "multipart/byteranges",
                     "content": {"application/octet-stream": {},
                                 "multipart/byteranges": {}}},
               304: {"description": "Not modified"},
               307: {"description": "Presigned URL"},
               409: {"description": "The job has not succeeded (its status named)"},
               412: {"description": "If-Match or If-Unmodified-Since not met"},
               416: {"description": "Range not satisfiable"}},
)
def download_artifact(
    job_id: str,
    name: str,
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    store: StoreDep,
    redirect: Annotated[bool | None, Query(
        description="Redirect to a presigned URL (S3): true or false")] = None,
) -> Response:
    job = load_job(session, caller, job_id)
    artifact = get_artifact(session, job.id, name) if _ARTIFACT_NAME.fullmatch(name) else None
    if artifact is None:
        raise _missing_artifact(session, job, name)
    session.commit()  # end the read transaction before streaming
    etag = f'"{artifact.sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": http_date(artifact.created_at),
        # Names are plain ASCII (_ARTIFACT_NAME), so the quoted form needs no escaping.
        "Content-Disposition": f'attachment; filename="{artifact.name}"',
    }
    # Before the redirect too: a client holding the current copy needs neither URL nor bytes,
    # and one asking for another file's bytes must get neither.
    failed = failed_precondition(request.headers, etag=etag, last_modified=artifact.created_at)
    if failed is not None:
        raise PreconditionFailed(
            f"the artifact {quote(artifact.name)} does not meet the request's {failed} "
            f"(its ETag is {etag}, Last-Modified {headers['Last-Modified']})", field=failed,
            headers={"ETag": etag, "Last-Modified": headers["Last-Modified"]})
    if is_not_modified(request.headers, etag=etag, last_modified=artifact.created_at):
        return Response(status_code=304, headers=headers)
    range_header = (request.headers.get("range")
                    if range_allowed(request.headers, etag=etag,
                                     last_modified=artifact.created_at) else None)
    # A presigned URL serves one range per request (S3 has no multipart answer): a request for
    # several is streamed here unless the caller asked for the redirect itself.
    several = range_header is not None and "," in range_header
    wants_redirect = (redirect if redirect is not None
                      else settings.store_kind == "s3" and settings.s3_redirect_downloads
                      and not several)
    if wants_redirect:
        url = store.presigned_url(artifact.storage_key, filename=artifact.name)
        if url is not None:
            return RedirectResponse(url, status_code=307)

    size = artifact.size
    ranges = parse_ranges(range_header, size)
    if ranges is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(_open(session, caller, store, artifact, 0, None),
                                 status_code=200, media_type=artifact.content_type,
                                 headers=headers)
    if len(ranges) > 1:
        multipart = MultipartRanges(ranges, size, artifact.content_type)
        first = _open(session, caller, store, artifact, *ranges[0])  # a missing file: 404 now
        headers["Content-Length"] = str(multipart.content_length)
        return StreamingResponse(
            multipart.body(lambda start, end: store.iter_range(artifact.storage_key, start, end),
                           first),
            status_code=206, media_type=multipart.content_type, headers=headers)
    start, end = ranges[0]
    headers["Content-Length"] = str(end - start)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(_open(session, caller, store, artifact, start, end), status_code=206,
                             media_type=artifact.content_type, headers=headers)


def _open(session: Session, caller: Caller, store: ObjectStore, artifact: Artifact, start: int,
          end: int | None) -> Iterator[bytes]:
    """The artifact's bytes ``[start, end)``. The job may have been deleted since it was read
    (its files go with it): that answers the 404 ``job_not_found`` (or the job's missing-artifact
    error) a request arriving a moment later would get, not 503 ``object_missing``, which means
    the store lost a file the database still names. A stream already open reads on: a local
    file stays readable once opened, and S3 serves the GET it started."""
    try:
        return store.iter_range(artifact.storage_key, start, end)
    except ObjectNotFound:
        job = load_job(session, caller, artifact.job_id)
        if get_artifact(session, job.id, artifact.name) is None:
            raise _missing_artifact(session, job, artifact.name) from None
        raise
