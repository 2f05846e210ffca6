"""Uploaded checkpoints and datasets as the API shows them: one record's view, and pages of the
caller's own (never another project's), newest first."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import Caller
from api.schemas import CheckpointOut, CheckpointPageOut, DatasetOut, DatasetPageOut
from persistence.models import Checkpoint, Dataset
from persistence.records import list_checkpoints, list_datasets


def checkpoint_out(row: Checkpoint) -> CheckpointOut:
    """The API view of a checkpoint's row."""
    return CheckpointOut.model_validate(row, from_attributes=True)


def dataset_out(row: Dataset) -> DatasetOut:
    """The API view of an uploaded dataset's row."""
    shape = row.image_shape
    return DatasetOut(
        id=row.id, kind=row.kind, filename=row.filename, size=row.size,  # type: ignore[arg-type]
        sha256=row.sha256, content=row.content,  # type: ignore[arg-type]
        image_shape=list(shape) if shape else None, num_features=row.num_features,
        num_classes=row.num_classes, num_examples=row.num_examples, label_min=row.label_min,
        label_max=row.label_max, value_min=row.value_min, value_max=row.value_max,
        channel_value_min=row.channel_value_min, channel_value_max=row.channel_value_max,
        image_sizes_differ=row.image_sizes_differ,
        created_at=row.created_at)


def list_checkpoints_for(session: Session, caller: Caller, *, format: str | None, limit: int,
                         cursor: str | None) -> CheckpointPageOut:
    """A page of the caller's checkpoints (of one ``format`` when given)."""
    page = list_checkpoints(session, project_id=caller.project_id, format=format, limit=limit,
                            cursor=cursor)
    return CheckpointPageOut(items=[checkpoint_out(row) for row in page.items],
                             next_cursor=page.next_cursor)


def list_datasets_for(session: Session, caller: Caller, *, kind: str | None, limit: int,
                      cursor: str | None) -> DatasetPageOut:
    """A page of the caller's uploaded datasets (of one ``kind`` when given)."""
    page = list_datasets(session, project_id=caller.project_id, kind=kind, limit=limit,
                         cursor=cursor)
    return DatasetPageOut(items=[dataset_out(row) for row in page.items],
                          next_cursor=page.next_cursor)
