"""``Idempotency-Key`` on uploads: a checkpoint or dataset sent again under the same key (after
a lost answer, a retried script) is answered with the one stored the first time, 200 instead of
201, without storing the bytes twice; the same key with another file (name or content) is 409.
Two uploads racing with one key store one resource: the loser's insert hits the key's unique
constraint, its object is deleted, and it answers with the winner's."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller
from api.idempotency import idempotency_conflict, scoped_idempotency_key
from api.uploads import UploadedFile
from persistence.models import Checkpoint, Dataset

Upload = TypeVar("Upload", Checkpoint, Dataset)


@dataclass(frozen=True)
class UploadKey:
    """An upload's key as the client sent it, as stored (per project), and the request it
    stands for (the file's name and SHA-256)."""

    client_key: str
    stored: str
    request_hash: str

    @classmethod
    def of(cls, caller: Caller, key: str | None, file: UploadedFile) -> UploadKey | None:
        if key is None:
            return None
        request = hashlib.sha256(f"{file.filename}\n{file.sha256}".encode()).hexdigest()
        return cls(key, scoped_idempotency_key(caller.project_id, key), request)


def replayed_upload(factory: sessionmaker[Session], model: type[Upload], kind: str,
                    key: UploadKey | None) -> Upload | None:
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
    if row is not None and row.request_hash != key.request_hash:
        raise idempotency_conflict(key.client_key, kind, row.id)
    return row
