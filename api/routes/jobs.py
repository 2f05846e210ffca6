"""``/v1/jobs``: create a job (JSON on an uploaded checkpoint, or multipart with the checkpoint
file), list, read and cancel jobs."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from python_multipart.multipart import parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api import crud
from api.dispatch import DispatchError
from api.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from api.ingest import store_checkpoint, validate_checkpoint_upload
from api.job_requests import (
    check_job_fits,
    checkpoint_shapes,
    fingerprint,
    parse_json,
    resolve_dataset,
    validate_body,
)
from api.schemas import (
    LABEL_KEY_PATTERN,
    JobCreate,
    JobError,
    JobLinks,
    JobOut,
    JobPageOut,
    JobSpec,
    StageOut,
    is_resource_id,
)
from api.uploads import MAX_FIELD_BYTES, UploadedFile, receive_upload, scratch_dir
from persistence.eta import estimate_finish
from persistence.jobs import create_job, get_job, list_jobs, queue_position, request_cancel
from persistence.logs import current_request_id
from persistence.models import Job, JobStatus, utcnow

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: A JSON job request is a config and labels: a megabyte is far more than any real one needs.
MAX_JSON_BYTES = MAX_FIELD_BYTES
CHECKPOINT_FIELD = "checkpoint"
SPEC_FIELD = "spec"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def job_link(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{job_id}{suffix}"


def job_out(session: Session, job: Job) -> JobOut:
    """The API view of a job (labels and stages loaded)."""
    error = (JobError(code=job.error_code, message=job.error_message or job.error_code)
             if job.error_code else None)
    return JobOut(
        id=job.id, status=job.status, stage=job.stage,  # type: ignore[arg-type]
        progress=job.stage_progress, progress_message=job.progress_message,
        queue_position=queue_position(session, job), cancel_requested=job.cancel_requested,
        checkpoint_id=job.checkpoint_id, dataset_id=job.dataset_id, labels=job.label_dict,
        device=job.device, attempts=job.attempts, selected_module=job.selected_module,
        chosen_alpha=job.chosen_alpha, metrics=job.metrics, error=error,
        stages=[StageOut.model_validate(s, from_attributes=True) for s in job.stages],
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        updated_at=job.updated_at, config=job.spec,
        estimated_finish=estimate_finish(job, job.stages, utcnow()),
        links=JobLinks(
            self=job_link(job.id), events=job_link(job.id, "/events"),
            mrc=job_link(job.id, "/mrc"), curves=job_link(job.id, "/curves"),
            artifacts=job_link(job.id, "/artifacts"), cancel=job_link(job.id, "/cancel"),
            report=job_link(job.id, "/report"),
            materializations=job_link(job.id, "/materializations")),
    )


def load_job(session: Session, job_id: str) -> Job:
    """The job, or a 404 naming ``job_id``."""
    if not is_resource_id(job_id):
        raise NotFound(f"no job with id '{job_id}'", field="job_id", code="job_not_found")
    return get_job(session, job_id)


# ------------------------------------------------------------------------------------ create


async def _read_json_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"the JSON body is larger than the limit of {MAX_JSON_BYTES} bytes",
                              details={"limit_bytes": MAX_JSON_BYTES})
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise PayloadTooLarge(
                    f"the JSON body is larger than the limit of {MAX_JSON_BYTES} bytes",
                    details={"limit_bytes": MAX_JSON_BYTES})
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection before the body ended") from exc
    return bytes(body)


def _create(
    request: Request,
    spec: JobSpec,
    checkpoint_id: str | None,
    upload: UploadedFile | None,
    idempotency_key: str | None,
) -> tuple[JobOut, bool]:
    """Validate everything, then record and queue the job; runs in a worker thread."""
    state = request.app.state
    settings, store, factory = state.settings, state.store, state.session_factory
    checkpoint_field = "checkpoint_id" if upload is None else CHECKPOINT_FIELD
    reference = checkpoint_id if upload is None else f"sha256:{upload.sha256}"
    request_hash = fingerprint(spec, reference or "")
    with factory() as session:
        if idempotency_key is not None:
            existing = crud.job_by_idempotency_key(session, idempotency_key)
            if existing is not None:
                if existing.request_hash != request_hash:
                    raise Conflict(
                        f"Idempotency-Key '{idempotency_key}' was already used for job "
                        f"{existing.id} with a different request; use a new key for a new job",
                        field="Idempotency-Key", code="idempotency_conflict",
                        details={"job_id": existing.id})
                return job_out(session, existing), False

        dataset = resolve_dataset(session, store, spec)
        inspection = None
        if upload is None:
            assert checkpoint_id is not None
            _, shapes = checkpoint_shapes(session, store, checkpoint_id, scratch_dir(settings))
        else:
            inspection = validate_checkpoint_upload(upload, CHECKPOINT_FIELD)
            shapes = inspection.shapes
        check_job_fits(spec.config, shapes, dataset.geometry, checkpoint_field)

        stored_checkpoint = None
        if upload is not None and inspection is not None:
            stored_checkpoint = store_checkpoint(factory, store, upload, inspection)
            checkpoint_id = stored_checkpoint.id
        try:
            job, created = create_job(
                session, spec=spec.config.model_dump(mode="json"),
                checkpoint_id=checkpoint_id or "", dataset_id=spec.dataset_id,
                labels=spec.labels, idempotency_key=idempotency_key, request_hash=request_hash,
                request_id=current_request_id())
            if created:
                try:
                    state.dispatcher.enqueue_job(job.id)
                except DispatchError as exc:
                    crud.delete_job(session, job.id)
                    raise ServiceUnavailable(
                        f"{exc}; the job was not created, retry later",
                        code="broker_unavailable") from exc
        except BaseException:
            _forget_checkpoint(session, store, stored_checkpoint)
            raise
        if not created:
            # A concurrent request with the same key won the race; its job is the answer.
            _forget_checkpoint(session, store, stored_checkpoint)
        return job_out(session, job), created


def _forget_checkpoint(session: Session, store: Any, checkpoint: Any) -> None:
    # The checkpoint of a multipart request that made no job is not kept.
    if checkpoint is None:
        return
    session.rollback()
    crud.delete_checkpoint(session, checkpoint.id)
    store.delete(checkpoint.storage_key)


_JOB_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [CHECKPOINT_FIELD, SPEC_FIELD],
                    "properties": {
                        CHECKPOINT_FIELD: {"type": "string", "format": "binary"},
                        SPEC_FIELD: {
                            "type": "string",
                            "description": "JSON of JobSpec: {dataset_id?, config, labels}",
                        },
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Create a job",
    description=(
        "JSON (JobCreate: checkpoint_id, dataset_id?, config, labels) or multipart with the "
        "'checkpoint' file and the 'spec' field (JSON of JobSpec). Everything is validated before "
        "the job is recorded: each bad field is a 422 naming it, a checkpoint that does not fit "
        "the architecture is a 422 listing the missing, unexpected and mismatched keys. With an "
        "Idempotency-Key, a repeated request returns the same job (200); the same key with "
        "another request is 409."
    ),
    openapi_extra=_JOB_REQUEST_DOC,
    responses={200: {"description": "Idempotent replay: the job created before",
                     "model": JobOut},
               409: {"description": "Idempotency-Key reused with another request"},
               413: {"description": "Too large"}, 415: {"description": "Wrong content type"},
               422: {"description": "Invalid spec"}},
)
async def create_job_route(
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
                           description="Printable ASCII, at most 255 characters.")
    ] = None,
) -> JobOut:
    settings = request.app.state.settings
    media_type, _ = parse_options_header(request.headers.get("content-type"))
    if media_type == b"multipart/form-data":
        upload = await receive_upload(
            request, file_field=CHECKPOINT_FIELD, text_fields=(SPEC_FIELD,), allow_raw=False,
            max_file_bytes=settings.max_checkpoint_bytes, scratch_dir=scratch_dir(settings))
        with upload:
            if SPEC_FIELD not in upload.fields:
                raise InvalidInput(f"the form field '{SPEC_FIELD}' (the job spec as JSON) is "
                                   "missing", field=SPEC_FIELD)
            loc = ("body", SPEC_FIELD)
            spec = validate_body(parse_json(upload.fields[SPEC_FIELD], loc), JobSpec, loc)
            if upload.file is None:
                raise InvalidInput(f"the form field '{CHECKPOINT_FIELD}' (the checkpoint file) "
                                   "is missing", field=CHECKPOINT_FIELD)
            job, created = await run_in_threadpool(
                _create, request, spec, None, upload.file, idempotency_key)
    elif media_type == b"application/json" or media_type.endswith(b"+json"):
        raw = await _read_json_body(request)
        body = validate_body(parse_json(raw, ("body",)), JobCreate, ("body",))
        job, created = await run_in_threadpool(
            _create, request, body, body.checkpoint_id, None, idempotency_key)
    else:
        raise UnsupportedMediaType(
            "send application/json (JobCreate) or multipart/form-data with the fields "
            f"'{CHECKPOINT_FIELD}' and '{SPEC_FIELD}'")
    response.status_code = 201 if created else 200
    response.headers["Location"] = job_link(job.id)
    return job


# ------------------------------------------------------------------------------ list and read


def _statuses(values: list[str]) -> list[str] | None:
    statuses = [v.strip() for value in values for v in value.split(",") if v.strip()]
    known = [s.value for s in JobStatus]
    for status in statuses:
        if status not in known:
            raise InvalidInput(f"unknown status '{status}'; use one of {', '.join(known)}",
                               field="status")
    return statuses or None


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition(":")
        if not sep or not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(f"label filter '{value}' must be key:value with a key of letters, "
                               "digits and _ . - /", field="label")
        if len(wanted) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in wanted):
            raise InvalidInput("a label value is at most 255 printable characters",
                               field="label")
        labels[key] = wanted
    return labels


def _check_cursor(cursor: str) -> None:
    # The database refuses some bytes (NUL) with an error; a forged cursor must be a 422 instead.
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = None
    if text is None or not text.isprintable():
        raise InvalidInput(f"the pagination cursor '{cursor[:80]}' is not one this service "
                           "issued", field="cursor", code="invalid_cursor")


@router.get("", response_model=JobPageOut, summary="List jobs, newest first")
def list_jobs_route(
    request: Request,
    status: Annotated[list[str], Query(description="queued, running, succeeded, failed, "
                                      "cancelled; repeat or comma-separate")] = [],  # noqa: B006
    label: Annotated[list[str], Query(description="key:value; repeat to require several")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512,
                                        description="next_cursor of the previous page")] = None,
) -> JobPageOut:
    statuses = _statuses(status)
    labels = _labels(label)
    if cursor is not None:
        _check_cursor(cursor)
    with request.app.state.session_factory() as session:
        page = list_jobs(session, status=statuses, labels=labels, limit=limit, cursor=cursor)
        items = [job_out(session, job) for job in page.jobs]
    return JobPageOut(items=items, next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status")
def read_job(job_id: str, request: Request) -> JobOut:
    with request.app.state.session_factory() as session:
        return job_out(session, load_job(session, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    description="A queued job is cancelled at once and never starts; a running one is marked "
    "cancel_requested and stops at its next batch boundary; a finished one is 409.",
    responses={409: {"description": "The job has already finished"}},
)
def cancel_job(job_id: str, request: Request) -> JobOut:
    with request.app.state.session_factory() as session:
        load_job(session, job_id)
        return job_out(session, request_cancel(session, job_id))
