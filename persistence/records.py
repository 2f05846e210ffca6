"""Database rows of uploaded checkpoints and datasets (the bytes live in the object store).

The API writes the object first and the row second, so a row always points at stored bytes; if
writing the row fails, the API deletes the object it stored.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from persistence.models import Checkpoint, Dataset, new_id, utcnow


def create_checkpoint(
    session: Session,
    *,
    filename: str,
    size: int,
    sha256: str,
    format: str,
    storage_key: str,
    num_tensors: int,
    num_parameters: int,
    checkpoint_id: str | None = None,
    now: datetime | None = None,
    project_id: str | None = None,
) -> Checkpoint:
    """Record a validated checkpoint (``format``: ``safetensors`` or ``torch``; size in bytes).

    ``checkpoint_id`` lets the caller choose the id before storing the bytes under a key that
    contains it. Commits.
    """
    checkpoint = Checkpoint(
        id=checkpoint_id or new_id(), filename=filename, size=size, sha256=sha256, format=format,
        storage_key=storage_key, num_tensors=num_tensors, num_parameters=num_parameters,
        created_at=now or utcnow(), project_id=project_id,
    )
    session.add(checkpoint)
    session.commit()
    return checkpoint


def get_checkpoint(session: Session, checkpoint_id: str) -> Checkpoint | None:
    """The checkpoint row, or None."""
    return session.get(Checkpoint, checkpoint_id)


def create_dataset(
    session: Session,
    *,
    filename: str,
    kind: str,
    size: int,
    sha256: str,
    storage_key: str,
    dataset_id: str | None = None,
    now: datetime | None = None,
    project_id: str | None = None,
    content: str | None = None,
    image_shape: tuple[int, int, int] | None = None,
    num_features: int | None = None,
    num_examples: int | None = None,
    num_classes: int | None = None,
    label_min: int | None = None,
    label_max: int | None = None,
) -> Dataset:
    """Record an uploaded dataset archive (``kind``: ``npz`` or ``imagefolder``) with what its
    validation found (``content``: ``images`` or ``features``; ``image_shape`` (C, H, W)).
    Commits."""
    channels, height, width = image_shape if image_shape is not None else (None, None, None)
    dataset = Dataset(
        id=dataset_id or new_id(), filename=filename, kind=kind, size=size, sha256=sha256,
        storage_key=storage_key, created_at=now or utcnow(), project_id=project_id,
        content=content,
        image_channels=channels, image_height=height, image_width=width,
        num_features=num_features, num_examples=num_examples, num_classes=num_classes,
        label_min=label_min, label_max=label_max,
    )
    session.add(dataset)
    session.commit()
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset | None:
    """The dataset row, or None."""
    return session.get(Dataset, dataset_id)
