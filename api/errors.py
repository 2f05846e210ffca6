"""Errors the API answers with, and the one place that maps every typed error to an HTTP status.

Every error response has the body ``{"error": {"code", "message", "field"}}``: ``code`` is stable
(clients branch on it), ``message`` says what is wrong and how to fix it, ``field`` names the
request field at fault (dotted, e.g. ``config.attack.eps``) or is null. Request validation errors
(422) additionally keep FastAPI's usual ``detail`` list, whose ``loc`` names each bad field.
"""

from __future__ import annotations

import errno
import logging
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, compile_path

from api.route_methods import methods_at
from persistence.deletion import (
    ProjectAlreadyDeleted,
    ProjectHasActiveJobs,
    ProjectInputsReferenced,
)
from persistence.jobs import IdempotencyConflict, JobAlreadyFinished
from persistence.materializations import (
    JobNotSucceeded,
    MaterializationNotFound,
    MaterializationRunning,
)
from persistence.pages import CursorOfAnotherList, InvalidCursor
from persistence.storage import (
    InvalidRange,
    ObjectNotFound,
    ObjectTooLarge,
    StoreError,
)
from persistence.transactions import JobNotFound, PersistenceError, ProjectNotFound
from persistence.webhooks import WebhookLimitReached, WebhookNotFound, WebhookUrlTaken
from rift.errors import (
    CheckpointEntryError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
    DatasetError,
    JobCancelled,
    RiftError,
    UnknownArchitectureError,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable code, a message and (optionally) the field at fault.

    ``details`` is extra JSON put beside the three keys (e.g. the missing/mismatched keys of a
    checkpoint); ``headers`` are added to the response.
    """

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details or {}
        self.headers = headers or {}


class WordedValidationError(RequestValidationError):
    """A 422 whose messages the API worded itself (its own input rules, a job spec's refined
    errors): answered as they are, while FastAPI's own validation errors are refined first
    (:func:`api.spec_messages.refine_request_errors`)."""


#: The Bearer challenge of every refusal of a key (RFC 6750 §3).
BEARER_REALM = 'Bearer realm="rift"'


class Unauthorized(ApiError):
    """No key, or one that is unknown or revoked: 401 with the challenge RFC 6750 asks for.
    ``error``: the challenge's error code (§3.1), for a request that presented a key:
    ``invalid_token`` (refused) or ``invalid_request`` (several), so that a client can tell a
    bad key from a missing one, which gets the bare challenge (§3: no error code then)."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *,
                 error: Literal["invalid_token", "invalid_request"] | None = None) -> None:
        challenge = f'{BEARER_REALM}, error="{error}"' if error else BEARER_REALM
        super().__init__(message, field="Authorization",
                         headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    """The key is valid but lacks the scope the route needs (never used to hide resources:
    another project's resource is a 404). The challenge names the scope (RFC 6750 §3.1:
    ``error="insufficient_scope"``), as the body's ``required_scope`` does; it was missing, so
    a client reading the header only could not tell a weak key from any other 403."""

    status_code = 403
    code = "insufficient_scope"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(
            message, field="Authorization", details={"required_scope": scope},
            headers={"WWW-Authenticate":
                     f'{BEARER_REALM}, error="insufficient_scope", scope="{scope}"'})


class TooManyRequests(ApiError):
    status_code = 429
    code = "rate_limited"


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ApiError):
    """A well-formed request whose content is wrong (unknown id, bad file, invalid value)."""

    status_code = 422
    code = "invalid_input"


class PreconditionFailed(ApiError):
    """An ``If-Match`` / ``If-Unmodified-Since`` the current file, or the resource a PATCH or
    DELETE would change, does not meet (RFC 9110 §13.1.1, §13.1.4): the request is not carried
    out."""

    status_code = 412
    code = "precondition_failed"


class RangeNotSatisfiable(ApiError):
    status_code = 416
    code = "range_not_satisfiable"


#: Retry-After (seconds) of a 503 for a dependency that is down (database, broker, object store):
#: long enough that waiting clients do not hammer a recovering server, short enough that a blip
#: costs them little. An error may set its own.
UNAVAILABLE_RETRY_AFTER_S = 5


class ServiceUnavailable(ApiError):
    """Something the request needs is down or busy: not the client's fault; retry after
    ``Retry-After`` seconds."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(UNAVAILABLE_RETRY_AFTER_S))


def scratch_unavailable(exc: OSError) -> ServiceUnavailable:
    """A scratch folder under ``WORK_DIR`` that cannot be written (a full disk, the folder
    unmounted or replaced since the start): the service's trouble, not the request's, so a 503
    to retry, not a 500."""
    reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return ServiceUnavailable(f"the API cannot write to its scratch folder (WORK_DIR: {reason}); "
                              "retry later", code="scratch_unavailable")


#: How many characters of a client's input an error may quote: enough to recognise it, and an
#: error answer stays small whatever was sent.
QUOTE_CHARS = 100
#: Longest message of an error answer (a checkpoint mismatch lists many keys; input quoted in a
#: message is cut further by :func:`quote`).
MAX_MESSAGE_CHARS = 2000


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def quote(value: object) -> str:
    """A client's value for an error message: at most :data:`QUOTE_CHARS` characters, quoted."""
    return repr(shorten(str(value)))


def _json_safe(value: Any) -> Any:
    # JSON has no inf or NaN: an input such as 1e400 (parsed as inf) is quoted as text, else
    # rendering the 422 would itself fail.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _short_input(value: Any) -> Any:
    # The ``input`` FastAPI puts in a validation error may be the whole request body.
    if isinstance(value, str | bytes):
        return shorten(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    if isinstance(value, dict | list | tuple):
        return shorten(str(value))
    return value


def error_body(
    code: str, message: str, field: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body of every error response (the message cut to :data:`MAX_MESSAGE_CHARS`)."""
    error: dict[str, Any] = {"code": code, "message": shorten(message, MAX_MESSAGE_CHARS),
                             "field": shorten(field, QUOTE_CHARS * 2) if field else field}
    if details:
        error.update(details)
    return {"error": error}


def from_rift_error(exc: RiftError, *, field: str | None = None) -> ApiError:
    """The :class:`ApiError` for a library error; ``field`` says which request field it concerns.

    Configuration and input-file errors are the client's (422); ``JobCancelled`` is a conflict.
    """
    if isinstance(exc, CheckpointMismatchError):
        return InvalidInput(
            exc.message,
            field=field,
            code=exc.code,
            details={
                "missing": exc.missing,
                "unexpected": exc.unexpected,
                "mismatched": [
                    {"key": key, "checkpoint_shape": list(got), "model_shape": list(want)}
                    for key, got, want in exc.mismatched
                ],
            },
        )
    if isinstance(exc, CheckpointEntryError):
        return InvalidInput(exc.message, field=field, code=exc.code,
                            details={"entries": exc.entries})
    if isinstance(exc, UnknownArchitectureError | ConfigError):
        config_field = f"config.{exc.field}" if exc.field else field
        return InvalidInput(exc.message, field=config_field, code=exc.code)
    if isinstance(exc, CheckpointError | DatasetError):
        return InvalidInput(exc.message, field=field, code=exc.code)
    if isinstance(exc, JobCancelled):
        return Conflict(exc.message, field=field, code=exc.code)
    return BadRequest(exc.message, field=field, code=exc.code)


def from_store_error(exc: StoreError, *, field: str | None = None) -> ApiError:
    """The :class:`ApiError` for an object-store error."""
    if isinstance(exc, ObjectTooLarge):
        return PayloadTooLarge(
            f"the upload is larger than the limit of {exc.limit} bytes",
            field=field,
            details={"limit_bytes": exc.limit},
        )
    if isinstance(exc, ObjectNotFound):
        # The database names an object the store lost: not the client's fault, but not a crash.
        return ServiceUnavailable(
            "the stored file is missing from the object store", code="object_missing"
        )
    if isinstance(exc, InvalidRange):
        return RangeNotSatisfiable(exc.message, field="Range",
                                   headers={"Content-Range": f"bytes */{exc.size}"})
    # StoreUnavailable, and anything else the store could not do: not the client's fault.
    return ServiceUnavailable(exc.message, code=exc.code)


def from_persistence_error(exc: PersistenceError) -> ApiError | None:
    """The :class:`ApiError` for an error of ``persistence``: each names the request field,
    header or limit at fault, like every other 4xx (a state conflict names the path parameter
    of the resource in that state; a limit names the setting that sets it). None for an error
    the API should never meet (see the end)."""
    if isinstance(exc, JobNotFound):
        return NotFound(exc.message, field="job_id", code=exc.code)
    if isinstance(exc, ProjectNotFound):
        # The caller's project was deleted while this request ran: its key no longer works.
        return Unauthorized("the API key's project was deleted", error="invalid_token")
    if isinstance(exc, ProjectAlreadyDeleted):
        return NotFound(exc.message, field="name", code=exc.code)
    if isinstance(exc, ProjectHasActiveJobs):
        return Conflict(exc.message, field="force", code=exc.code,
                        details={"job_ids": exc.job_ids})
    if isinstance(exc, ProjectInputsReferenced):
        return Conflict(exc.message, field="name", code=exc.code,
                        details={"job_ids": exc.job_ids})
    if isinstance(exc, IdempotencyConflict):
        return Conflict(exc.message, field="Idempotency-Key", code=exc.code,
                        details={"job_id": exc.job_id})
    if isinstance(exc, JobAlreadyFinished):
        return Conflict(exc.message, field="job_id", code=exc.code,
                        details={"status": exc.status})
    if isinstance(exc, JobNotSucceeded):
        return Conflict(exc.message, field="job_id", code=exc.code)
    if isinstance(exc, MaterializationRunning):
        return Conflict(exc.message, field="evaluate", code=exc.code)
    if isinstance(exc, MaterializationNotFound):
        return NotFound(exc.message, field="materialization_id", code=exc.code)
    if isinstance(exc, CursorOfAnotherList):
        return BadRequest(exc.message, field="cursor", code=exc.code)
    if isinstance(exc, InvalidCursor):
        return InvalidInput(exc.message, field="cursor", code=exc.code)
    if isinstance(exc, WebhookNotFound):
        return NotFound(exc.message, field="webhook_id", code=exc.code)
    if isinstance(exc, WebhookUrlTaken):
        return Conflict(exc.message, field="url", code=exc.code,
                        details={"webhook_id": exc.endpoint_id})
    if isinstance(exc, WebhookLimitReached):
        return Conflict(exc.message, field="WEBHOOK_MAX_ENDPOINTS", code=exc.code,
                        details={"limit": exc.limit, "used": exc.used})
    # Left: the quota errors, which the services catch where they happen (to delete what was
    # stored, and to answer with api/services/quotas.py's limit and Retry-After), and a
    # worker's lost lease. One reaching the handler is a bug, answered as one.
    return None


#: A union member's tag in a pydantic ``loc``: a lower-case type name with brackets.
_UNION_TAG = re.compile(r"^[a-z][a-z0-9-]*\[.*\]$", re.DOTALL)


def dotted_field(loc: Sequence[Any]) -> str | None:
    """``("body", "config", "attack", "eps")`` → ``"config.attack.eps"``; list indices kept.

    An error about the whole body (missing, not JSON, not an object: ``loc`` is ``("body",)``)
    names ``"body"``, so no 422 leaves its field null. Pydantic puts the member of a union it
    tried into ``loc`` (``literal['auto','unit','none']``, ``function-after[_ordered(),
    DomainBounds]``); those tags are no request field and are left out.
    """
    parts = [str(p) for p in loc]
    if parts == ["body"]:
        return "body"
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    # "[key]": pydantic's mark that a mapping's key, not its value, is at fault
    # ("labels.é.[key]"); the dotted path to the key names it already.
    return ".".join(p for p in parts if not _UNION_TAG.match(p) and p != "[key]") or None


#: The most errors one 422 reports (and the most any route words: ``api.spec_messages``). A
#: body under 1 MiB can hold 40,000 unknown keys; each was worded (a "did you mean" search) and
#: encoded before all but these were dropped, 6 s of an API worker for one request.
MAX_REPORTED_ERRORS = 50


def validation_error_body(errors: Sequence[Any]) -> dict[str, Any]:
    """The 422 body: our error shape (first field and all messages) plus FastAPI's ``detail``;
    the first :data:`MAX_REPORTED_ERRORS` errors."""
    errors = [
        {**e, "input": _short_input(e["input"]),
         "msg": shorten(str(e.get("msg", "")), QUOTE_CHARS * 3)} if "input" in e
        else {**e, "msg": shorten(str(e.get("msg", "")), QUOTE_CHARS * 3)}
        for e in _json_safe(jsonable_encoder([dict(e) for e in errors[:MAX_REPORTED_ERRORS]]))
    ]
    fields = [dotted_field(e.get("loc", ())) for e in errors]
    messages = [
        f"{f}: {e.get('msg')}" if f else str(e.get("msg"))
        for f, e in zip(fields, errors, strict=True)
    ]
    body = error_body(
        "validation_error",
        "; ".join(messages) or "the request is invalid",
        fields[0] if fields else None,
        {"fields": list(dict.fromkeys(f for f in fields if f))},
    )
    body["detail"] = errors
    return body


async def _api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field, exc.details),
        status_code=exc.status_code,
        headers=exc.headers or None,
    )


async def _rift_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RiftError)
    return await _api_error_handler(request, from_rift_error(exc))


async def _store_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    return await _api_error_handler(request, from_store_error(exc))


async def _persistence_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PersistenceError)
    error = from_persistence_error(exc)
    if error is None:
        return await _unexpected_error_handler(request, exc)
    return await _api_error_handler(request, error)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Imported here: api.spec_messages uses this module's helpers.
    from api.spec_messages import refine_request_errors, route_body_model

    errors = exc.errors()
    if not isinstance(exc, WordedValidationError):
        errors = refine_request_errors(errors, route_body_model(request.scope.get("route")),
                                       exc.body)
    return JSONResponse(validation_error_body(errors), status_code=422)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


_ROUTING_FIELDS = {404: "path", 405: "method"}


#: FastAPI's answer when reading a JSON body raised anything but a syntax error (bytes that are
#: not UTF-8, nesting past Python's recursion limit, a huge integer): a 400 naming nothing.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if (exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR
            and isinstance(exc.__cause__, ApiError)):
        # Raised while FastAPI read the body (api.content_encoding's decoding): its own answer.
        return await _api_error_handler(request, exc.__cause__)
    if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR and exc.__cause__:
        # Imported here: api.request_input uses this module's errors.
        from api.request_input import json_read_error

        reason = json_read_error(exc.__cause__)
        if reason is not None:  # worded as POST /v1/jobs, which parses its body itself, does
            return JSONResponse(validation_error_body([{
                "type": "json_invalid", "loc": ("body",),
                "msg": f"JSON decode error: {reason}"}]), status_code=422)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    # Starlette raises these for a URL no route matches (404) or a method the route lacks (405).
    field = _ROUTING_FIELDS.get(exc.status_code)
    headers = dict(exc.headers or {})
    details: dict[str, Any] = {}
    if exc.status_code == 404 and message == "Not Found":
        path = request.url.path
        meant = _path_meant(request)
        empty, last = _empty_parameter(request)
        # A trailing slash on a path that serves the method is most likely a slip (GET
        # /v1/jobs/); an empty segment inside the path never is.
        slip = last and meant is not None and _serves(request, meant, request.method)
        if empty is not None and not slip:
            # `$RIFT/v1/jobs/$JOB_ID/events` with JOB_ID unset: collapsing the slashes gave
            # /v1/jobs/events, an id of "events"; name the parameter left empty instead.
            message = (f"no route {quote(path)}: its path has an empty segment where "
                       f"{{{empty}}} goes (an empty variable in the URL?)")
            field = empty
        elif meant is not None:
            # No redirect (see create_app): name the path that exists instead.
            message = (f"no route {quote(path)}: the API's paths have no trailing or doubled "
                       f"slash; use {quote(meant)}")
            if empty is not None:
                message += f", or give {{{empty}}} (an empty variable in the URL?)"
            details["path_meant"] = meant
        elif (once := _version_given_twice(request)) is not None:
            # A base URL that ends in /v1 (RIFT_API_URL=http://host:8000/v1): the clients add
            # /v1 themselves, so every request of theirs was "no route '/v1/v1/jobs'".
            message = (f"no route {quote(path)}: /v1 is given twice; use {quote(once)} (a "
                       "client's base URL ends in /v1? give it without: the client adds /v1)")
            details["path_meant"] = once
        else:
            message = f"no route {quote(path)}: see /docs for the API's paths"
    if exc.status_code == 405 and message == "Method Not Allowed":
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = (f"{request.method} is not allowed on {quote(request.url.path)}; allowed: "
                   f"{', '.join(allowed)}")
    return JSONResponse(error_body(code, message, field, details), status_code=exc.status_code,
                        headers=headers)


def _path_meant(request: Request) -> str | None:
    """The request's path without its trailing slash and with doubled slashes made single,
    when that differs from the path and some route serves it (with any method); else None."""
    path = request.url.path
    meant = re.sub("/{2,}", "/", path)
    meant = meant.rstrip("/") or "/"
    if meant == path:
        return None
    return meant if _served(request, meant) else None


#: Put in an empty path segment to learn which path parameter it stands for: no id has it.
_EMPTY_SEGMENT = "rift-empty-segment"


def _empty_parameter(request: Request) -> tuple[str | None, bool]:
    """The path parameter an empty segment of the request's path stands where, when the path
    with that segment filled is a route of the request's method (``/v1/jobs//events`` and
    ``DELETE /v1/jobs/``: job_id), and whether that segment is the last. Else (None, False)."""
    segments = request.url.path.split("/")
    for index in range(1, len(segments)):
        if segments[index]:
            continue
        filled = "/".join([*segments[:index], _EMPTY_SEGMENT, *segments[index + 1:]])
        # The schema's path templates, not the router: FastAPI nests included routers in
        # private classes whose matches do not expose the path parameters.
        method = "get" if request.method == "HEAD" else request.method.lower()
        for template, operations in request.app.openapi()["paths"].items():
            if method not in operations:
                continue
            regex, _, _ = compile_path(template)
            found = regex.match(filled)
            if found is not None:
                names = [name for name, value in found.groupdict().items()
                         if value == _EMPTY_SEGMENT]
                if names:
                    return names[0], index == len(segments) - 1
    return None, False


def _version_given_twice(request: Request) -> str | None:
    """``/v1/jobs`` for a request to ``/v1/v1/jobs`` when some route serves it, else None."""
    path = request.url.path
    if not path.startswith("/v1/v1/"):
        return None
    once = path[len("/v1"):]
    return once if _served(request, once) else None


def _served(request: Request, path: str) -> bool:
    """Whether some route serves ``path`` with any method."""
    return bool(methods_at(request.app, {**request.scope, "path": path}))


def _serves(request: Request, path: str, method: str) -> bool:
    scope = {**request.scope, "path": path, "method": method}
    return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (:func:`api.route_methods.methods_at`,
    OPTIONS included). Starlette's own ``Allow`` names only the first route that matched the
    path, while each method is a route of its own here (``PUT /v1/jobs/{id}`` said
    ``Allow: GET`` although DELETE exists)."""
    return methods_at(request.app, request.scope)


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DataError):
        # A value the database refused (a check the API should have made first): the input's
        # fault, so a 422 rather than a 500, but logged so the missing check gets added.
        logger.warning("database refused a value in %s %s: %s", request.method,
                       request.url.path, exc)
        return JSONResponse(error_body("invalid_value", "a value in the request cannot be "
                                       "stored (unsupported characters or out of range)"),
                            status_code=422)
    if isinstance(exc, ProgrammingError) and not _is_missing_schema(exc):
        return await _unexpected_error_handler(request, exc)  # SQL the database refused: a bug
    what, code, message, field = _database_outage(exc)
    logger.error("%s in %s %s: %s", what, request.method, request.url.path, exc)
    return JSONResponse(error_body(code, message, field=field), status_code=503,
                        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def _database_outage(exc: Exception) -> tuple[str, str, str, str | None]:
    """What a database error that is no one's input says: the log's words, and the 503's code,
    message and blamed setting. Each case says what the operator must look at, since "cannot be
    reached" sent them looking for a network fault where the database answered."""
    if _is_missing_schema(exc):
        # The database was swapped or downgraded under the running API (it checks at start).
        return ("database schema not current", "database_schema_outdated",
                "the database schema does not match this version of the service; an operator "
                "must migrate it (see /readyz)", None)
    if isinstance(exc, PoolTimeout):
        # The database answers, but too slowly for this process's load: every pooled connection
        # stayed taken for the pool's whole wait.
        return ("database connection pool exhausted", "database_unavailable",
                "every database connection of this API process is in use (the database is "
                "answering slowly); retry later", None)
    if _is_database_disk_full(exc):
        # The database answers but cannot grow: the disk under DATABASE_URL is the one to free.
        return ("database disk full", "database_full",
                "the disk holding the database (DATABASE_URL) is full: nothing can be recorded "
                "until an operator frees space; retry later", "DATABASE_URL")
    if _is_sqlite_locked(exc):
        # Another process (a worker's commit, a migration, an operator's sqlite3 shell) held
        # the embedded database's write lock for the whole busy timeout.
        return ("database locked", "database_busy",
                "another process held the SQLite database's write lock longer than "
                "DATABASE_LOCK_TIMEOUT_SECONDS; retry later", "DATABASE_LOCK_TIMEOUT_SECONDS")
    return ("database unavailable", "database_unavailable",
            "the database cannot be reached; retry later", None)


#: Postgres' "undefined table" and "undefined column"; SQLite says it in words.
_MISSING_SCHEMA_SQLSTATES = ("42P01", "42703")


def _is_missing_schema(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in _MISSING_SCHEMA_SQLSTATES:
        return True
    # sqlite3 raises these as OperationalError.
    return str(orig).startswith(("no such table", "no such column"))


#: Postgres' "disk full" (SQLSTATE class 53 "insufficient resources"); SQLite says it in words
#: (SQLITE_FULL).
_DISK_FULL_SQLSTATE = "53100"


def _is_database_disk_full(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    return (getattr(orig, "sqlstate", None) == _DISK_FULL_SQLSTATE
            or str(orig).startswith("database or disk is full"))


def _is_sqlite_locked(exc: Exception) -> bool:
    # sqlite3 says "database is locked" (SQLITE_BUSY) once its busy timeout has passed.
    return str(getattr(exc, "orig", None)).startswith("database is locked")


async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: log it with the traceback; the client only learns that it happened.
    logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "an unexpected error occurred; it has been logged"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the documented JSON shape."""
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RiftError, _rift_error_handler)
    app.add_exception_handler(StoreError, _store_error_handler)
    app.add_exception_handler(PersistenceError, _persistence_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    # PoolTimeout: every pooled connection is taken (a database too slow to give them back).
    for database_error in (DataError, OperationalError, InterfaceError, ProgrammingError,
                           PoolTimeout):
        app.add_exception_handler(database_error, _database_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)
