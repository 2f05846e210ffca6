"""``/v1/checkpoints``: upload a checkpoint (validated before it is accepted), list the
project's, read one back, delete it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import (
    CallerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
    ValidationSharesDep,
    ValidatorDep,
)
from api.idempotency import IdempotencyKey
from api.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageCursor, PageLimit
from api.schemas import CheckpointFormat, CheckpointOut, CheckpointPageOut
from api.services import deletion
from api.services.ownership import owned_checkpoint
from api.services.upload_flow import CHECKPOINT_UPLOADS, FILE_FIELD, UploadServices, accept_upload
from api.services.upload_records import checkpoint_out, list_checkpoints_for
from api.uploads import RawFilename, upload_request_body
from api.write_conditions import WriteConditionsDep

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])


@router.post(
    "",
    status_code=201,
    response_model=CheckpointOut,
    summary="Upload a checkpoint",
    description=(
        "A safetensors file or a PyTorch file (read with weights_only=True; pickled code is "
        "refused), as the multipart field 'file' or as the raw body "
        "(application/octet-stream, name in ?filename=). Streamed to the object store with its "
        "SHA-256; over MAX_CHECKPOINT_BYTES is 413; an invalid file is 422 and nothing is kept. "
        "With an Idempotency-Key, the same file sent again answers 200 with the checkpoint "
        "stored the first time (nothing stored twice); the key with another file is 409. A file "
        "holding several sets of weights (a model and its EMA) is accepted and lists them in "
        "'entries': a job on it names one in config.checkpoint_entry."
    ),
    openapi_extra=upload_request_body(FILE_FIELD),
    responses={200: {"description": "Idempotent replay: the checkpoint stored before",
                     "model": CheckpointOut},
               409: {"description": "Idempotency-Key reused with another file"},
               413: {"description": "Larger than the limit, or over the project's "
                     "max_stored_bytes quota"}, 422: {"description": "Invalid"}},
)
async def upload_checkpoint(request: Request, response: Response, caller: CallerDep,
                            settings: SettingsDep, factory: SessionFactoryDep,
                            store: StoreDep, validator: ValidatorDep,
                            shares: ValidationSharesDep,
                            filename: RawFilename = None,
                            idempotency_key: IdempotencyKey = None) -> CheckpointOut:
    row, created = await accept_upload(
        CHECKPOINT_UPLOADS, request, caller, UploadServices(settings, factory, store, validator,
                                                        shares),
        idempotency_key)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/checkpoints/{row.id}"
    return checkpoint_out(row)


@router.get(
    "", response_model=CheckpointPageOut, summary="List the project's checkpoints, newest first",
    description=f"Paged like GET /v1/jobs: ?limit= (1 to {MAX_PAGE_SIZE}, default "
    f"{DEFAULT_PAGE_SIZE}) and ?cursor= (the previous page's next_cursor); ?format= keeps one format.")
def list_checkpoints_route(
    session: SessionDep,
    caller: CallerDep,
    format: Annotated[CheckpointFormat | None, Query(
        description="safetensors or torch: only checkpoints of this format")] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> CheckpointPageOut:
    return list_checkpoints_for(session, caller, format=format, limit=limit, cursor=cursor)


@router.get("/{checkpoint_id}", response_model=CheckpointOut, summary="A checkpoint's record")
def read_checkpoint(checkpoint_id: str, session: SessionDep, caller: CallerDep) -> CheckpointOut:
    return checkpoint_out(owned_checkpoint(session, caller.project_id, checkpoint_id))


@router.delete(
    "/{checkpoint_id}", status_code=204, response_class=Response, summary="Delete a checkpoint",
    description="Removes the record and the stored file. 409 while a job uses it (queued or "
    "running: in_use; finished jobs: referenced, delete them first). If-Match: only "
    "if it is unchanged since its GET (else 412).",
    responses={409: {"description": "Used by a job"},
               412: {"description": "If-Match names another ETag"}})
def delete_checkpoint(checkpoint_id: str, session: SessionDep, store: StoreDep,
                      caller: CallerDep,
                      conditions: WriteConditionsDep) -> Response:
    deletion.delete_checkpoint(session, store, caller, checkpoint_id, conditions)
    return Response(status_code=204)
