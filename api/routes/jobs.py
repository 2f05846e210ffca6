"""``/v1/jobs``: create a job (JSON on an uploaded checkpoint, or multipart with the checkpoint
file), list, read, cancel and delete jobs. The routes parse and shape; the rules live in
:mod:`api.services`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from python_multipart.multipart import parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.deps import Caller, CallerDep, JobServicesDep, SessionDep, StoreDep
from api.errors import (
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    quote,
)
from api.idempotency import IdempotencyKey
from api.job_requests import validate_body
from api.paging import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from api.request_input import JsonOrNoBody, parse_json
from api.schemas import LABEL_KEY_PATTERN, JobCreate, JobOut, JobPageOut, JobSpec
from api.services import deletion
from api.services.jobs import (
    CHECKPOINT_FIELD,
    cancel_job_for,
    create_job_for,
    job_link,
    list_jobs_for,
    read_job_for,
)
from api.services.ownership import owned_job
from api.uploads import MAX_FIELD_BYTES, receive_upload, scratch_dir
from api.write_conditions import WriteConditionsDep
from persistence.models import Job, JobStatus
from rift.setting_names import closest_choice

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: A JSON job request is a config and labels: a megabyte is far more than any real one needs.
MAX_JSON_BYTES = MAX_FIELD_BYTES
SPEC_FIELD = "spec"
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)


def load_job(session: Session, caller: Caller, job_id: str) -> Job:
    """The caller's job, or a 404 naming ``job_id`` (another project's job is not found)."""
    return owned_job(session, caller.project_id, job_id)


# ------------------------------------------------------------------------------------ create


async def _read_json_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"the JSON body is larger than the limit of {MAX_JSON_BYTES} bytes",
                              field="body", details={"limit_bytes": MAX_JSON_BYTES})
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise PayloadTooLarge(
                    f"the JSON body is larger than the limit of {MAX_JSON_BYTES} bytes",
                    field="body", details={"limit_bytes": MAX_JSON_BYTES})
    except ClientDisconnect as exc:
        raise BadRequest("the client closed the connection before the body ended",
                         field="body") from exc
    return bytes(body)


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
                            # What the JSON holds, so that a generated client can take a
                            # JobSpec object rather than a string it must build by hand.
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobSpec"},
                        },
                    },
                },
                "encoding": {SPEC_FIELD: {"contentType": "application/json"}},
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
        "the architecture is a 422 listing the missing, unexpected and mismatched keys, a "
        "config.device that no live worker has is a 422 'device_unavailable' (accepted when no "
        "worker is live: one may start later). With an Idempotency-Key, a repeated request "
        "returns the same job (200); the same key with another request is 409."
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
    caller: CallerDep,
    services: JobServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    settings = services.settings
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
                partial(create_job_for, services, caller, spec, checkpoint_id=None,
                        upload=upload.file, idempotency_key=idempotency_key))
    elif media_type == b"application/json" or media_type.endswith(b"+json"):
        raw = await _read_json_body(request)
        body = validate_body(parse_json(raw, ("body",)), JobCreate, ("body",))
        job, created = await run_in_threadpool(
            partial(create_job_for, services, caller, body, checkpoint_id=body.checkpoint_id,
                    upload=None, idempotency_key=idempotency_key))
    else:
        raise UnsupportedMediaType(
            f"content type {quote(media_type.decode('latin-1'))} is not accepted: send "
            "application/json (JobCreate) or multipart/form-data with the fields "
            f"'{CHECKPOINT_FIELD}' and '{SPEC_FIELD}'", field="Content-Type")
    response.status_code = 201 if created else 200
    response.headers["Location"] = job_link(job.id)
    return job


# ------------------------------------------------------------------------------ list and read


def _items(values: list[str], field: str) -> list[str]:
    """The comma-separated items of a repeatable parameter; an empty one (``queued,,failed``)
    is refused like an empty parameter (api/request_input.py), not skipped."""
    items = [v.strip() for value in values for v in value.split(",")]
    if "" in items:
        raise InvalidInput(f"the query parameter '{field}' has an empty item; separate values "
                           "with single commas", field=field, code="empty_parameter")
    return list(dict.fromkeys(items))  # "queued,queued" is one condition


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    guess = closest_choice(value, choices)
    return f"; did you mean {guess!r}?" if guess is not None else ""


def _statuses(values: list[str]) -> list[str] | None:
    statuses = _items(values, "status")
    known = [s.value for s in JobStatus]
    for status in statuses:
        if status not in known:
            raise InvalidInput(f"unknown status {quote(status)}{_did_you_mean(status, known)}; "
                               f"use one of {', '.join(known)}", field="status")
    return statuses or None


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition(":")
        if not sep or not _LABEL_KEY.fullmatch(key):
            # riftctl and the job's labels write key=value; the query says key:value.
            alike = value.replace("=", ":", 1)
            hint = (f"; did you mean {quote(alike)}?" if "=" in value and ":" not in value
                    and _LABEL_KEY.fullmatch(alike.partition(":")[0]) else "")
            raise InvalidInput(f"label filter {quote(value)} must be key:value with a key of letters, "
                               f"digits and _ . - /{hint}", field="label")
        if len(wanted) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in wanted):
            raise InvalidInput("a label value is at most 255 printable characters",
                               field="label")
        if labels.get(key, wanted) != wanted:
            # A job has one value per key: two values can never both match, and keeping only
            # the last (as before) silently dropped a condition.
            raise InvalidInput(f"label filter {quote(value)}: the key '{key}' is already "
                               f"required to be {quote(labels[key])}; a job has one value per "
                               "key", field="label")
        labels[key] = wanted
    return labels


#: What ``?expand=`` may add to list items.
EXPANDABLE = ("config", "stages", "warnings")


def _expand(values: list[str]) -> frozenset[str]:
    wanted = frozenset(_items(values, "expand"))
    for name in sorted(wanted):
        if name not in EXPANDABLE:
            raise InvalidInput(f"cannot expand '{name[:40]}'{_did_you_mean(name, EXPANDABLE)}; "
                               f"use {', '.join(EXPANDABLE[:-1])} or {EXPANDABLE[-1]}",
                               field="expand")
    return wanted


@router.get("", response_model=JobPageOut, summary="List jobs, newest first")
def list_jobs_route(
    session: SessionDep,
    caller: CallerDep,
    status: Annotated[list[str], Query(description="queued, running, succeeded, failed, "
                                      "cancelled; repeat or comma-separate")] = [],  # noqa: B006
    label: Annotated[list[str], Query(description="key:value; repeat to require several")] = [],  # noqa: B006
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
    expand: Annotated[list[str], Query(description="config, stages and/or warnings: add them "
                                       "to each item (comma-separate or repeat); warnings "
                                       "cost one more query for the page")] = [],  # noqa: B006
) -> JobPageOut:
    statuses = _statuses(status)
    labels = _labels(label)
    page, items = list_jobs_for(session, caller, statuses=statuses, labels=labels, limit=limit,
                                cursor=cursor, expand=_expand(expand))
    return JobPageOut(items=items, next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status",
            description="The job with its stages, config and warnings (the run's 'warning' "
            "events, repeats counted once: read them before trusting the result).")
def read_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    return read_job_for(session, caller, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    description="A queued job is cancelled at once and never starts; a running one is marked "
    "cancel_requested and stops at its next batch boundary; a finished one is 409.",
    responses={409: {"description": "The job has already finished"},
               415: {"description": "A body that is not JSON (a browser form, say)"}},
    dependencies=[JsonOrNoBody],
)
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    return cancel_job_for(session, caller, job_id)


@router.delete(
    "/{job_id}", status_code=204, response_class=Response, summary="Delete a finished job",
    description="Removes the job, its records (stages, events, MRC table, curves) and its "
    "artifacts. A queued or running job is 409 job_active: cancel it first. If-Match: only "
    "if it is unchanged since its GET (else 412); If-Unmodified-Since: since its updated_at.",
    responses={409: {"description": "The job has not finished"},
               412: {"description": "If-Match names another ETag"}})
def delete_job(job_id: str, session: SessionDep, store: StoreDep, caller: CallerDep,
               conditions: WriteConditionsDep) -> Response:
    deletion.delete_job(session, store, caller, job_id, conditions)
    return Response(status_code=204)
