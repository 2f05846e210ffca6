"""``api/errors.py``: every 4xx the API raises names the field, header or limit at fault, and a
persistence error is mapped once, to the answer its routes need.

The first test reads the source rather than sending requests: a 4xx answer whose ``field`` is
null could only be found by reaching each raise site over HTTP, and the 409s of deletion,
cancellation and the webhook limit were such sites (their answers over real HTTP are checked in
``tests/client/test_client.py::test_cancel_wait_and_delete`` and ``tests/api/test_webhooks.py``).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import api.errors as errors
from api.errors import ApiError, Conflict, NotFound, from_persistence_error
from persistence.jobs import ActiveJobLimitReached, JobAlreadyFinished
from persistence.materializations import JobNotSucceeded, MaterializationNotFound
from persistence.records import StorageQuotaReached
from persistence.webhooks import WebhookLimitReached, WebhookUrlTaken

API_ROOT = Path(__file__).resolve().parents[2] / "api"


def _client_error_classes() -> set[str]:
    """The 4xx ApiError classes whose constructor takes ``field`` from the caller (Unauthorized
    sets its own)."""
    names = set()
    for name, value in vars(errors).items():
        if (inspect.isclass(value) and issubclass(value, ApiError) and value is not ApiError
                and 400 <= value.status_code < 500 and "__init__" not in vars(value)):
            names.add(name)
    return names


def test_every_client_error_raised_in_the_api_names_a_field() -> None:
    classes = _client_error_classes()
    assert {"Conflict", "InvalidInput", "NotFound", "BadRequest"} <= classes
    unnamed = []
    for path in sorted(API_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else (
                node.func.attr if isinstance(node.func, ast.Attribute) else None)
            if called in classes and not any(k.arg == "field" for k in node.keywords):
                unnamed.append(f"{path.relative_to(API_ROOT.parent)}:{node.lineno} {called}")
    assert unnamed == [], "4xx answers without field=: " + ", ".join(unnamed)


@pytest.mark.parametrize(("error", "status", "field"), [
    (JobAlreadyFinished("job_1", "succeeded"), 409, "job_id"),
    (JobNotSucceeded("job job_1 is queued"), 409, "job_id"),
    (MaterializationNotFound("no materialization 'm'"), 404, "materialization_id"),
    (WebhookLimitReached(20), 409, "WEBHOOK_MAX_ENDPOINTS"),
    (WebhookUrlTaken("https://h.example/x", "wh_1"), 409, "url"),
])
def test_persistence_errors_name_their_field(error: Exception, status: int, field: str) -> None:
    assert isinstance(error, errors.PersistenceError)
    answer = from_persistence_error(error)
    assert isinstance(answer, Conflict | NotFound)
    assert answer.status_code == status and answer.field == field and answer.code == error.code


def test_quota_errors_are_not_mapped_twice() -> None:
    # The services catch these where they happen (to delete what was stored, and to answer with
    # api/services/quotas.py's limit and Retry-After); one reaching the handler is a bug, a 500
    # with its traceback logged, not a 409 naming nothing.
    assert from_persistence_error(ActiveJobLimitReached(20, 20)) is None
    assert from_persistence_error(StorageQuotaReached(1, 2, 2)) is None
