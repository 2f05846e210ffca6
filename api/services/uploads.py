"""The stored-bytes quota at upload time: checked before the body is read (from Content-Length,
or what is already stored) and again with the received size, so an upload over the quota is
refused before anything is stored."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller
from api.services.quotas import check_storage


def check_upload_quota(factory: sessionmaker[Session], caller: Caller, request: Request | None,
                       size: int | None = None) -> None:
    """Raise 413 ``quota_exceeded`` if storing ``size`` bytes (default: the request's declared
    Content-Length, or 0 when it has none) would pass the project's ``max_stored_bytes``."""
    if size is None:
        length = request.headers.get("content-length") if request is not None else None
        size = int(length) if length is not None and length.isascii() and length.isdigit() else 0
    with factory() as session:
        check_storage(session, caller, size)
        session.commit()
