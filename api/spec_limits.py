"""The service's bounds on a job spec, beyond what the library accepts.

``rift.config`` allows what a researcher might run by hand (``epochs`` up to 1000,
``attack.steps`` up to 1000, a million MRC examples); a shared service bounds every field so one
request cannot hold a worker for days, and bounds every list and string so a request cannot
store or echo megabytes. The cost estimate (``persistence/cost.py``) then bounds the product of
the fields. The numbers, and why:

- ``finetune.epochs`` <= 200: the paper fine-tunes for 10; 200 leaves room for long schedules.
- ``attack.steps``, ``mrc.steps`` <= 200: PGD-10/PGD-20 are the usual; 200 is a strong attack.
- ``mrc.num_examples`` <= 100,000: the paper uses 1,024 (docs/algorithm.md).
- batch sizes (``mrc``, ``finetune``, ``evaluation``) from 8 to 8,192: below 8 the per-step
  overhead, which the estimate does not count, dominates; above 8,192 no GPU we run holds it.
- ``interpolation.alpha_step`` >= 0.01: at most 101 points on the curve.
- a sweep: at most 16 (module, lr) candidates (``finetune.candidates`` modules, 1 when
  ``finetune.module`` is named, times the rates of ``finetune.lr_grid``): each is a fine-tune
  and a whole interpolation curve, and the paper's Fig. C.5 compares a handful.
- every list (``mrc.include``, ``exclude``, ``modules``, ``lr_milestones``, ``mean``, ``std``):
  at most 256 items; every string in the config: at most 200 characters (``dataset.path`` and
  ``root`` are refused anyway). Labels: at most 32, keys <= 64, values <= 255 (schemas.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from persistence.cost import sweep_size
from rift.config import RiftConfig

MAX_LIST_ITEMS = 256
MAX_STRING_CHARS = 200
MAX_SWEEP_CANDIDATES = 16

#: (path inside the config, lowest allowed, highest allowed); None: no bound on that side.
FIELD_BOUNDS: tuple[tuple[tuple[str, ...], float | None, float | None], ...] = (
    (("finetune", "epochs"), None, 200),
    (("attack", "steps"), None, 200),
    (("mrc", "steps"), None, 200),
    (("mrc", "num_examples"), None, 100_000),
    (("mrc", "batch_size"), 8, 8192),
    (("finetune", "batch_size"), 8, 8192),
    (("evaluation", "batch_size"), 8, 8192),
    (("interpolation", "alpha_step"), 0.01, None),
    (("finetune", "candidates"), None, MAX_SWEEP_CANDIDATES),
)


def _integer_setting(path: tuple[str, ...]) -> bool:
    """Whether the library's schema types the setting at ``path`` as an integer."""
    model: type[BaseModel] = RiftConfig
    for part in path[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), path
        model = annotation
    return model.model_fields[path[-1]].annotation is int


#: The bounded settings that take whole numbers, read from the schema.
INTEGER_FIELDS = frozenset(path for path, _, _ in FIELD_BOUNDS if _integer_setting(path))


def _walk(value: Any, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        yield loc, f"text of at most {MAX_STRING_CHARS} characters"
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            yield loc, f"a list of at most {MAX_LIST_ITEMS} items"
        else:
            for index, item in enumerate(value):
                yield from _walk(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*loc, key))


def _lookup(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = config
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _sweep_errors(config: dict[str, Any], loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    finetune = config.get("finetune")
    if not isinstance(finetune, dict) or not isinstance(finetune.get("lr_grid"), list):
        return []  # without a grid, the bound on finetune.candidates says it all
    size = sweep_size(config)
    if size <= MAX_SWEEP_CANDIDATES:
        return []
    return [{"type": "less_than_equal", "loc": (*loc, "finetune", "lr_grid"),
             "msg": f"this service runs at most {MAX_SWEEP_CANDIDATES} (module, lr) candidates "
                    f"per sweep; finetune.candidates × len(lr_grid) is {size}",
             "input": None}]


def service_bound_errors(config: dict[str, Any], loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Where a config (as JSON) passes the service's bounds: one pydantic-style error per field
    at fault, located under ``loc`` (the caller reports them with the schema's own, as a 422)."""
    errors: list[dict[str, Any]] = []
    for path, low, high in FIELD_BOUNDS:
        value = _lookup(config, path)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if isinstance(value, float) and path in INTEGER_FIELDS:
            # The schema refuses it and says what to write ("write 16" for 16.0); the bound
            # alone sent 3.5 batches to "at least 8", and 8.0 then to "write 8".
            continue
        if high is not None and value > high:
            errors.append({"type": "less_than_equal", "loc": (*loc, *path),
                           "msg": f"this service allows at most {high:g}", "input": value})
        if low is not None and value < low:
            errors.append({"type": "greater_than_equal", "loc": (*loc, *path),
                           "msg": f"this service requires at least {low:g}", "input": value})
    errors.extend(_sweep_errors(config, loc))
    for where, what in _walk(config, loc):
        errors.append({"type": "too_long", "loc": where, "msg": f"this service allows {what}",
                       "input": None})
    return errors
