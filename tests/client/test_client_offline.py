"""The SDK where nothing answers or nothing can be written: a refused connection says where the
URL comes from; a download into a missing folder names the path the caller gave and asks the
service nothing first (a scripted server, no API)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest

from rift_client import (
    AsyncRiftClient,
    AuthenticationError,
    RiftClient,
    RiftConnectionError,
    RiftUsageError,
)
from rift_client.retry import RetryPolicy
from tests.client.helpers import ScriptedReply, ScriptedServer


def test_a_download_into_a_missing_folder_names_it_before_any_request(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(500, {"error": {"code": "unexpected"}})])
    target = tmp_path / "absent" / "tuned.safetensors"
    try:
        with RiftClient(server.url, api_key="rift_test") as client, \
                pytest.raises(FileNotFoundError) as caught:
            client.download("job_1", "tuned.safetensors", target)
    finally:
        server.stop()
    # Before: the artifact was looked up, then "No such file or directory: '....part'".
    assert caught.value.filename == str(target)
    assert str(tmp_path / "absent") in str(caught.value)
    assert server.seen == []


def test_a_refused_connection_says_where_the_url_comes_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIFT_API_URL", "http://127.0.0.1:9")
    with RiftClient(api_key="rift_test", retry=RetryPolicy(max_retries=0)) as client, \
            pytest.raises(RiftConnectionError) as caught:
        client.get_job("job_1")
    # Before: "GET http://127.0.0.1:9/v1/jobs/job_1: ConnectError('[Errno 111] ...')" only.
    assert "GET http://127.0.0.1:9/v1/jobs/job_1" in str(caught.value)
    assert "no service answers at http://127.0.0.1:9" in str(caught.value)
    assert "RIFT_API_URL" in str(caught.value)
    # Before: "check the URL (riftctl --url, RIFT_API_URL or the config file's api_url)", places
    # a Python caller never set; now the one this client read, and an attribute riftctl reads.
    assert "(the URL is RIFT_API_URL's)" in str(caught.value)
    assert "riftctl" not in str(caught.value)
    assert caught.value.unreachable_url == "http://127.0.0.1:9"


def test_a_refused_url_given_as_the_argument_names_no_other_place() -> None:
    with RiftClient("http://127.0.0.1:9", api_key="rift_test",
                    retry=RetryPolicy(max_retries=0)) as client, \
            pytest.raises(RiftConnectionError) as caught:
        client.get_job("job_1")
    assert "no service answers at http://127.0.0.1:9: check the URL" in str(caught.value)
    assert "RIFT_API_URL" not in str(caught.value) and "riftctl" not in str(caught.value)


def test_a_config_passed_as_the_spec_is_one_line_saying_so() -> None:
    with RiftClient("http://127.0.0.1:9", api_key="rift_test") as client, \
            pytest.raises(RiftUsageError) as caught:
        client.create_job({"architecture": {"name": "small_cnn"}, "dataset": {"name": "digits"}},
                          checkpoint_id="ck_1")
    # Before: pydantic's several-line report with a URL per error.
    message = str(caught.value)
    assert "\n" not in message and "pydantic.dev" not in message
    assert "config: required; architecture: unknown key" in message
    assert "this looks like the RiftConfig itself: pass {'config': <it>}" in message


@pytest.mark.parametrize(("call", "named"), [
    # Before: GET /v1/jobs/ was redirected, then "not the API's Job; is ... the service's URL?".
    (lambda c, tmp: c.get_job(""), "job_id"),
    (lambda c, tmp: c.get_materialization("job_1", ""), "materialization_id"),
    (lambda c, tmp: c.download("job_1", "", tmp), "name"),
    # Before: "Out of range float values are not JSON compliant", naming nothing.
    (lambda c, tmp: c.materialize("job_1", float("nan")), "alpha"),
    (lambda c, tmp: c.materialize("job_1", float("inf")), "alpha"),
    # Before: "sleep length must be non-negative" after the first poll.
    (lambda c, tmp: c.wait("job_1", poll_interval=-1), "poll_interval"),
    (lambda c, tmp: c.wait_materialization("job_1", "m_1", poll_interval=0), "poll_interval"),
    (lambda c, tmp: c.wait_until_ready(poll_interval=-0.5), "poll_interval"),
    # Before: a NaN deadline compares false with everything: the wait never timed out.
    (lambda c, tmp: c.wait("job_1", timeout=float("nan")), "timeout"),
    (lambda c, tmp: list(c.stream_events("job_1", read_timeout=0)), "read_timeout"),
    # Before: no items and no error.
    (lambda c, tmp: list(c.list_jobs(limit=-1)), "limit"),
])
def test_arguments_a_helper_cannot_use_are_named_before_any_request(
        call: Any, named: str, tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(500, {"error": {"code": "unexpected"}})])
    try:
        with RiftClient(server.url, api_key="rift_test") as client, \
                pytest.raises(RiftUsageError) as caught:
            call(client, tmp_path)
    finally:
        server.stop()
    assert str(caught.value).startswith(named + " ")
    assert caught.value.field == named
    assert server.seen == []


def test_a_report_into_a_missing_folder_names_it_before_any_request(tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(500, {"error": {"code": "unexpected"}})])
    target = tmp_path / "absent" / "report.html"
    try:
        with RiftClient(server.url, api_key="rift_test") as client, \
                pytest.raises(FileNotFoundError) as caught:
            client.download_report("job_1", target)
    finally:
        server.stop()
    # Before: the page was fetched, then "No such file or directory" from the write.
    assert caught.value.filename == str(target)
    assert server.seen == []


def _one_artifact_server(payload: bytes) -> ScriptedServer:
    artifact = {"name": "tuned.safetensors", "size": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
                "content_type": "application/octet-stream", "created_at": "2026-01-01T00:00:00Z",
                "url": "/v1/jobs/job_1/artifacts/tuned.safetensors"}
    return ScriptedServer([ScriptedReply(200, {"items": [artifact]}),
                           ScriptedReply(200, raw=payload,
                                         content_type="application/octet-stream")])


def test_a_destination_written_with_a_trailing_slash_is_a_folder_made_when_missing(
        tmp_path: Path) -> None:
    payload = b"weights" * 100
    server = _one_artifact_server(payload)
    folder = tmp_path / "weights"
    try:
        with RiftClient(server.url, api_key="rift_test") as client:
            # The README's call: before, it wrote a file called "weights" (Path drops the "/").
            saved = client.download("job_1", "tuned.safetensors", f"{folder}/")
    finally:
        server.stop()
    assert saved == folder / "tuned.safetensors"
    assert folder.is_dir() and saved.read_bytes() == payload


def test_a_report_saved_into_a_folder_written_with_a_slash_is_named_after_the_job(
        tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, raw=b"<html>report</html>",
                                           content_type="text/html")])
    try:
        with RiftClient(server.url, api_key="rift_test") as client:
            saved = client.download_report("job_1", f"{tmp_path / 'reports'}/")
    finally:
        server.stop()
    assert saved == tmp_path / "reports" / "job_1.html"
    assert saved.read_bytes() == b"<html>report</html>"


def test_a_file_in_the_way_of_a_folder_destination_is_named_before_any_request(
        tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(500, {"error": {"code": "unexpected"}})])
    (tmp_path / "weights").write_text("not a folder")
    try:
        with RiftClient(server.url, api_key="rift_test") as client, \
                pytest.raises(NotADirectoryError) as caught:
            client.download("job_1", "tuned.safetensors", f"{tmp_path / 'weights'}/")
    finally:
        server.stop()
    assert caught.value.filename == f"{tmp_path / 'weights'}/"
    assert server.seen == []


@pytest.mark.parametrize("api_key", [None, "rift_revoked_key"])
def test_a_401_to_a_request_with_no_key_says_how_to_give_one(
        api_key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIFT_API_KEY", raising=False)
    server = ScriptedServer([ScriptedReply(401, {"error": {
        "code": "unauthorized", "message": "missing API key", "field": "Authorization"}})])
    try:
        with RiftClient(server.url, api_key=api_key) as client, \
                pytest.raises(AuthenticationError) as caught:
            client.get_job("job_1")
    finally:
        server.stop()
    # Before: "GET /v1/jobs/job_1 401 unauthorized: missing API key (field: Authorization)" alone,
    # with no word of where this client reads a key.
    hint = "no API key was sent: pass api_key= to the client or set RIFT_API_KEY"
    assert (hint in str(caught.value)) is (api_key is None)
    assert caught.value.key_sent is (api_key is not None)
    assert hint not in caught.value.summary()


def test_wait_tells_on_outage_when_the_service_stops_and_starts_answering() -> None:
    from tests.client.test_retry import JOB

    down = ScriptedReply(502, raw=b"bad gateway", content_type="text/plain")
    server = ScriptedServer([ScriptedReply(200, {**JOB, "status": "running"}), *[down] * 3,
                             ScriptedReply(200, {**JOB, "status": "succeeded"})])
    told: list[str | None] = []
    try:
        with RiftClient(server.url, retry=RetryPolicy(max_retries=2, backoff_s=0.01,
                                                      max_backoff_s=0.01)) as client:
            done = client.wait("job_1", timeout=120, poll_interval=0.01, follow_events=False,
                               on_outage=lambda exc: told.append(
                                   None if exc is None else type(exc).__name__))
    finally:
        server.stop()
    # One call as the look fails its retries (the outage begins), one as the next answers.
    assert done.status == "succeeded"
    assert told == ["ServerError", None]


@pytest.mark.parametrize(("make", "named"), [
    # Before: every request failed as "no service answers at <url>: check the URL".
    (lambda url: RiftClient(url, timeout=0), "timeout"),
    # Before: ValueError "Timeout value out of range" / "Invalid value NaN" at each request.
    (lambda url: RiftClient(url, timeout=-1), "timeout"),
    (lambda url: AsyncRiftClient(url, timeout=math.nan), "timeout"),
    (lambda url: RiftClient(url, timeout="30"), "timeout"),
    (lambda url: RiftClient(url, upload_timeout=-5), "upload_timeout"),
    # Before: "sleep length must be non-negative" after the first 503.
    (lambda url: RiftClient(url, retry=RetryPolicy(backoff_s=-1)), "backoff_s"),
    (lambda url: RiftClient(url, retry=RetryPolicy(max_retries=-1)), "max_retries"),
    (lambda url: RiftClient(url, retry=RetryPolicy(max_outage_s=math.nan)), "max_outage_s"),
    (lambda url: RiftClient(url, retry=3), "retry"),
])
def test_a_client_made_with_times_it_cannot_use_names_them_before_any_request(
        make: Any, named: str) -> None:
    server = ScriptedServer([ScriptedReply(503, {"error": {"code": "busy"}})])
    try:
        with pytest.raises(RiftUsageError) as caught:
            make(server.url)
    finally:
        server.stop()
    assert str(caught.value).startswith(named + " ")
    assert caught.value.field == named
    assert server.seen == []


def test_unbounded_limits_of_a_retry_policy_are_allowed() -> None:
    policy = RetryPolicy(max_retry_after_s=math.inf, max_outage_s=math.inf, max_retries=0)
    assert policy.max_outage_s == math.inf


@pytest.mark.parametrize(("call", "field"), [
    (lambda tmp: RiftClient("ftp://example.com"), "base_url"),
    (lambda tmp: RiftClient("http://127.0.0.1:9", api_key="rift_key\n"), "api_key"),
    (lambda tmp: RiftClient("http://127.0.0.1:9").create_job(
        {"config": {}}, checkpoint_id="ck_1", idempotency_key="two words"), "idempotency_key"),
    (lambda tmp: RiftClient("http://127.0.0.1:9").create_job({"confg": {}}, checkpoint_id="c"),
     "spec.config"),
    (lambda tmp: RiftClient("http://127.0.0.1:9").upload_checkpoint(tmp), "path"),
    (lambda tmp: RiftClient("http://127.0.0.1:9").create_job(
        {"config": {}}, checkpoint_file=tmp), "checkpoint_file"),
    (lambda tmp: RiftClient("http://127.0.0.1:9").delete_job("job_1", if_match=" "),
     "if_match"),
])
def test_a_usage_error_names_the_argument_in_its_field(call: Any, field: str,
                                                       tmp_path: Path) -> None:
    # Before, the message alone named it: RiftAPIError had .field, RiftUsageError none.
    with pytest.raises(RiftUsageError) as caught:
        call(tmp_path)
    assert caught.value.field == field
def test_a_usage_error_names_the_argument_at_fault_in_field(tmp_path: Path) -> None:
    """``RiftUsageError.field`` is the argument, as ``RiftAPIError.field`` is the request field
    the service refused. Before: the argument was in the message only, so a caller handling
    both kinds of refusal had no field to read for this one."""
    from rift_client import verify_webhook

    server = ScriptedServer([])
    try:
        with RiftClient(server.url, api_key="rift_test") as client:
            refusals = {
                "job_id": lambda: client.get_job(""),
                "poll_interval": lambda: client.wait("job_1", poll_interval=0),
                "timeout": lambda: client.wait("job_1", timeout="soon"),  # type: ignore[arg-type]
                "limit": lambda: client.list_jobs(limit=-1),
                "alpha": lambda: client.materialize("job_1", float("nan")),
                "path": lambda: client.upload_checkpoint(tmp_path),
                "checkpoint_id": lambda: client.create_job(
                    {"config": {"architecture": {"name": "small_cnn"}}}),
                "spec.config": lambda: client.create_job({}, checkpoint_id="ck_1"),
                "idempotency_key": lambda: client.create_job(
                    {"config": {}}, checkpoint_id="ck_1", idempotency_key="a b"),
            }
            for field, call in refusals.items():
                with pytest.raises(RiftUsageError) as caught:
                    call()
                assert caught.value.field == field, (field, str(caught.value))
    finally:
        server.stop()
    assert server.seen == []
    for field, call in {
            "api_key": lambda: RiftClient(server.url, api_key="rift_key\n"),
            "base_url": lambda: RiftClient("ftp://host", api_key="rift_test"),
            "secret": lambda: verify_webhook("whsec_!!", {}, b"")}.items():
        with pytest.raises(RiftUsageError) as caught:
            call()
        assert caught.value.field == field, (field, str(caught.value))
