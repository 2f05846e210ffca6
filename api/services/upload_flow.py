"""The one flow of ``POST /v1/checkpoints`` and ``POST /v1/datasets``: the quota on the declared
size, the body streamed to a scratch file with its SHA-256, an Idempotency-Key replay or the
quota on the received size, the sandboxed validation, then the object and its row. The two
routes differed only in what they store; they now say only that (:data:`CHECKPOINT_UPLOADS`,
:data:`DATASET_UPLOADS`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.errors import InvalidInput
from api.idempotency import RequestKey
from api.ingest import store_checkpoint, store_dataset, validate_checkpoint_upload, validate_dataset_upload
from api.services.upload_replay import upload_key
from api.services.uploads import check_declared_upload, replay_or_check_quota
from api.uploads import UploadedFile, receive_upload, scratch_dir
from api.validation import Validator
from api.validation_shares import ValidationShares
from persistence.models import Checkpoint, Dataset
from persistence.settings import Settings
from persistence.storage import ObjectStore
from validator.checkpoint import CheckpointInspection
from validator.dataset import DatasetInspection

Row = TypeVar("Row", Checkpoint, Dataset)
Inspection = TypeVar("Inspection", CheckpointInspection, DatasetInspection)

#: The multipart field (or the raw body) that carries the file, for both kinds.
FILE_FIELD = "file"


@dataclass(frozen=True)
class UploadKind(Generic[Row, Inspection]):
    """What one kind of upload stores: its row's model and name (``noun``, as the replay lookup
    and the messages call it), what the file is (``file_is``, for the 422 of a missing field),
    its size limit, and the validation and storing steps of :mod:`api.ingest`."""

    model: type[Row]
    noun: str
    file_is: str
    max_bytes: Callable[[Settings], int]
    validate: Callable[[Validator, UploadedFile, str], Inspection]
    store: Callable[[sessionmaker[Session], ObjectStore, UploadedFile, Inspection, Caller,
                     RequestKey | None], tuple[Row, bool]]


CHECKPOINT_UPLOADS = UploadKind(
    Checkpoint, "checkpoint", "the checkpoint file", lambda settings: settings.max_checkpoint_bytes,
    validate_checkpoint_upload, store_checkpoint)
DATASET_UPLOADS = UploadKind(
    Dataset, "dataset", "the archive", lambda settings: settings.max_dataset_bytes,
    validate_dataset_upload, store_dataset)


@dataclass(frozen=True)
class UploadServices:
    """What an upload talks to, injected by the route."""

    settings: Settings
    factory: sessionmaker[Session]
    store: ObjectStore
    validator: Validator
    shares: ValidationShares


async def accept_upload(kind: UploadKind[Row, Inspection], request: Request, caller: Caller,
                        services: UploadServices, idempotency_key: str | None
                        ) -> tuple[Row, bool]:
    """Receive, check and store the request's file as ``kind``; returns its row and whether this
    request created it (False: an Idempotency-Key replay of the same file, nothing stored).

    Raises:
        InvalidInput: (422, ``file``) no file, or the validation's reason.
        PayloadTooLarge: (413) over the kind's size limit or the project's stored-bytes quota.
        Conflict: (409) the Idempotency-Key was used with another file.
        ServiceUnavailable: (503) no validation slot, or the object store failed.
        TooManyRequests: (429) the project's VALIDATION_MAX_PENDING_PER_PROJECT checks are
            in flight already.
    """
    await run_in_threadpool(check_declared_upload, services.factory, caller, request,
                            kind.model, idempotency_key)
    upload = await receive_upload(
        request, file_field=FILE_FIELD, max_file_bytes=kind.max_bytes(services.settings),
        scratch_dir=scratch_dir(services.settings))
    with upload:
        if upload.file is None:
            raise InvalidInput(f"the form field '{FILE_FIELD}' ({kind.file_is}) is missing",
                               field=FILE_FIELD)
        file = upload.file
        key = upload_key(caller, idempotency_key, file)
        replay = await run_in_threadpool(replay_or_check_quota, services.factory, caller,
                                         kind.model, kind.noun, key, file.size)
        if replay is not None:
            return replay, False
        with services.shares.hold(caller.project_id,
                                  services.settings.validation_max_pending_per_project):
            inspection = await run_in_threadpool(kind.validate, services.validator, file,
                                                 FILE_FIELD)
        return await run_in_threadpool(kind.store, services.factory, services.store, file,
                                       inspection, caller, key)
