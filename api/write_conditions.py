"""Optimistic concurrency on writes (RFC 9110 §13.1.1, §13.1.4): ``If-Match`` and
``If-Unmodified-Since`` on ``PATCH`` and ``DELETE``.

A client that read a resource (its GET answers an ``ETag``: :mod:`api.json_validators`) and
sends ``If-Match: <that tag>`` with its change asks "only if nobody changed it since": the
route computes the tag the resource's GET would answer *now* and refuses with 412, naming the
header and the current tag, when it differs. ``If-Match: *`` passes for any existing resource
(a missing one is the route's 404 first, §13.2.1: conditions are not evaluated on a request that
would fail anyway). No header: the write goes ahead as before.

The route reads the resource under a row lock (Postgres ``FOR UPDATE``; SQLite transactions are
``BEGIN IMMEDIATE``, :mod:`persistence.db`) and writes it in the same transaction, so of two
writes carrying the same tag the second reads the first's result and gets 412, instead of both
passing a check made before either wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.conditional import parse_http_date, precondition_failed_by
from api.errors import PreconditionFailed
from api.json_validators import json_etag


@dataclass(frozen=True)
class WriteConditions:
    """A write request's preconditions; both None: an unconditional write."""

    if_match: str | None
    #: None also when the header is not a valid HTTP date (§13.1.4: ignored, never an error).
    if_unmodified_since: datetime | None

    @property
    def present(self) -> bool:
        return self.if_match is not None or self.if_unmodified_since is not None


def write_conditions(request: Request) -> WriteConditions:
    """The dependency that reads a write's preconditions from its headers."""
    return WriteConditions(
        if_match=request.headers.get("if-match"),
        if_unmodified_since=parse_http_date(request.headers.get("if-unmodified-since")))


WriteConditionsDep = Annotated[WriteConditions, Depends(write_conditions)]


def representation_etag(current: BaseModel, *, volatile: frozenset[str] = frozenset()) -> str:
    """The ``ETag`` the resource's GET answers for ``current``: the tag of the same JSON bytes
    (FastAPI's encoding of a response model, then ``JSONResponse``'s rendering). ``volatile``:
    fields left out of the tag because they move without any write a client could conflict
    with (a key's ``last_used_at``); the GET then sends this tag itself
    (:mod:`api.json_validators` keeps a route's own ``ETag``)."""
    return json_etag(bytes(JSONResponse(jsonable_encoder(current, exclude=set(volatile))).body))


def require_unchanged(conditions: WriteConditions, current: BaseModel, *,
                      updated_at: datetime | None = None,
                      volatile: frozenset[str] = frozenset()) -> None:
    """Raise 412 when the resource, as ``current`` shows it now, fails the request's
    precondition. ``updated_at``: the resource's last change, for ``If-Unmodified-Since``
    (ignored for a resource without one, and beside ``If-Match``, §13.2.2); ``volatile``: as
    :func:`representation_etag`, the same set its GET's tag leaves out."""
    if not conditions.present:
        return
    etag = representation_etag(current, volatile=volatile)
    failed = precondition_failed_by(conditions.if_match, conditions.if_unmodified_since,
                                    etag=etag, last_modified=updated_at)
    if failed is None:
        return
    what = ("does not name the resource's current ETag" if failed == "If-Match"
            else "is before the resource's last change")
    raise PreconditionFailed(
        f"{failed} {what} ({etag}): it changed since you read it; GET it again and retry",
        field=failed, code="precondition_failed", details={"etag": etag},
        headers={"ETag": etag})
