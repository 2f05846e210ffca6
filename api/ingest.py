"""From a received upload to a stored, recorded checkpoint or dataset.

The order is what keeps rejected uploads from leaving anything behind: validate the scratch file
(nothing stored yet), stream it to the object store, then write the database row; if the row
cannot be written the object is deleted again. A row therefore always points at stored,
validated bytes. These functions block (file checks, store, database): call them in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import annotated_types
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller
from api.dataset_validation import max_unpacked_bytes
from api.errors import InvalidInput, PayloadTooLarge, ServiceUnavailable, from_rift_error
from api.idempotency import RequestKey
from api.services.quotas import storage_exceeded
from api.services.upload_replay import Upload, replayed_upload
from api.uploads import UploadedFile
from api.validation import Validator
from persistence.models import Checkpoint, Dataset, new_id
from persistence.records import StorageQuotaReached, create_checkpoint, create_dataset
from persistence.storage import ObjectStore
from rift.config import ArchitectureSpec
from rift.errors import CheckpointEntryError, RiftError
from validator.checkpoint import CheckpointInspection
from validator.dataset import DatasetInspection

Record = TypeVar("Record")

CHECKPOINT_SUFFIX = {"safetensors": "safetensors", "torch": "pt"}
DATASET_SUFFIX = {"npz": "npz", "imagefolder": "tar"}


def validate_checkpoint_upload(validator: Validator, file: UploadedFile, field: str,
                               entry: str | None = None,
                               entry_field: str | None = None, *,
                               digests: bool = False) -> CheckpointInspection:
    """Check the uploaded checkpoint completely, in the sandboxed validator (with ``entry``,
    that weights entry; the others are still listed; ``digests``: with a PyTorch file's value
    digests, for a job's fit check).

    Raises:
        InvalidInput: (422, ``field``) the reason the file is not an acceptable checkpoint, or
            the validation limit it ran past; (``entry_field``) ``entry`` is not one of its
            weights entries.
        ServiceUnavailable: (503) no validation slot, or the validator failed.
    """
    try:
        return validator.inspect_checkpoint(file.path, file.filename, entry, digests=digests)
    except CheckpointEntryError as exc:
        raise from_rift_error(exc, field=entry_field or field) from exc
    except RiftError as exc:
        raise from_rift_error(exc, field=field) from exc


def _put(store: ObjectStore, key: str, file: UploadedFile, content_type: str) -> None:
    with file.path.open("rb") as handle:
        stored = store.put_stream(key, handle, content_type=content_type, max_bytes=file.size)
    if stored.sha256 != file.sha256 or stored.size != file.size:
        store.delete(key)
        raise ServiceUnavailable(
            "the object store did not keep the bytes that were sent (checksum differs); retry",
            code="store_corrupted")


def _store_then_record(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    key: str,
    file: UploadedFile,
    caller: Caller,
    record: Callable[[Session], Record],
) -> Record:
    """Put ``file`` under ``key``, then write its row; the object is deleted if the row fails,
    over the project's stored-bytes quota (counted again with the row, under the project's
    lock: 413) included."""
    _put(store, key, file, "application/octet-stream")
    try:
        with session_factory() as session:
            return record(session)
    except StorageQuotaReached as exc:
        store.delete(key)
        raise storage_exceeded(caller, exc.used, exc.incoming, exc.limit) from exc
    except BaseException:
        store.delete(key)
        raise


def _unless_raced(session_factory: sessionmaker[Session], model: type[Upload], kind: str,
                  upload_key: RequestKey | None, record: Callable[[], Upload]
                  ) -> tuple[Upload, bool]:
    """``record()``'s new row and True; or, when a concurrent upload with the same
    Idempotency-Key recorded first (its unique constraint refused this row, or its bytes filled
    the quota this row was counted against; ``_store_then_record`` has deleted this row's
    object), that upload's row and False."""
    try:
        return record(), True
    except (IntegrityError, PayloadTooLarge):
        winner = replayed_upload(session_factory, model, kind, upload_key)
        if winner is None:
            raise
        return winner, False


def store_checkpoint(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    file: UploadedFile,
    inspection: CheckpointInspection,
    caller: Caller,
    upload_key: RequestKey | None = None,
) -> tuple[Checkpoint, bool]:
    """Store a validated checkpoint under ``checkpoints/<id>.<ext>`` and record it as the
    caller's project's; returns it and whether this call created it (see ``_unless_raced``)."""
    checkpoint_id = new_id()
    key = f"checkpoints/{checkpoint_id}.{CHECKPOINT_SUFFIX[inspection.format]}"
    return _unless_raced(session_factory, Checkpoint, "checkpoint", upload_key, lambda: (
        _store_then_record(session_factory, store, key, file, caller, lambda session: (
            create_checkpoint(
                session, checkpoint_id=checkpoint_id, filename=file.filename, size=file.size,
                sha256=file.sha256, format=inspection.format, storage_key=key,
                num_tensors=inspection.num_tensors, num_parameters=inspection.num_parameters,
                entries=inspection.entries, actor=caller.actor,
                project_id=caller.project_id, max_stored_bytes=caller.limits.max_stored_bytes,
                idempotency_key=upload_key.stored if upload_key else None,
                request_hash=upload_key.request_hash if upload_key else None)))))


def validate_dataset_upload(validator: Validator, file: UploadedFile, field: str
                            ) -> DatasetInspection:
    """Check the uploaded archive in the sandboxed validator (npz keys, arrays and every value,
    or safe tar members and an ImageFolder layout; unpacking to at most ``MAX_EXPANSION`` times
    the file's size). Raises InvalidInput (422, ``field``) with the reason, ServiceUnavailable
    (503) when no validation could run."""
    try:
        inspection = validator.inspect_dataset(file.path, file.filename,
                                               max_unpacked_bytes(file.size))
    except RiftError as exc:
        raise from_rift_error(exc, field=field) from exc
    _check_class_count(inspection, field)
    return inspection


def _max_classes() -> int:
    """The most classes an architecture may have (``ArchitectureSpec.num_classes``' bound)."""
    bounds = [int(m.le) for m in ArchitectureSpec.model_fields["num_classes"].metadata  # type: ignore[call-overload]
              if isinstance(m, annotated_types.Le)]
    return bounds[0]


def _check_class_count(inspection: DatasetInspection, field: str) -> None:
    # Labels are class indices: a label past the bound needs more outputs than any model may
    # have, so no job could use the dataset, and its class count (label_max + 1) could overflow
    # the integer column it is recorded in (a 422 naming no field, before this check).
    limit = _max_classes()
    if inspection.num_classes > limit:
        raise InvalidInput(
            f"the labels need {inspection.num_classes} classes (largest label "
            f"{inspection.label_max}); an architecture has at most {limit}: labels are class "
            "indices 0..num_classes-1", field=field, code="invalid_dataset",
            details={"num_classes": inspection.num_classes, "max_classes": limit})


def store_dataset(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    file: UploadedFile,
    inspection: DatasetInspection,
    caller: Caller,
    upload_key: RequestKey | None = None,
) -> tuple[Dataset, bool]:
    """Store a validated archive under ``datasets/<id>.<npz|tar>`` and record it as the
    caller's project's; returns it and whether this call created it (see ``_unless_raced``)."""
    dataset_id = new_id()
    key = f"datasets/{dataset_id}.{DATASET_SUFFIX[inspection.kind]}"
    return _unless_raced(session_factory, Dataset, "dataset", upload_key, lambda: (
        _store_then_record(session_factory, store, key, file, caller, lambda session: (
            create_dataset(
                session, dataset_id=dataset_id, filename=file.filename, kind=inspection.kind,
                size=file.size, sha256=file.sha256, storage_key=key,
                project_id=caller.project_id, max_stored_bytes=caller.limits.max_stored_bytes,
                content=inspection.content, image_shape=inspection.image_shape,
                num_features=inspection.num_features, num_examples=inspection.num_examples,
                num_classes=inspection.num_classes, label_min=inspection.label_min,
                label_max=inspection.label_max,
                num_distinct_labels=inspection.num_distinct_labels,
                distinct_labels=inspection.distinct_labels,
                value_min=inspection.value_min, value_max=inspection.value_max,
                channel_value_min=inspection.channel_value_min,
                channel_value_max=inspection.channel_value_max,
                image_sizes_differ=inspection.image_sizes_differ, actor=caller.actor,
                idempotency_key=upload_key.stored if upload_key else None,
                request_hash=upload_key.request_hash if upload_key else None)))))
