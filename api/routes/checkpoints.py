"""``/v1/checkpoints``: upload a checkpoint (validated before it is accepted) and read it back."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, get_session_factory, get_settings, get_store, get_validator
from api.errors import InvalidInput, NotFound
from api.ingest import store_checkpoint, validate_checkpoint_upload
from api.schemas import CheckpointOut, is_resource_id
from api.uploads import receive_upload, scratch_dir, upload_request_body
from persistence.models import Checkpoint
from persistence.records import get_checkpoint

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])

FILE_FIELD = "file"


def checkpoint_out(row: Checkpoint) -> CheckpointOut:
    return CheckpointOut.model_validate(row, from_attributes=True)


@router.post(
    "",
    status_code=201,
    response_model=CheckpointOut,
    summary="Upload a checkpoint",
    description=(
        "A safetensors file or a PyTorch file (read with weights_only=True; pickled code is "
        "refused), as the multipart field 'file' or as the raw body "
        "(application/octet-stream, name in ?filename=). Streamed to the object store with its "
        "SHA-256; over MAX_CHECKPOINT_BYTES is 413; an invalid file is 422 and nothing is kept."
    ),
    openapi_extra=upload_request_body(FILE_FIELD),
    responses={413: {"description": "Larger than the limit"}, 422: {"description": "Invalid"}},
)
async def upload_checkpoint(request: Request, response: Response) -> CheckpointOut:
    settings = get_settings(request)
    upload = await receive_upload(
        request, file_field=FILE_FIELD, max_file_bytes=settings.max_checkpoint_bytes,
        scratch_dir=scratch_dir(settings))
    with upload:
        if upload.file is None:
            raise InvalidInput(f"the form field '{FILE_FIELD}' (the checkpoint file) is missing",
                               field=FILE_FIELD)
        file = upload.file
        inspection = await run_in_threadpool(
            validate_checkpoint_upload, get_validator(request), file, FILE_FIELD)
        row = await run_in_threadpool(
            store_checkpoint, get_session_factory(request), get_store(request), file, inspection)
    response.headers["Location"] = f"/v1/checkpoints/{row.id}"
    return checkpoint_out(row)


@router.get("/{checkpoint_id}", response_model=CheckpointOut, summary="A checkpoint's record")
def read_checkpoint(checkpoint_id: str, session: SessionDep) -> CheckpointOut:
    row = get_checkpoint(session, checkpoint_id) if is_resource_id(checkpoint_id) else None
    if row is None:
        raise NotFound(f"no checkpoint with id '{checkpoint_id}'", field="checkpoint_id")
    return checkpoint_out(row)
