"""``/v1/datasets``: upload a dataset archive (validated before it is accepted), list the
project's, read one back, delete it.

The built-in datasets (``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``digits``) need no upload:
a job names them in ``config.dataset.name``; ``GET /v1/datasets/<name>`` describes them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.dataset_validation import BUILTIN_GEOMETRY
from api.deps import (
    CallerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StoreDep,
    ValidationSharesDep,
    ValidatorDep,
)
from api.errors import NotFound
from api.idempotency import IdempotencyKey
from api.job_requests import BUILTIN_CLASSES
from api.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageCursor, PageLimit
from api.schemas import DatasetOut, DatasetPageOut
from api.services import deletion
from api.services.ownership import find_owned
from api.services.upload_flow import DATASET_UPLOADS, FILE_FIELD, UploadServices, accept_upload
from api.services.upload_records import dataset_out, list_datasets_for
from api.uploads import RawFilename, upload_request_body
from api.write_conditions import WriteConditionsDep
from persistence.models import Dataset, DatasetKind
from rift.setting_names import closest_choice

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset archive",
    description=(
        "An .npz file (keys 'x', 'y', optionally 'x_test', 'y_test'; 'x' holds images, uint8 or "
        "float in [0, 1], N×H×W×C or N×C×H×W (the channel axis is read from the shape), or "
        "feature vectors N×F of any finite values; labels "
        "are integers >= 0) or a tar (optionally compressed) of an ImageFolder tree "
        "(<class>/<image> or train/<class>/<image> with an optional val/ or test/), as the "
        "multipart field 'file' or the raw body. Every value is checked (NaN/Inf refused); "
        "members with absolute paths, '..' or links are refused. Over MAX_DATASET_BYTES is 413. "
        "With an Idempotency-Key, the same file sent again answers 200 with the dataset stored "
        "the first time (nothing stored twice); the key with another file is 409."
    ),
    openapi_extra=upload_request_body(FILE_FIELD),
    responses={200: {"description": "Idempotent replay: the dataset stored before",
                     "model": DatasetOut},
               409: {"description": "Idempotency-Key reused with another file"},
               413: {"description": "Larger than the limit, or over the project's "
                     "max_stored_bytes quota"}, 422: {"description": "Invalid"}},
)
async def upload_dataset(request: Request, response: Response, caller: CallerDep,
                         settings: SettingsDep, factory: SessionFactoryDep,
                         store: StoreDep, validator: ValidatorDep,
                         shares: ValidationSharesDep,
                         filename: RawFilename = None,
                         idempotency_key: IdempotencyKey = None) -> DatasetOut:
    row, created = await accept_upload(
        DATASET_UPLOADS, request, caller, UploadServices(settings, factory, store, validator,
                                                        shares),
        idempotency_key)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return dataset_out(row)


@router.get(
    "", response_model=DatasetPageOut, summary="List the project's uploaded datasets, newest first",
    description=f"Paged like GET /v1/jobs: ?limit= (1 to {MAX_PAGE_SIZE}, default "
    f"{DEFAULT_PAGE_SIZE}) and ?cursor= (the previous page's next_cursor); ?kind= keeps one "
    "kind. The built-in datasets are not uploads and are not listed (GET /v1/datasets/{name} "
    "describes them).")
def list_datasets_route(
    session: SessionDep,
    caller: CallerDep,
    kind: Annotated[DatasetKind | None, Query(
        description="npz or imagefolder: only uploads of this kind")] = None,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> DatasetPageOut:
    return list_datasets_for(session, caller, kind=kind.value if kind else None, limit=limit,
                             cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetOut,
            summary="An uploaded dataset's record, or a built-in dataset")
def read_dataset(dataset_id: str, session: SessionDep, caller: CallerDep) -> DatasetOut:
    if dataset_id in BUILTIN_GEOMETRY:
        channels, size = BUILTIN_GEOMETRY[dataset_id]
        return DatasetOut(id=dataset_id, kind="builtin", content="images",
                          image_shape=[channels, size, size],
                          num_classes=BUILTIN_CLASSES[dataset_id])
    row = find_owned(session, Dataset, caller.project_id, dataset_id)
    if row is None:
        # A near miss of a built-in name (`cifar`, `CIFAR-10`) is told which one, as the
        # config's dataset.name is in POST /v1/jobs.
        guess = closest_choice(dataset_id, list(BUILTIN_GEOMETRY))
        meant = f"; did you mean {guess!r}?" if guess is not None else ""
        raise NotFound(f"no dataset with id '{dataset_id[:64]}' (built-in: "
                       f"{', '.join(BUILTIN_GEOMETRY)}){meant}", field="dataset_id",
                       code="dataset_not_found")
    return dataset_out(row)


@router.delete(
    "/{dataset_id}", status_code=204, response_class=Response, summary="Delete a dataset",
    description="Removes the record and the stored archive. 409 while a job uses it (queued or "
    "running: in_use; finished jobs: referenced, delete them first). If-Match: only "
    "if it is unchanged since its GET (else 412).",
    responses={409: {"description": "Used by a job"},
               412: {"description": "If-Match names another ETag"}})
def delete_dataset(dataset_id: str, session: SessionDep, store: StoreDep,
                   caller: CallerDep,
                   conditions: WriteConditionsDep) -> Response:
    if dataset_id in BUILTIN_GEOMETRY:
        # "no dataset with id 'digits'" read as if the built-in dataset were missing.
        raise NotFound(f"'{dataset_id}' is a built-in dataset, not an upload: there is nothing "
                       "to delete (uploads: GET /v1/datasets)", field="dataset_id",
                       code="dataset_not_found")
    deletion.delete_dataset(session, store, caller, dataset_id, conditions)
    return Response(status_code=204)
