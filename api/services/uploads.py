"""The stored-bytes quota at upload time: checked before the body is read (from Content-Length,
or what is already stored) and again with the received size, so an upload over the quota is
refused before anything is stored. A replay (an Idempotency-Key already recorded, with the same
file) stores nothing, so the quota never refuses it: it answers with the earlier upload."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller
from api.errors import PayloadTooLarge
from api.idempotency import RequestKey
from api.services.quotas import check_storage
from api.services.upload_replay import Upload, key_recorded, replayed_upload
from api.uploads import declared_file_bytes


def check_upload_quota(factory: sessionmaker[Session], caller: Caller, request: Request | None,
                       size: int | None = None) -> None:
    """Raise 413 ``quota_exceeded`` if storing ``size`` bytes (default: the fewest the request's
    declared Content-Length allows its file, 0 without one) would pass the project's
    ``max_stored_bytes``."""
    if size is None:
        size = declared_file_bytes(request) if request is not None else 0
    with factory() as session:
        check_storage(session, caller, size)
        session.commit()


def check_declared_upload(factory: sessionmaker[Session], caller: Caller, request: Request,
                          model: type[Upload], idempotency_key: str | None) -> None:
    """The check before the body is read: :func:`check_upload_quota` on the declared size,
    waived when ``idempotency_key`` names an upload already stored (the request may replay it;
    whether it does is known once the body's hash is). The key is looked up after a refusal, so
    a first upload under it recorded meanwhile (its bytes making the refusal) is seen too."""
    try:
        check_upload_quota(factory, caller, request)
    except PayloadTooLarge:
        if idempotency_key is None or not key_recorded(factory, model, caller, idempotency_key):
            raise


def replay_or_check_quota(factory: sessionmaker[Session], caller: Caller, model: type[Upload],
                          kind: str, key: RequestKey | None, size: int) -> Upload | None:
    """The upload this request replays (see ``replayed_upload``); or None, once storing ``size``
    more bytes is known to keep the quota. A first upload under the same key recorded while this
    one was being received, whose bytes filled the quota, makes this a replay, not a 413."""
    replay = replayed_upload(factory, model, kind, key)
    if replay is not None:
        return replay
    try:
        check_upload_quota(factory, caller, None, size)
    except PayloadTooLarge:
        replay = replayed_upload(factory, model, kind, key)
        if replay is None:
            raise
    return replay
