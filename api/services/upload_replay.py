"""``Idempotency-Key`` on uploads: a checkpoint or dataset sent again under the same key (after
a lost answer, a retried script) is answered with the one stored the first time, 200 instead of
201, without storing the bytes twice; the same key with another file (name or content) is 409.
Two uploads racing with one key store one resource: the loser's insert hits the key's unique
constraint, its object is deleted, and it answers with the winner's."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller
from api.idempotency import RequestKey, scoped_idempotency_key
from api.uploads import UploadedFile
from persistence.models import Checkpoint, Dataset

Upload = TypeVar("Upload", Checkpoint, Dataset)


def upload_key(caller: Caller, key: str | None, file: UploadedFile) -> RequestKey | None:
    """An upload's key: the request it stands for is the file's name and SHA-256."""
    return RequestKey.of(caller.project_id, key, f"{file.filename}\n{file.sha256}")


def replayed_upload(factory: sessionmaker[Session], model: type[Upload], kind: str,
                    key: RequestKey | None) -> Upload | None:
    """The resource an earlier upload with ``key`` made, or None (no key, or a new one).

    Raises:
        Conflict: (409 ``idempotency_conflict``) the key was used for another file.
    """
    if key is None:
        return None
    with factory() as session:
        row = session.execute(
            select(model).where(model.idempotency_key == key.stored)).scalar_one_or_none()
        session.commit()
    return key.replay(row, kind)


def key_recorded(factory: sessionmaker[Session], model: type[Upload], caller: Caller,
                 idempotency_key: str) -> bool:
    """Whether an upload of ``model`` was stored under the caller's ``idempotency_key``."""
    stored = scoped_idempotency_key(caller.project_id, idempotency_key)
    with factory() as session:
        found = session.execute(
            select(model.id).where(model.idempotency_key == stored)).first() is not None
        session.commit()
    return found
