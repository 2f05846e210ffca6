"""The messages of a job spec's 422: pydantic's errors made to say what a user needs to fix it.

- An unknown key names the setting it most likely meant (``finetune.lrr``: "did you mean 'lr'?"),
  not only pydantic's "Extra inputs are not permitted".
- A wrong value says what was sent: ``"lr": "0.01"`` is "Input should be a valid number; got
  the text "0.01" (write numbers without quotes)", ``"epochs": 2.0`` "...; got the number 2.0
  (write 2)". Strict parsing refuses them, and "Input should be a valid number" alone reads as
  nonsense to someone who typed 0.01.
- A section's check that is about one of its settings names it (``config.architecture.std``,
  ``config.mrc.steps`` where ``protocol: "reference"`` sets it otherwise), not the section.
- A union setting (``attack.domain``: a name or bounds) answers for the member the value was
  meant as: an object is checked as bounds only, text as a name only, instead of both members'
  errors side by side.

The answer echoes at most a short scalar of the input, never an object or a list.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel

from api.errors import MAX_REPORTED_ERRORS, shorten
from rift.config import SettingValueError
from rift.setting_names import (
    choice_suggestion,
    number_hint,
    settings_at,
    unknown_setting_message,
)

_SHOWN_CHARS = 40
#: Error types that mean "the value is not a member of this kind": their message gains what was sent.
_NO_ECHO_TYPES = frozenset({"missing", "extra_forbidden"})
_VALUE_ERROR_PREFIX = "Value error, "
def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and "[" in part and not part.isidentifier()


def _sent(value: Any, kind: str, *, text_only: bool = False) -> str | None:
    """What was sent, in JSON's words, or None for an object or a list (never echoed); with a
    hint where a number was sent the way the setting does not take it (not for ``text_only``
    input, a query parameter or header, where every value is text)."""
    hint = "" if text_only and isinstance(value, str) else number_hint(value, kind)
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        hint = "beyond the range of a 64-bit floating-point number"
    hint = f" ({hint})" if hint else ""
    if isinstance(value, bool):
        return f"got {json.dumps(value)}"
    if isinstance(value, str):
        return f"got the text {json.dumps(shorten(value, _SHOWN_CHARS), ensure_ascii=False)}{hint}"
    if isinstance(value, int | float):
        return f"got the number {shorten(repr(value), _SHOWN_CHARS)}{hint}"
    if value is None:
        return "got null"
    return None


def _union_prefix(loc: Sequence[Any]) -> tuple[Any, ...] | None:
    """The location of the union setting an error's member belongs to (None: no union)."""
    for index, part in enumerate(loc):
        if _is_union_tag(part):
            return tuple(loc[:index])
    return None


def _off_branch(error: dict[str, Any], unions: Counter[tuple[Any, ...] | None]) -> bool:
    """Whether ``error`` is a union member's that the value was plainly not meant as (the name
    member for an object, the object member for text) while other errors hold the other
    member's (``unions``: how many errors each union setting has)."""
    prefix = _union_prefix(error["loc"])
    if prefix is None or unions[prefix] < 2:
        return False
    value = error.get("input")
    if isinstance(value, dict):
        return bool(error["type"] == "literal_error")
    if isinstance(value, str):
        return error["type"] in ("model_type", "dict_type")
    return False


def refine_errors(errors: Sequence[Any], model: type[BaseModel] | None, *,
                  text_only: bool = False) -> list[dict[str, Any]]:
    """``errors`` (pydantic's, with their input, located under ``model``; None: not in a body,
    so no unknown key) with the messages above, and without their input. ``text_only``: the
    input is a query parameter's or header's text (see :func:`_sent`). At most
    :data:`~api.errors.MAX_REPORTED_ERRORS`, the most an answer shows: wording each of 40,000
    unknown keys (a "did you mean" search each) took seconds."""
    refined: list[dict[str, Any]] = []
    # Counted once: comparing each error with every other was quadratic in the errors.
    unions = Counter(_union_prefix(error["loc"]) for error in errors)
    for original in errors:
        if len(refined) >= MAX_REPORTED_ERRORS:
            break
        if _off_branch(original, unions):
            continue
        error = dict(original)
        ctx = error.pop("ctx", None) or {}
        reason = ctx.get("error")
        if isinstance(reason, SettingValueError):  # a model check naming one of its settings
            error["loc"] = (*error["loc"], *reason.setting)
        loc = tuple(error["loc"])
        value = error.pop("input", None)
        if error["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str) \
                and model is not None:
            error["msg"] = unknown_setting_message(loc[-1], settings_at(model, loc))
        elif error["type"] not in _NO_ECHO_TYPES:
            if str(error["msg"]).startswith(_VALUE_ERROR_PREFIX):  # pydantic's, says nothing
                error["msg"] = str(error["msg"])[len(_VALUE_ERROR_PREFIX):]
            sent = _sent(value, error["type"], text_only=text_only)
            if sent is not None:
                guess = choice_suggestion(value, error["type"], ctx)
                error["msg"] = f"{error['msg']}; {sent}{guess}"
        refined.append(error)
    return refined


def route_body_model(route: object) -> type[BaseModel] | None:
    """The pydantic model a route reads its JSON body as (None: it reads none, or reads it
    itself, as ``POST /v1/jobs`` does)."""
    if not isinstance(route, APIRoute) or route.body_field is None:
        return None
    annotation = route.body_field.field_info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


#: The parts of a request FastAPI validates, as the first entry of an error's ``loc``.
_TEXT_SOURCES = ("query", "header", "path", "cookie")


def refine_request_errors(errors: Sequence[Any], model: type[BaseModel] | None,
                          document: Any = None) -> list[dict[str, Any]]:
    """``errors`` of a request validated by FastAPI (``loc`` starting with ``"body"``,
    ``"query"``, ...) refined as a job spec's are (:func:`refine_errors`), so that every route
    names the key an unknown one likely meant, says what was sent and suggests the closest
    choice; ``model`` is the route's body model (None: it reads no body), ``document`` the
    body's text where it was not JSON (to say where a syntax error is)."""
    from api.request_input import syntax_error_message  # it imports api.errors, as this does

    refined: list[dict[str, Any]] = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        loc = tuple(error.get("loc", ()))
        source, rest = (loc[0], loc[1:]) if loc else ("", ())
        if error.get("type") == "json_invalid" and source == "body":
            # FastAPI puts the character offset where a field goes ("16: JSON decode error")
            # and the reason in ctx: worded as POST /v1/jobs words it.
            reason = str((error.get("ctx") or {}).get("error") or "not JSON")
            if rest and isinstance(rest[0], int):
                reason = syntax_error_message(reason, document, rest[0])
            refined.append({"type": "json_invalid", "loc": ("body",),
                            "msg": f"JSON decode error: {reason}"})
            continue
        if source == "body" and rest:
            inner = refine_errors([{**error, "loc": rest}], model)
        elif source in _TEXT_SOURCES:
            inner = refine_errors([{**error, "loc": rest}], None, text_only=True)
        else:  # the whole body (missing, not an object): pydantic's words say it
            refined.append(dict(error))
            continue
        refined.extend({**item, "loc": (source, *item["loc"])} for item in inner)
    return refined
