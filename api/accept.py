"""``Accept`` on the JSON routes (RFC 9110 §12.5.1): a request whose ``Accept`` rules out every
media type a route answers with gets 406 ``not_acceptable`` before the route runs, instead of
JSON it said it cannot take.

Only an explicit refusal counts: no ``Accept``, an empty one, one with no media range this
parser can read, ``*/*``, ``application/*`` or ``application/json`` (any parameters) with a
quality above 0 all get JSON, so the Python client (which sends ``Accept: application/json`` on
every request), ``riftctl``, browsers (``text/html,...,*/*;q=0.8``) and the docs pages keep
working. As §12.5.1 asks, the most specific range decides: ``application/json;q=0, */*`` refuses
JSON.

Which routes: those of the ``/v1`` router whose response class is the default JSON one; the
media types they answer with are JSON plus those their OpenAPI ``responses`` declare
(``text/event-stream`` for a job's events). Routes that answer other types (artifact downloads:
any file type; the report page: HTML; deletes: no body) and the probes ``/healthz`` and
``/readyz`` (load balancers send what they like) are never refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from api.errors import ApiError

JSON = "application/json"


class NotAcceptable(ApiError):
    status_code = 406
    code = "not_acceptable"


def _quality(params: list[str]) -> float | None:
    """The ``q`` parameter of a media range (1 without one); None when it is not a number in
    [0, 1] (the range is then skipped, not read as a refusal)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return None
            return quality if 0.0 <= quality <= 1.0 else None
    return 1.0


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The readable media ranges of an Accept header: (type, subtype, quality)."""
    found = []
    for item in accept.split(","):
        media_range, *params = item.split(";")
        kind, slash, subtype = media_range.strip().lower().partition("/")
        quality = _quality(params)
        if not slash or not kind or not subtype or quality is None:
            continue
        found.append((kind, subtype, quality))
    return found


def acceptable(accept: str | None, media_type: str) -> bool:
    """Whether ``accept`` lets the server send ``media_type`` (``type/subtype``): the most
    specific matching range decides; no readable range at all means anything goes."""
    if accept is None:
        return True
    ranges = _ranges(accept)
    if not ranges:
        return True
    kind, _, subtype = media_type.lower().partition("/")
    best: tuple[int, float] | None = None  # (specificity, quality)
    for range_kind, range_subtype, quality in ranges:
        if range_kind == kind and range_subtype == subtype:
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif range_kind == "*" and range_subtype == "*":
            specificity = 0
        else:
            continue
        if best is None or specificity > best[0] or (specificity == best[0]
                                                     and quality > best[1]):
            best = (specificity, quality)
    return best is not None and best[1] > 0


def offered_media_types(route: APIRoute) -> list[str] | None:
    """The media types a JSON route answers with, or None for a route that answers others
    (never refused)."""
    response_class = route.response_class
    if isinstance(response_class, DefaultPlaceholder):
        response_class = response_class.value
    if response_class is not JSONResponse:
        return None
    offered = [JSON]
    for response in route.responses.values():
        for media_type in (response.get("content") or {}) if isinstance(response, dict) else ():
            if media_type not in offered:
                offered.append(media_type)
    return offered


def check_accept(request: Request) -> None:
    """406 when the request's ``Accept`` refuses every media type its route answers with."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    offered = offered_media_types(route)
    accept = request.headers.get("accept")
    if offered is None or accept is None or any(acceptable(accept, m) for m in offered):
        return
    raise _refusal(accept, offered)


def _refusal(accept: str, offered: Iterable[str]) -> NotAcceptable:
    shown = accept if len(accept) <= 100 else accept[:97] + "..."
    types = list(offered)
    return NotAcceptable(
        f"this route answers with {' or '.join(types)}, which 'Accept: {shown}' rules out; "
        f"send 'Accept: {JSON}' (or '*/*', or no Accept header)", field="Accept",
        details={"accepted": types})
