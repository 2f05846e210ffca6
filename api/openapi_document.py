"""The OpenAPI document as a client generator reads it: the answers FastAPI cannot see declared.

Teams that generate a client (TypeScript, Go, Java) from ``GET /openapi.json`` get only what the
document says. FastAPI's own document left them three traps:

- Operation ids such as ``read_job_v1_jobs__job_id__get`` (the function name, the path and the
  method): generated methods took those names, and they change whenever a path does. Here an
  operation's id is its function's name (``read_job``; a ``_route`` suffix, there to avoid a
  clash with the function it calls, is dropped).
- Error answers: every 4xx/5xx body is ``{"error": {"code", "message", "field", ...}}``
  (:mod:`api.errors`), but the document gave 422 FastAPI's ``{"detail": [...]}`` shape
  (``HTTPValidationError``, which no answer has), no schema to the other declared errors, and
  did not list the refusals every keyed route can give (401, 403, 406, 429, 503) nor the 404 of
  an unknown id, the 400/413/415 of a body, the 400 of a cursor of
  another list. A generated client threw "unexpected status" or failed
  to decode them. Here each is declared with :class:`ErrorOut`.
- Headers: the ``Location`` of a 201/202, the ``Retry-After`` of a 429/503, the
  ``WWW-Authenticate`` of a 401/403 and the ``ETag`` (and 304) of a JSON GET were sent but not
  declared, so generated clients gave no access to them.
- Downloads, ``/metrics`` and the event stream had media types without a schema, from which
  generators make a method returning nothing; they are declared as (binary) strings.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

_REF = "#/components/schemas/{model}"
_JSON = "application/json"


class ErrorDetail(BaseModel):
    """What went wrong. Some errors add keys beside the three (a 403's ``required_scope``, a
    422's ``fields``, a checkpoint mismatch's ``missing`` and ``unexpected``)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable machine-readable code; clients branch on it "
                                  "(e.g. not_found, validation_error, rate_limited).")
    message: str = Field(description="What is wrong and how to fix it.")
    field: str | None = Field(description="The request field, parameter, header or limit at "
                                          "fault (dotted, e.g. config.attack.eps), or null.")


class ErrorOut(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail
    detail: list[dict[str, Any]] | None = Field(
        default=None, description="422 only: FastAPI's validation errors, whose loc names "
                                  "each bad field.")


def operation_id(route: APIRoute) -> str:
    """An operation's id: its function's name, stable across path changes."""
    return route.name.removesuffix("_route")


def _header(description: str, schema: dict[str, Any], *, always: bool) -> dict[str, Any]:
    # required: every such answer carries it, so a generated client types it as present.
    return {"description": description, "required": always, "schema": schema}


_RETRY_AFTER = _header("Seconds to wait before retrying.", {"type": "integer", "minimum": 0},
                       always=True)
_CHALLENGE = _header("The Bearer challenge (RFC 6750 §3).", {"type": "string"}, always=True)
_LOCATION = _header("The URL of the created resource (or of what to follow).", {"type": "string"},
                    always=True)
# Not always: a JSON answer streamed in parts is sent untagged (api.json_validators).
_ETAG = _header("Strong validator of the answer; send it back in If-None-Match for a 304.",
                {"type": "string"}, always=False)

#: Refusals any keyed route (every /v1 route but the probes) can give, before its own code runs:
#: api.auth (401, 403, 429), api.accept (406), the database or broker down (503).
_Declared = tuple[str, dict[str, Any]]  # a response's description and headers
_KEYED: dict[str, _Declared] = {
    "401": ("No API key, or one that is unknown or revoked",
            {"WWW-Authenticate": _CHALLENGE}),
    "403": ("The API key lacks the scope this route needs (error.required_scope)",
            {"WWW-Authenticate": _CHALLENGE}),
    "406": ("Accept rules out every type this route answers with", {}),
    "429": ("Over the key's request rate or the project's limit", {"Retry-After": _RETRY_AFTER}),
    "503": ("A dependency (database, broker, object store) is down; retry later",
            {"Retry-After": _RETRY_AFTER}),
}
_NOT_FOUND: _Declared = ("No such resource (error.field names the path parameter)", {})
_OTHER_CURSOR: _Declared = ("A cursor of another list (error.field: cursor)", {})
_INVALID: _Declared = ("Invalid input (error.field names it; detail lists every error)", {})
_BODY: dict[str, _Declared] = {"400": ("A malformed or truncated body, or one whose "
                                       "Content-Encoding cannot be decoded", {}),
                               "413": ("The body is over its size limit", {}),
         "415": ("Content-Type is not one this route reads", {})}


#: Conditional request headers the API reads (api.write_conditions, api.json_validators,
#: api.conditional) but that no route declares: without them, a generated client cannot send one.
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "Only if the resource's current ETag is one of these (else 412)."}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False,
                  "schema": {"type": "string"},
                  "description": "An ETag of an earlier answer: 304 while it is current."}

_RANGE = {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "bytes=a-b (several ranges: comma-separated): 206, or 416 outside."}
_IF_RANGE = {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "A strong ETag or Last-Modified date: the ranges only while it holds."}


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name", "").lower() == parameter["name"].lower() for p in parameters):
        parameters.append(dict(parameter))


def _add(responses: dict[str, Any], status: str, description: str,
         headers: dict[str, Any]) -> None:
    response = responses.setdefault(status, {"description": description})
    if headers:
        response.setdefault("headers", {}).update(headers)


def _complete_operation(method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if operation.get("security"):
        for status, (description, headers) in _KEYED.items():
            _add(responses, status, description, headers)
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "path" for p in parameters):
        _add(responses, "404", *_NOT_FOUND)
    if "requestBody" in operation:
        for status, (description, headers) in _BODY.items():
            _add(responses, status, description, headers)
    # A keyed route refuses unknown query parameters too (api.request_input), so even one
    # that declares none (GET /v1/usage) can answer 422.
    if parameters or "requestBody" in operation or operation.get("security"):
        _add(responses, "422", *_INVALID)
    if any(p.get("name") == "cursor" for p in parameters):
        _add(responses, "400", *_OTHER_CURSOR)
    for status, response in responses.items():
        for media, entry in response.get("content", {}).items():
            if not entry.get("schema") and media != _JSON:
                # A download, a metrics page or an event stream: without a schema a generator
                # makes a method that returns nothing; binary, it returns the bytes.
                entry["schema"] = {"type": "string"} if media.startswith("text/") else \
                    {"type": "string", "format": "binary"}
        # The 200 of a creating POST is an Idempotency-Key replay: it carries Location too.
        if status in ("201", "202") or (status == "200" and method == "post" and "201" in responses):
            response.setdefault("headers", {}).setdefault("Location", _LOCATION)
        if status == "401":  # /metrics' too (RFC 9110 §15.5.2: a 401 carries one)
            response.setdefault("headers", {}).setdefault("WWW-Authenticate", _CHALLENGE)
        if status.startswith(("4", "5")):
            content = response.get("content", {})
            schema = content.get(_JSON, {}).get("schema", {})
            # FastAPI's own 422 shape, which no answer has, or an error declared without a body.
            if not content or schema.get("$ref", "").endswith("/HTTPValidationError"):
                response["content"] = {_JSON: {"schema": {"$ref": _REF.format(model="ErrorOut")}}}
    ok = responses.get("200", {})
    if method == "get" and _JSON in ok.get("content", {}):
        # api.json_validators: every JSON answer to a GET is tagged, and 304 to If-None-Match.
        ok.setdefault("headers", {}).setdefault("ETag", _ETAG)
        _add(responses, "304", "Not modified: If-None-Match names the current ETag",
             {"ETag": _ETAG})
    if "304" in responses:
        _add_parameter(operation, _IF_NONE_MATCH)
    if "412" in responses:
        _add_parameter(operation, _IF_MATCH)
    if "206" in responses:
        _add_parameter(operation, _RANGE)
        _add_parameter(operation, _IF_RANGE)


def complete_document(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the error answers and headers above declared (changed in place)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorOut.model_json_schema(ref_template=_REF)
    for name, member in error.pop("$defs", {}).items():
        schemas[name] = member
    schemas["ErrorOut"] = error
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            _complete_operation(method, operation)
    # Now referenced by nothing: left in, a generator makes types no answer has.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def install_document_completion(app: FastAPI) -> None:
    """Serve :func:`complete_document` of the app's document at ``/openapi.json``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        app.openapi_schema = complete_document(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
