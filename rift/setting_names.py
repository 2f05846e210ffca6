"""Which settings a section of a pydantic model has, and the one a mistyped key most likely meant.

Shared by the CLI (``python -m rift run``) and the REST API, so that ``finetune.lrr`` gets the same
"did you mean 'lr'?" wherever the config is given, and a number sent as text ("0.01") or an
integer sent as 2.0 the same "write numbers without quotes" / "write 2" (:func:`number_hint`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models anywhere in a field's type (``X``, ``X | None``, ``list[X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _model_types(arg)]


def settings_at(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The setting names of the section that holds the last key of ``path`` (sorted).

    ``path`` is a pydantic error location under ``model``: list indices and union-member tags
    (``function-after[_ordered(), DomainBounds]``) are stepped over. ``("finetune", "lrr")`` →
    FinetuneSpec's fields; ``[]`` when the section is not a model (a dict of labels, a union of
    several models).
    """
    for key in path[:-1]:
        if not isinstance(key, str) or not key.isidentifier():
            continue
        field = model.model_fields.get(key)
        models = _model_types(field.annotation) if field is not None else []
        if len(models) != 1:
            return []
        model = models[0]
    return sorted(model.model_fields)


def closest_setting(name: str, known: Sequence[str]) -> str | None:
    """The known name ``name`` was most likely meant to be (case and ``-`` ignored), or None."""
    folded = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(name.lower().replace("-", "_"), list(folded), n=1,
                                        cutoff=0.6)
    return folded[matches[0]] if matches else None


def _folded(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "").replace(" ", "")


def closest_choice(value: str, choices: Sequence[str]) -> str | None:
    """The choice ``value`` was most likely meant to be (``"cifar-10"`` → ``"cifar10"``,
    ``"Digits"`` → ``"digits"``; case, ``-``, ``_`` and spaces ignored), or None."""
    folded: dict[str, str] = {}
    for choice in choices:
        folded.setdefault(_folded(choice), choice)
    if _folded(value) in folded:
        return folded[_folded(value)]
    matches = difflib.get_close_matches(_folded(value), list(folded), n=1, cutoff=0.75)
    return folded[matches[0]] if matches else None


#: Error types of a value that must be one of a list of choices (a Literal, an Enum).
CHOICE_ERROR_TYPES = frozenset({"literal_error", "enum"})
#: One choice in pydantic's ``expected`` text: "'cifar10', 'cifar100' or 'svhn'".
_QUOTED_CHOICE = re.compile(r"'((?:[^'\\]|\\.)*)'")


def choice_suggestion(value: Any, error_type: str, ctx: Mapping[str, Any] | None) -> str:
    """"; did you mean 'cifar10'?" for a pydantic choice error (``error_type``, its ``ctx``)
    whose text ``value`` is close to one of the choices (:func:`closest_choice`), else "".
    The API's 422s and ``python -m rift run`` word a mistyped choice with it."""
    if error_type not in CHOICE_ERROR_TYPES or not isinstance(value, str):
        return ""
    choices = _QUOTED_CHOICE.findall(str((ctx or {}).get("expected", "")))
    guess = closest_choice(value, choices)
    return f"; did you mean {guess!r}?" if guess is not None and guess != value else ""


def unknown_setting_message(name: str, known: Sequence[str]) -> str:
    """"unknown setting 'lrr'; did you mean 'lr'?" (or the known names when none is close)."""
    guess = closest_setting(name, known)
    if guess is not None:
        return f"unknown setting {name!r}; did you mean {guess!r}?"
    return f"unknown setting {name!r}" + (f"; known: {', '.join(known)}" if known else "")


#: pydantic error types where a number written as text, or 2.0 for 2, is the likely mistake.
NUMBER_ERROR_TYPES = frozenset({"int_type", "float_type", "literal_error"})


def _is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def number_hint(value: Any, kind: str) -> str:
    """How to write ``value`` where a strict parse refused it with error type ``kind``: "write
    numbers without quotes" for a number sent as text, "write 2" for 2.0 where an integer is
    wanted; "" when neither applies."""
    if isinstance(value, str) and kind in NUMBER_ERROR_TYPES and _is_number_text(value):
        return "write numbers without quotes"
    if (kind == "int_type" and isinstance(value, float) and value.is_integer()
            and abs(value) < 1e15):
        return f"write {int(value)}"
    return ""
