"""The client's exceptions outside the call that raised them: pickled to another process (a
``concurrent.futures`` pool, multiprocessing, a Celery task re-raising them) with every
attribute, and a ``repr`` that says what a caller branches on.

Before, unpickling any exception with keyword-only arguments (every ``RiftAPIError``,
``WaitTimeoutError``, ``ChecksumMismatchError``, ...) raised ``TypeError: __init__() missing
... keyword-only arguments``, so a pool's worker that hit a 404 surfaced as a broken pool, not
as the ``NotFoundError`` it raised."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from rift_client import (
    AuthenticationError,
    ChecksumMismatchError,
    DownloadInProgressError,
    FileChangedError,
    NotFoundError,
    RetryPolicy,
    RiftAPIError,
    RiftClient,
    RiftClientError,
    RiftConnectionError,
    UnexpectedResponseError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from tests.client.helpers import ScriptedReply, ScriptedServer

NOT_FOUND = ScriptedReply(404, {"error": {"code": "job_not_found", "message": "no such job",
                                          "field": "job_id", "job_id": "job_x"}})


def _state(error: BaseException) -> dict[str, object]:
    """What a caller reads of ``error``: its type, str, args and attributes."""
    missing = object()  # OSError's characters_written raises unless set
    values = {name: getattr(error, name, missing) for name in dir(error)
              if not name.startswith("_")}
    attributes = {name: value for name, value in values.items()
                  if value is not missing and not callable(value)}
    return {"type": type(error), "str": str(error), **attributes}


def _round_trip(error: RiftClientError) -> RiftClientError:
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, RiftClientError)
    return copy


@pytest.mark.parametrize("error", [
    RiftConnectionError("GET http://x/v1/jobs: refused", unreachable_url="http://x"),
    UnexpectedResponseError("not JSON", status_code=200, method="GET", path="/v1/jobs"),
    ChecksumMismatchError("differs", expected="a" * 64, actual="b" * 64),
    FileChangedError("/data/model.safetensors", "grew"),
    DownloadInProgressError("/weights/tuned.safetensors", "another download ..."),
    WaitTimeoutError("still running", job_id="job_1", last_status="running",
                     materialization_id="mat_1"),
    WebhookVerificationError("bad signature", reason="invalid_signature"),
], ids=lambda error: type(error).__name__)
def test_every_exception_is_pickled_with_its_attributes(error: RiftClientError) -> None:
    copy = _round_trip(error)
    assert _state(copy) == _state(error)


def test_an_api_error_from_the_service_survives_a_process_pool(
        scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([NOT_FOUND])
    scripted.append(server)
    with RiftClient(server.url, retry=RetryPolicy(max_retries=0)) as rift, \
            pytest.raises(NotFoundError) as raised:
        rift.get_job("job_x")
    error = raised.value
    copy = _round_trip(error)
    assert isinstance(copy, NotFoundError)
    assert (copy.status_code, copy.code, copy.field, copy.details, str(copy)) == \
        (404, "job_not_found", "job_id", {"job_id": "job_x"}, str(error))
    assert copy.headers["content-type"] == "application/json"
    # And as a pool hands it back: raised in the worker, re-raised here as itself.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool, \
            pytest.raises(NotFoundError) as again:
        pool.submit(_raise, error).result()
    assert again.value.code == "job_not_found" and again.value.field == "job_id"


def _raise(error: BaseException) -> None:
    raise error


def test_a_401_keeps_whether_a_key_was_sent() -> None:
    error = AuthenticationError("missing API key", status_code=401, code="unauthorized")
    error.key_sent = False
    copy = _round_trip(error)
    assert isinstance(copy, AuthenticationError) and copy.key_sent is False
    assert str(copy) == str(error) and "RIFT_API_KEY" in str(copy)


def test_an_api_errors_repr_names_its_status_code_and_field() -> None:
    error = RiftAPIError("eps must be positive", status_code=422, code="invalid_config",
                         field="config.attack.eps")
    assert repr(error) == ("RiftAPIError(status_code=422, code='invalid_config', "
                           "field='config.attack.eps', message='eps must be positive')")
