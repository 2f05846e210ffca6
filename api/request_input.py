"""What every ``/v1`` request's input must satisfy before a route sees it, in one place.

- **JSON bodies** are parsed strictly (no NaN/Infinity, no NUL or lone surrogates in strings, which
  Postgres cannot store and the database driver cannot even encode), and a route that takes a JSON
  body refuses any other content type with a 415 naming it. ``POST /v1/jobs`` reads its body
  itself and calls :func:`parse_json` directly; every other route with a JSON body gets these
  rules from :func:`check_request_input`, a dependency of the whole ``/v1`` router, so a new
  route cannot miss them.
- **Query parameters** must be ones the route declares (a typo such as ``?stauts=failed`` would
  otherwise list every job as if unfiltered), hold a value (``?status=`` listed every job), and
  one that takes a single value may be given once (``?limit=1&limit=50`` would otherwise
  silently use the last); a boolean one (``?force=``, ``?redirect=``) takes ``true`` or ``false``
  in any letter case, nothing else (422 ``invalid_boolean``), and an integer one (``?limit=``,
  ``?after=``) decimal digits only (422 ``invalid_integer``: ``1_0`` was read as 10).
- **Path parameters** holding NUL cannot name any stored resource: a 404 naming the parameter,
  answered before the value reaches the database (which would refuse it with an error that can
  name no field).
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from typing import Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header

from api.errors import (
    InvalidInput,
    NotFound,
    UnsupportedMediaType,
    WordedValidationError,
    quote,
    shorten,
)
from api.schemas import MAX_LABELS
from rift.repeats import repeated


def _invalid(loc: tuple[Any, ...], message: str, kind: str = "value_error") -> WordedValidationError:
    return WordedValidationError([{"type": kind, "loc": loc, "msg": message, "input": None}])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers the keys it was given more than once (JSON allows
    them; Python keeps the last value, so ``{"lr": 0.1, "lr": 0.2}`` silently ran at 0.2)."""

    repeated: list[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        made = cls(pairs)
        made.repeated = repeated(key for key, _ in pairs) if len(made) < len(pairs) else []
        return made


#: How deeply JSON objects and arrays may nest in a request body (a job spec nests 4 levels).
#: Deeper input is refused before anything walks it recursively; Python's parser itself stops
#: near 1,000 levels (``json_read_error`` words that refusal the same way).
MAX_JSON_DEPTH = 64


def _check_strings(value: Any, loc: tuple[Any, ...]) -> None:
    # NUL cannot be stored in Postgres text or JSONB; refuse it here with its location.
    if len(loc) > MAX_JSON_DEPTH:
        raise _invalid(loc[:1], f"JSON decode error: {TOO_DEEP}", "json_invalid")
    if isinstance(value, _JsonObject) and value.repeated:
        raise _invalid((*loc, value.repeated[0]),
                       "this key is given more than once in one object; give it once")
    if isinstance(value, str):
        if "\x00" in value:
            raise _invalid(loc, "text must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(loc, "text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, loc)
            _check_strings(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, (*loc, index))


TOO_DEEP = f"objects and arrays nest more than {MAX_JSON_DEPTH} levels deep"


def json_read_error(exc: BaseException) -> str | None:
    """Why a JSON body could not be read, in a client's words, for the errors Python's parser
    raises besides a syntax error (None: another error, not the body's fault)."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"the body is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at position "
                f"{exc.start}); JSON must be sent as UTF-8")
    if isinstance(exc, RecursionError):
        return TOO_DEEP
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        # Python's own advice ("use sys.set_int_max_str_digits()") means nothing to a client.
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return None


def syntax_error_message(reason: str, document: bytes | str | None, position: int) -> str:
    """"Expecting value at line 2, column 5": where a JSON syntax error is, as a person editing
    the text counts (the line and column are left out when the text is unknown)."""
    if isinstance(document, bytes):
        document = document.decode("utf-8", "replace")
    if not isinstance(document, str) or not 0 <= position <= len(document):
        return f"{reason} at character {position}"
    line = document.count("\n", 0, position) + 1
    column = position - document.rfind("\n", 0, position)
    return f"{reason} at line {line}, column {column}"


def parse_json(raw: bytes | str, loc: tuple[Any, ...]) -> Any:
    """Parse ``raw`` as strict JSON (UTF-8 bytes, no NaN/Infinity, no NUL or lone surrogates in
    strings, no key given twice in one object).

    Raises:
        WordedValidationError: (422) located at ``loc``.
    """
    try:
        if isinstance(raw, bytes):
            # json.loads guesses UTF-16 and UTF-32 from a bytes document's first bytes, so such
            # a body was read; JSON between systems is UTF-8 (RFC 8259 §8.1), as this API says
            # it takes. A leading byte order mark may be ignored (ibid.): "utf-8-sig" drops it.
            raw = raw.decode("utf-8-sig")
        value = json.loads(raw, parse_constant=_reject_constant,
                           object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise _invalid(loc, "JSON decode error: "
                       + syntax_error_message(exc.msg, exc.doc, exc.pos), "json_invalid") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = json_read_error(exc) or str(exc)
        raise _invalid(loc, f"JSON decode error: {reason}", "json_invalid") from None
    _check_strings(value, loc)
    return value


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header names JSON (``application/json`` or ``*/*+json``)."""
    if content_type is None:
        return False
    media_type = parse_options_header(content_type)[0].decode("latin-1")
    return media_type == "application/json" or media_type.endswith("+json")


def _not_json(content_type: str | None) -> UnsupportedMediaType:
    media_type = parse_options_header(content_type)[0].decode("latin-1") if content_type else ""
    named = quote(media_type) if media_type else "none"
    return UnsupportedMediaType(
        f"content type {named} is not accepted here: send application/json or no body",
        field="Content-Type")


def require_json_or_no_body(request: Request) -> None:
    """Refuse a body that is declared as something other than JSON on a route that takes JSON
    or nothing (a browser form POST, for one, is ``application/x-www-form-urlencoded`` or
    ``multipart/form-data``)."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json_media_type(content_type):
        raise _not_json(content_type)


JsonOrNoBody = Depends(require_json_or_no_body)


def _check_path_params(path_params: dict[str, Any]) -> None:
    for name, value in path_params.items():
        if isinstance(value, str) and "\x00" in value:
            code = f"{name.removesuffix('_id')}_not_found" if name.endswith("_id") else "not_found"
            raise NotFound(f"no resource with {name} {quote(value)}", field=name, code=code)


def _takes_several(annotation: Any) -> bool:
    # list[str], list[str] | None, ...: a parameter the client may repeat.
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_several(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) in (list, tuple, set, frozenset)


def _is_boolean(annotation: Any) -> bool:
    # bool, bool | None, Optional[bool]: a parameter that is a yes or a no.
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return len(args) == 1 and _is_boolean(args[0])
    return annotation is bool


def _is_integer(annotation: Any) -> bool:
    # int, int | None: a count or an id (``limit``, ``after``).
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return len(args) == 1 and _is_integer(args[0])
    return annotation is int


class _QueryParams(typing.NamedTuple):
    accepted: frozenset[str]
    repeatable: frozenset[str]
    boolean: frozenset[str]
    integer: frozenset[str]


def _query_params_of(route: APIRoute) -> _QueryParams:
    """The names the route accepts, those it accepts more than once and those that are booleans,
    over its dependencies too (a walk of a few dependants per request; routes are not hashable,
    so nothing is cached)."""
    names: set[str] = set()
    repeatable: set[str] = set()
    boolean: set[str] = set()
    integer: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        for field in dependant.query_params:
            names.add(field.alias)
            if _takes_several(field.field_info.annotation):
                repeatable.add(field.alias)
            if _is_boolean(field.field_info.annotation):
                boolean.add(field.alias)
            if _is_integer(field.field_info.annotation):
                integer.add(field.alias)
        pending.extend(dependant.dependencies)
    return _QueryParams(frozenset(names), frozenset(repeatable), frozenset(boolean),
                        frozenset(integer))


#: The words a boolean query parameter takes, in any letter case (Python's ``requests`` sends
#: ``True``). Pydantic alone also took ``1``, ``yes``, ``on``, ``t``, ``y`` and their opposites:
#: one spelling per meaning keeps ``?force=no`` or ``?redirect=0`` from being read as a guess.
BOOLEAN_WORDS = ("true", "false")


def _check_boolean(name: str, value: str) -> None:
    if value.lower() not in BOOLEAN_WORDS:
        raise InvalidInput(f"the query parameter {quote(name)} takes true or false, not "
                           f"{quote(value)}", field=name, code="invalid_boolean",
                           details={"accepted": list(BOOLEAN_WORDS)})


#: How an integer query parameter is written: ASCII digits, a minus sign allowed (the route's
#: range then names the bound). Pydantic alone also read "1_0" as 10, and " 1", "+1" and "1.0"
#: as 1, so a value mangled on its way (a template, a float formatted) was used as a guess.
_INTEGER = re.compile(r"-?[0-9]+")


def _check_integer(name: str, value: str) -> None:
    if not _INTEGER.fullmatch(value):
        # Worded as the other 422s on what was sent ("got the text ...").
        sent = json.dumps(shorten(value, 40), ensure_ascii=False)
        raise InvalidInput(f"the query parameter {quote(name)} takes a whole number in decimal "
                           f"digits (like 20); got the text {sent}", field=name,
                           code="invalid_integer")


#: How many times a parameter that may repeat (``status``, ``label``, ``expand``) may be given:
#: a job has at most MAX_LABELS labels, so more label conditions than that can match no job.
MAX_REPEATED_VALUES = MAX_LABELS


def _check_query_params(request: Request, route: APIRoute) -> None:
    accepted, repeatable, boolean, integer = _query_params_of(route)
    for name in dict.fromkeys(request.query_params.keys()):
        if name not in accepted:
            raise InvalidInput(
                f"unknown query parameter {quote(name)}; this route accepts "
                f"{', '.join(sorted(accepted)) or 'none'}", field=name, code="unknown_parameter")
        values = request.query_params.getlist(name)
        if any(not value.strip() for value in values):
            # "?status=" listed every job as if unfiltered; no parameter has a meaning for
            # nothing, so leaving one empty is a mistake (a form field left blank, a variable
            # that expanded to nothing), never a request for the default.
            raise InvalidInput(f"the query parameter {quote(name)} is empty; give it a value "
                               "or leave it out", field=name, code="empty_parameter")
        count = len(values)
        if count > MAX_REPEATED_VALUES:
            # Each value becomes a condition of one SQL statement: thousands made it too large
            # for the database, a 503 that blamed the database for the request's size.
            raise InvalidInput(f"the query parameter {quote(name)} is given {count} times; at "
                               f"most {MAX_REPEATED_VALUES}", field=name,
                               code="repeated_parameter",
                               details={"limit": MAX_REPEATED_VALUES})
        if count > 1 and name not in repeatable:
            raise InvalidInput(f"the query parameter {quote(name)} is given {count} times; it "
                               "takes one value", field=name, code="repeated_parameter")
        for value in values:
            if name in boolean:
                _check_boolean(name, value)
            elif name in integer:
                _check_integer(name, value)


async def check_request_input(request: Request) -> None:
    """The rules of the module docstring, for the route the request was matched to."""
    _check_path_params(request.path_params)
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    _check_query_params(request, route)
    if route.body_field is None:
        return
    body = await request.body()  # FastAPI has read it already: this is its cached copy
    content_type = request.headers.get("content-type")
    # A body without a Content-Type is not known to be JSON either.
    if (content_type is not None or body) and not is_json_media_type(content_type):
        raise _not_json(content_type)
    if body:
        parse_json(body, ("body",))
