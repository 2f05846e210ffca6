"""Which settings a section of a pydantic model has, and the one a mistyped key most likely meant.

Shared by the CLI (``python -m rift run``), the library's dict configs (``rift.config.as_config``)
and the REST API, so that ``finetune.lrr`` gets the same "did you mean 'lr'?" wherever the config
is given, and a number sent as text ("0.01") or an integer sent as 2.0 the same "write numbers
without quotes" / "write 2" (:func:`number_hint`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import ErrorDetails


class SettingValueError(ValueError):
    """A model check's error about one setting of the section it checks (``setting``: the path
    from that section, e.g. ``("std",)`` or ``("mrc", "steps")``), so that the API and the CLI
    name ``config.architecture.std``, not only ``config.architecture``."""

    def __init__(self, message: str, *setting: str | int) -> None:
        super().__init__(message)
        self.setting = setting


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


#: Names other tools give a setting, which no spelling distance leads to: torchattacks' PGD
#: calls the step size ``alpha``, optimisers take ``learning_rate``/``wd``, papers say
#: "radius". Suggested only where the setting they point to exists (``alpha`` is the attack's
#: step size, but near ``interpolation.alpha_step`` the spelling rule answers).
SETTING_ALIASES: dict[str, str] = {
    "learning_rate": "lr", "lrs": "lr_grid", "lr_list": "lr_grid", "learning_rates": "lr_grid",
    "wd": "weight_decay", "bs": "batch_size", "alpha": "step_size", "radius": "eps",
    "iterations": "steps", "iters": "steps", "norm": "p", "model": "architecture",
    "arch": "architecture",
}


def closest_setting(name: str, known: Sequence[str]) -> str | None:
    """The known name ``name`` was most likely meant to be (case and ``-`` ignored; another
    tool's name for it, :data:`SETTING_ALIASES`), or None."""
    alias = SETTING_ALIASES.get(name.lower().replace("-", "_"))
    if alias is not None and alias in known:
        return alias
    folded = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(name.lower().replace("-", "_"), list(folded), n=1,
                                        cutoff=0.6)
    return folded[matches[0]] if matches else None


def _folded(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "").replace(" ", "")


#: The shortest abbreviation of a choice that is suggested ("va" could be many words).
MIN_ABBREVIATION_CHARS = 3


def closest_choice(value: str, choices: Sequence[str]) -> str | None:
    """The choice ``value`` was most likely meant to be (``"cifar-10"`` → ``"cifar10"``,
    ``"Digits"`` → ``"digits"``; case, ``-``, ``_`` and spaces ignored; ``"val"`` →
    ``"validation"``, the one choice it begins), or None."""
    folded: dict[str, str] = {}
    for choice in choices:
        folded.setdefault(_folded(choice), choice)
    if _folded(value) in folded:
        return folded[_folded(value)]
    # An abbreviation ("val" for 'validation', "ref" for 'reference') is too short for the
    # similarity ratio below; it names the one choice it begins, when only one does.
    starts = [choice for key, choice in folded.items()
              if len(_folded(value)) >= MIN_ABBREVIATION_CHARS and key.startswith(_folded(value))]
    if len(starts) == 1:
        return starts[0]
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
    # Only a number JSON can write: "inf", "NaN", "Infinity" and "1e999" parse as floats, but
    # unquoted they are no JSON at all (or an infinite number, refused), so "write numbers without
    # quotes" sent the user to another error; for mrc.p, "inf" in quotes is the right value.
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


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


def field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as the dotted setting name: union branch labels
    ("literal['auto','unit','none']", "function-after[...]") are left out, list items are [i]."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}" if path else part
    return path


def origin_key(path: str, origins: Mapping[str, str]) -> str:
    """The key of ``origins`` that set the setting at dotted ``path``: the longest flag or
    ``--set`` key holding it, else "" (the config file)."""
    given = [key for key in origins if key and (path == key or path.startswith(key + ".")
                                                or path.startswith(key + "["))]
    return max(given, key=len) if given else ""


def describe_errors(errors: list[ErrorDetails], model: type[BaseModel],
                    origins: Mapping[str, str] | None = None,
                    required_hints: Mapping[str, str] | None = None) -> tuple[str, str]:
    """One line naming every invalid setting of pydantic's ``errors`` (validating ``model``),
    what is wrong with it ("unknown setting 'epoch'; did you mean 'epochs'?", a mistyped choice's
    closest one) and where it was given, and the dotted path of the first. ``origins``: dotted
    setting or section → the flag or file that set it ("" for a config file, see
    :func:`origin_key`); ``required_hints``: section → what to give when it is missing."""
    origins = origins or {}
    messages: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for error in errors:
        reason = (error.get("ctx") or {}).get("error")
        if isinstance(reason, SettingValueError):  # a section's check naming one setting
            error["loc"] = (*error["loc"], *reason.setting)
        path = field_path(error["loc"])
        if error["type"] == "extra_forbidden":
            name = str(error["loc"][-1])
            text = unknown_setting_message(name, settings_at(model, error["loc"]))
        elif error["type"] == "missing":
            hint = (required_hints or {}).get(path)
            text = "required" + (f"; give {hint} or set it in --config" if hint else "")
        else:
            text = error["msg"].removeprefix("Value error, ")  # pydantic's, says nothing
            # A mistyped choice suggests the closest, in the API's words ("cifar-10": "did
            # you mean 'cifar10'?").
            text += choice_suggestion(error.get("input"), error["type"], error.get("ctx"))
            if "input" in error and not isinstance(error["input"], dict):
                shown = json.dumps(error["input"], ensure_ascii=False, default=str)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                hint = number_hint(error["input"], error["type"])
                inputs.setdefault(path, f"{shown}: {hint}" if hint else shown)
        texts = messages.setdefault(path, [])
        if text not in texts:
            texts.append(text)
    parts = []
    for path, texts in messages.items():
        origin = origins.get(origin_key(path, origins), "")
        details = []
        if path in inputs and not origin.startswith("--set"):  # a --set shows what was typed
            details.append(f"got {inputs[path]}")
        if origin and not all(text.startswith("required") for text in texts):
            details.append(f"from {origin}")
        parts.append(f"{path or 'config'}: {' or '.join(texts)}"
                     + (f" ({', '.join(details)})" if details else ""))
    return "invalid configuration: " + "; ".join(parts), next(iter(messages), "")
