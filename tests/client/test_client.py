"""``RiftClient`` against the real API (SQLite, local store, jobs left queued): uploads with
progress and SHA-256, records, pages of uploads, job creation with idempotency keys, pages of
jobs, cancelling, waiting with a timeout, the API's errors as typed exceptions (materializing a
job that has not succeeded among them), a materialization wait that times out, and a webhook
registered, listed, read, sent a signed message (by the worker's delivery code) that
``verify_webhook`` accepts, and deleted; then each webhook call against a scripted server (the
request sent, the answer parsed, the errors)."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from rift_client import (
    Checkpoint,
    ConflictError,
    CreatedWebhook,
    Job,
    JobSpec,
    NotFoundError,
    PayloadTooLargeError,
    RiftAPIError,
    RiftClient,
    RiftUsageError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    WaitTimeoutError,
    Webhook,
    verify_webhook,
)
from tests.api.helpers import digits_config, varied_images
from tests.client.conftest import FAST_RETRY, MAX_UPLOAD_BYTES, RunningApi
from tests.client.helpers import ScriptedReply, ScriptedServer
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid small_cnn safetensors file for 1-channel digits (random weights)."""
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path_factory.mktemp("client-checkpoints") / "small cnn.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def _upload(rift: RiftClient, path: Path) -> Checkpoint:
    return rift.upload_checkpoint(path)


def test_upload_checkpoint_reports_progress_and_checks_the_hash(
        rift: RiftClient, checkpoint_file: Path) -> None:
    calls: list[tuple[int, int]] = []
    record = rift.upload_checkpoint(checkpoint_file, progress=lambda done, total:
                                    calls.append((done, total)))
    size = checkpoint_file.stat().st_size
    assert record.sha256 == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()
    assert record.size == size and record.filename == "small cnn.safetensors"
    assert record.format == "safetensors" and record.num_tensors > 0
    assert calls and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert rift.get_checkpoint(record.id) == record


def test_usage_counts_what_the_quotas_count(rift: RiftClient, queued_api: RunningApi,
                                            checkpoint_file: Path) -> None:
    empty = rift.usage()
    assert empty.stored_bytes.used == 0 and empty.active_jobs.used == 0
    assert empty.stored_bytes.limit == queued_api.settings.default_max_stored_bytes
    assert empty.max_job_cost == queued_api.settings.default_max_job_cost
    assert empty.max_job_gflop == queued_api.settings.default_max_job_gflop
    checkpoint = _upload(rift, checkpoint_file)
    rift.create_job(JobSpec(config=digits_config()), checkpoint_id=checkpoint.id)
    usage = rift.usage()  # the job stays queued here, holding its reservation
    assert usage.active_jobs.used == 1
    assert usage.stored_bytes.checkpoints == checkpoint.size
    assert usage.stored_bytes.reserved_by_active_jobs == 2 * checkpoint.size
    assert usage.stored_bytes.used == 3 * checkpoint.size


def test_upload_dataset_and_builtin_dataset(rift: RiftClient, tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.random((40, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    path.write_bytes(buffer.getvalue())
    record = rift.upload_dataset(path)
    assert record.kind == "npz" and record.num_classes == 10 and record.num_examples == 40
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rift.get_dataset(record.id).sha256 == record.sha256
    builtin = rift.get_dataset("digits")
    assert builtin.kind == "builtin" and builtin.image_shape == [1, 8, 8]


def test_create_job_is_idempotent_with_a_key(rift: RiftClient, queued_api: RunningApi,
                                             checkpoint_file: Path) -> None:
    checkpoint = _upload(rift, checkpoint_file)
    spec = JobSpec(config=digits_config(), labels={"team": "vision"})
    job = rift.create_job(spec, checkpoint_id=checkpoint.id, idempotency_key="build-42")
    assert job.status == "queued" and job.checkpoint_id == checkpoint.id
    assert job.labels == {"team": "vision"} and job.config["architecture"]["name"] == "small_cnn"
    again = rift.create_job(spec, checkpoint_id=checkpoint.id, idempotency_key="build-42")
    assert again.id == job.id
    assert queued_api.dispatcher is not None and queued_api.dispatcher.enqueued == [job.id]
    # Without a key of its own, each call is a new job (the client's random key differs).
    other = rift.create_job(spec.model_dump(), checkpoint_id=checkpoint.id)
    assert other.id != job.id
    with pytest.raises(ConflictError) as conflict:
        rift.create_job(JobSpec(config=digits_config(seed=7)), checkpoint_id=checkpoint.id,
                        idempotency_key="build-42")
    assert conflict.value.code == "idempotency_conflict"
    assert conflict.value.field == "Idempotency-Key"
    assert conflict.value.details["job_id"] == job.id


def test_list_jobs_follows_the_cursor_pages(rift: RiftClient, checkpoint_file: Path) -> None:
    checkpoint = _upload(rift, checkpoint_file)
    created = [rift.create_job({"config": digits_config(), "labels": {"batch": str(i % 2)}},
                               checkpoint_id=checkpoint.id).id for i in range(5)]
    listed = [job.id for job in rift.list_jobs(page_size=2)]
    assert listed == created[::-1]
    first_page = rift.list_jobs_page(page_size=2)
    assert len(first_page.items) == 2 and first_page.next_cursor
    assert [job.id for job in rift.list_jobs(page_size=2, limit=3)] == created[::-1][:3]
    evens = [job.id for job in rift.list_jobs(labels={"batch": "0"}, page_size=1)]
    assert evens == [created[4], created[2], created[0]]
    assert list(rift.list_jobs(status="running")) == []


def test_a_walk_over_pages_is_not_disturbed_by_jobs_created_meanwhile(
        rift: RiftClient, checkpoint_file: Path) -> None:
    # A pipeline listing jobs while another submits them: keyset cursors (created_at, id), so a
    # job created during the walk lands before its start (not listed), and none of the jobs
    # there from the start is repeated or skipped, as an offset would.
    checkpoint = _upload(rift, checkpoint_file)

    def create() -> str:
        return rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id).id

    existing = [create() for _ in range(7)]
    walked: list[str] = []
    meanwhile: list[str] = []
    for job in rift.list_jobs(page_size=3):
        walked.append(job.id)
        meanwhile.append(create())
    assert walked == existing[::-1]
    assert [job.id for job in rift.list_jobs(page_size=3)] == (existing + meanwhile)[::-1]


def _npz_file(folder: Path, name: str, examples: int) -> Path:
    path = folder / name
    buffer = io.BytesIO()
    np.savez(buffer, x=varied_images((examples, 8, 8), np.float32), y=np.arange(examples) % 10)
    path.write_bytes(buffer.getvalue())
    return path


def test_list_uploads_follows_the_cursor_pages(rift: RiftClient, checkpoint_file: Path,
                                               tmp_path: Path) -> None:
    checkpoints = [_upload(rift, checkpoint_file).id for _ in range(3)]
    assert [c.id for c in rift.list_checkpoints(page_size=2)] == checkpoints[::-1]
    first_page = rift.list_checkpoints_page(page_size=2)
    assert [c.id for c in first_page.items] == checkpoints[:0:-1] and first_page.next_cursor
    last_page = rift.list_checkpoints_page(page_size=2, cursor=first_page.next_cursor)
    assert [c.id for c in last_page.items] == checkpoints[:1] and last_page.next_cursor is None
    assert [c.id for c in rift.list_checkpoints(page_size=1, limit=2)] == checkpoints[:0:-1]
    assert [c.id for c in rift.list_checkpoints(format="safetensors")] == checkpoints[::-1]
    assert list(rift.list_checkpoints(format="torch")) == []
    assert next(iter(rift.list_checkpoints())) == rift.get_checkpoint(checkpoints[-1])

    datasets = [rift.upload_dataset(_npz_file(tmp_path, f"d{n}.npz", 20 + n)).id
                for n in range(2)]
    listed = list(rift.list_datasets(page_size=1))
    assert [d.id for d in listed] == datasets[::-1]
    assert [d.num_examples for d in listed] == [21, 20]
    assert rift.list_datasets_page(page_size=1).next_cursor
    assert [d.id for d in rift.list_datasets(kind="npz", limit=1)] == datasets[1:]
    assert list(rift.list_datasets(kind="imagefolder")) == []

    # The service names the parameter at fault.
    for call, field in [(lambda: rift.list_checkpoints_page(format="onnx"), "format"),
                        (lambda: rift.list_datasets_page(kind="builtin"), "kind"),
                        (lambda: rift.list_datasets_page(page_size=101), "limit"),
                        (lambda: rift.list_datasets_page(cursor=first_page.next_cursor),
                         "cursor")]:
        with pytest.raises(UnprocessableEntityError) as refused:
            call()
        assert refused.value.field == field


def _refused_download(rift: RiftClient, job_id: str, folder: Path) -> ConflictError:
    """The error of downloading tuned.safetensors of a job that has not succeeded."""
    folder = folder / "downloads"
    folder.mkdir(exist_ok=True)
    with pytest.raises(ConflictError) as refused:
        rift.download(job_id, "tuned.safetensors", folder)
    assert list(folder.iterdir()) == []  # no partial file left behind
    return refused.value


def test_cancel_wait_and_delete(rift: RiftClient, checkpoint_file: Path, tmp_path: Path) -> None:
    checkpoint = _upload(rift, checkpoint_file)
    job = rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
    seen: list[str] = []
    with pytest.raises(WaitTimeoutError) as timeout:
        rift.wait(job.id, timeout=0.3, poll_interval=0.1, on_update=lambda j: seen.append(j.status))
    assert timeout.value.last_status == "queued" and seen and set(seen) == {"queued"}
    # Every 409 names the path parameter of the resource in the conflicting state.
    with pytest.raises(ConflictError) as active:
        rift.delete_job(job.id)
    assert active.value.code == "job_active" and active.value.field == "job_id"
    # Results asked too early: a 409 naming the status (before: a NotFoundError).
    early = _refused_download(rift, job.id, tmp_path)
    assert (early.code, early.field, early.details["status"]) == ("job_not_succeeded", "job_id",
                                                                  "queued")
    with pytest.raises(ConflictError) as in_use:
        rift.delete_checkpoint(checkpoint.id)
    assert in_use.value.code == "in_use" and in_use.value.field == "checkpoint_id"
    cancelled = rift.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert rift.wait(job.id, timeout=5).status == "cancelled"
    with pytest.raises(ConflictError) as finished:
        rift.cancel(job.id)
    assert finished.value.code == "job_finished" and finished.value.field == "job_id"
    never = _refused_download(rift, job.id, tmp_path)
    assert never.details["status"] == "cancelled" and "will not be made" in str(never)
    with pytest.raises(ConflictError) as referenced:
        rift.delete_checkpoint(checkpoint.id)
    assert referenced.value.code == "referenced" and referenced.value.field == "checkpoint_id"
    # The way out the 409 names: delete the finished job, then its checkpoint.
    rift.delete_job(job.id)
    with pytest.raises(NotFoundError):
        rift.get_job(job.id)
    rift.delete_checkpoint(checkpoint.id)
    with pytest.raises(NotFoundError):
        rift.get_checkpoint(checkpoint.id)


def test_a_jobs_warnings_are_typed_items_of_the_job(rift: RiftClient, queued_api: RunningApi,
                                                    checkpoint_file: Path) -> None:
    from persistence import jobs
    from persistence.db import session_factory_from_settings
    from rift_client import JobWarning

    checkpoint = _upload(rift, checkpoint_file)
    warned, quiet = (rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
                     for _ in range(2))
    sessions = session_factory_from_settings(queued_api.settings)
    try:
        with sessions() as session:
            for payload in ({"stage": "finetune", "candidate": 1, "message": "diverged"},
                            {"stage": "interpolate", "message": "no α > 0 kept it"},
                            {"stage": "interpolate", "message": "no α > 0 kept it"}):
                jobs.append_event(session, warned.id, "warning", payload)
    finally:
        sessions.kw["bind"].dispose()
    job = rift.get_job(warned.id)
    assert job.warnings is not None and all(type(w) is JobWarning for w in job.warnings)
    assert [w.line() for w in job.warnings] == [
        "warning (finetune, candidate 1): diverged", "warning (interpolate): no α > 0 kept it (×2)"]
    assert job.warnings_total == 2
    assert rift.get_job(quiet.id).warnings == [] and rift.get_job(quiet.id).warnings_total == 0
    # A list item has none unless the list asks for them.
    assert {j.id: j.warnings for j in rift.list_jobs()} == {warned.id: None, quiet.id: None}
    expanded = {j.id: j for j in rift.list_jobs(expand="warnings")}
    assert [w.line() for w in expanded[warned.id].warnings or []] == [
        w.line() for w in job.warnings]
    assert (expanded[warned.id].warnings_total, expanded[quiet.id].warnings) == (2, [])
    both = rift.list_jobs_page(expand=["warnings", "config"]).items
    assert all(j.config is not None and j.warnings is not None for j in both)
    with pytest.raises(UnprocessableEntityError) as refused:  # the service names the value
        rift.list_jobs_page(expand="warning")
    assert refused.value.field == "expand" and "warnings" in str(refused.value)


def test_an_upload_under_a_key_is_stored_once(rift: RiftClient, checkpoint_file: Path) -> None:
    first = rift.upload_checkpoint(checkpoint_file, idempotency_key="nightly-ck")
    again = rift.upload_checkpoint(checkpoint_file, idempotency_key="nightly-ck")
    assert again.id == first.id
    assert rift.upload_checkpoint(checkpoint_file).id != first.id  # a fresh random key


def test_a_job_carries_its_own_time_limit(rift: RiftClient, checkpoint_file: Path) -> None:
    checkpoint = _upload(rift, checkpoint_file)
    job = rift.create_job(JobSpec(config=digits_config(), time_limit_seconds=120),
                          checkpoint_id=checkpoint.id)
    assert job.time_limit_seconds == 120
    assert rift.get_job(job.id).time_limit_seconds == 120
    with pytest.raises(UnprocessableEntityError) as refused:
        rift.create_job({"config": digits_config(), "time_limit_seconds": 10**9},
                        checkpoint_id=checkpoint.id)
    assert refused.value.field == "time_limit_seconds"


def _wait_for_a_cancel(rift: RiftClient, queued_api: RunningApi, api_key: str | None,
                       job_id: str, poll_interval: float, timeout: float) -> tuple[Job, list[str]]:
    """``rift.wait`` for the queued job, cancelled from another client after one second; the
    finished job and every status ``wait`` read."""
    def cancel() -> None:
        with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as other:
            other.cancel(job_id)

    timer = threading.Timer(1.0, cancel)
    timer.start()
    seen: list[str] = []
    try:
        done = rift.wait(job_id, timeout=timeout, poll_interval=poll_interval,
                         on_update=lambda j: seen.append(j.status))
    finally:
        timer.join()
    return done, seen


def test_wait_sees_the_end_through_the_event_stream_not_a_poll(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None,
        checkpoint_file: Path) -> None:
    job = rift.create_job({"config": digits_config()},
                          checkpoint_id=_upload(rift, checkpoint_file).id)
    # Polling once an hour could not see the end within the 60 s allowed: the stream did.
    done, seen = _wait_for_a_cancel(rift, queued_api, api_key, job.id, poll_interval=3600,
                                    timeout=60)
    assert done.status == "cancelled"
    assert seen == ["queued", "cancelled"]  # read at the start and at the stream's end only


def test_wait_polls_when_the_key_may_open_no_more_streams(
        rift: RiftClient, queued_api: RunningApi, api_key: str | None,
        checkpoint_file: Path) -> None:
    job = rift.create_job({"config": digits_config()},
                          checkpoint_id=_upload(rift, checkpoint_file).id)
    engine = create_engine(queued_api.settings.database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE projects SET max_streams_per_key = 1"))
    engine.dispose()
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
    # Another stream of the same key holds the only slot (its headers arrived: it is open).
    with httpx.stream("GET", f"{queued_api.url}/v1/jobs/{job.id}/events", headers=headers,
                      timeout=30) as held:
        assert held.status_code == 200
        done, seen = _wait_for_a_cancel(rift, queued_api, api_key, job.id, poll_interval=0.2,
                                        timeout=30)
    assert done.status == "cancelled"
    # Refused a stream (429), it polled: a followed stream reads the job only at its end.
    assert seen.count("queued") >= 3


def test_api_errors_carry_code_message_and_field(rift: RiftClient, checkpoint_file: Path,
                                                 tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as missing:
        rift.get_job("no-such-job")
    assert missing.value.code == "job_not_found" and missing.value.field == "job_id"
    assert "no-such-job" in missing.value.message and missing.value.status_code == 404

    checkpoint = _upload(rift, checkpoint_file)
    bad = digits_config()
    bad["attack"]["eps"] = -1
    with pytest.raises(UnprocessableEntityError) as invalid:
        rift.create_job({"config": bad}, checkpoint_id=checkpoint.id)
    assert invalid.value.field == "config.attack.eps" and invalid.value.code == "validation_error"

    with pytest.raises(UnprocessableEntityError) as unknown:
        rift.create_job({"config": digits_config()}, checkpoint_id="ck_nothing")
    assert unknown.value.field == "checkpoint_id"

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UnprocessableEntityError) as refused:
        rift.upload_checkpoint(garbage)
    assert refused.value.field == "file" and refused.value.code

    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(PayloadTooLargeError) as too_large:
        rift.upload_checkpoint(big)
    assert too_large.value.details["limit_bytes"] == MAX_UPLOAD_BYTES

    # A queued job's weights: a 409 naming its state (before: a 404 on "name").
    with pytest.raises(ConflictError) as no_artifact:
        rift.download(rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id).id,
                      "tuned.safetensors", tmp_path)
    assert no_artifact.value.field == "job_id" and no_artifact.value.code == "job_not_succeeded"
    assert not list(tmp_path.glob("*.part"))
    # Every error of the API is a RiftAPIError, whose text names the call, the code and the field.
    assert isinstance(missing.value, RiftAPIError)
    assert str(missing.value).startswith("GET /v1/jobs/no-such-job 404 job_not_found")


def test_ids_cannot_reach_another_route(rift: RiftClient) -> None:
    # "../jobs" is sent as one escaped segment ("..%2Fjobs"): a 404, not the list at /v1/jobs.
    with pytest.raises(NotFoundError) as missing:
        rift.get_checkpoint("../jobs")
    assert missing.value.path == "/v1/checkpoints/../jobs" and missing.value.code == "not_found"


def test_materialize_a_job_that_has_not_succeeded_is_a_conflict(
        rift: RiftClient, checkpoint_file: Path) -> None:
    checkpoint = _upload(rift, checkpoint_file)
    job = rift.create_job({"config": digits_config()}, checkpoint_id=checkpoint.id)
    with pytest.raises(ConflictError) as queued:
        rift.materialize(job.id, 0.5)
    assert queued.value.status_code == 409 and queued.value.code == "job_not_succeeded"
    assert queued.value.field == "job_id" and job.id in queued.value.message
    assert rift.list_materializations(job.id) == []
    with pytest.raises(NotFoundError) as unknown:
        rift.get_materialization(job.id, "no-such-materialization")
    assert unknown.value.field == "materialization_id"
    with pytest.raises(UnprocessableEntityError) as out_of_range:
        rift.materialize(job.id, 1.5)
    assert out_of_range.value.field is not None and "alpha" in out_of_range.value.field


def _materialization_body(status: str) -> dict[str, object]:
    return {"id": "mat_1", "job_id": "job_1", "alpha": 0.25, "evaluate": False, "status": status,
            "artifact": "tuned@0.25.safetensors", "artifact_url": None, "clean_accuracy": None,
            "robust_accuracy": None, "error": None, "created_at": "2026-01-01T00:00:00Z",
            "finished_at": None, "url": "/v1/jobs/job_1/materializations/mat_1"}


def test_wait_materialization_gives_up_after_the_timeout() -> None:
    # A service whose materialization stays running: the wait ends with WaitTimeoutError.
    server = ScriptedServer([ScriptedReply(200, _materialization_body("running"))])
    try:
        seen: list[str] = []
        with RiftClient(server.url, api_key="rift_test") as client, \
                pytest.raises(WaitTimeoutError) as timeout:
            client.wait_materialization("job_1", "mat_1", timeout=0.3, poll_interval=0.1,
                                        on_update=lambda m: seen.append(m.status))
    finally:
        server.stop()
    assert timeout.value.materialization_id == "mat_1" and timeout.value.job_id == "job_1"
    assert timeout.value.last_status == "running" and len(seen) >= 2
    assert {r.path for r in server.seen} == {"/v1/jobs/job_1/materializations/mat_1"}


@pytest.mark.parametrize("reply", [
    ScriptedReply(200, raw=b"<html>a sign-in page</html>", content_type="text/html"),
    ScriptedReply(200, {"id": 5}),  # JSON, but not a job
    ScriptedReply(200, raw=b"not gzip", headers={"Content-Encoding": "gzip"}),
    ScriptedReply(302, raw=b"", headers={"Location": "/elsewhere"}),
], ids=["html", "other-json", "undecodable", "redirect"])
def test_answers_that_are_not_the_apis_raise_the_clients_own_error(reply: ScriptedReply) -> None:
    # A base URL naming another server used to leak json's, pydantic's or httpx's exceptions.
    server = ScriptedServer([reply])
    try:
        with RiftClient(server.url, api_key="rift_test", retry=FAST_RETRY) as client:
            with pytest.raises(UnexpectedResponseError) as job:
                client.get_job("job_1")
            assert job.value.path == "/v1/jobs/job_1" and server.url in str(job.value)
            with pytest.raises(UnexpectedResponseError):
                client.list_artifacts("job_1")
            with pytest.raises(UnexpectedResponseError):
                client.create_job({"config": {}}, checkpoint_id="ck_1")
    finally:
        server.stop()


def test_events_that_are_not_the_apis_raise_the_clients_own_error() -> None:
    stream = b"id: 1\nevent: epoch\ndata: not json\n\n"
    server = ScriptedServer([ScriptedReply(200, raw=stream, content_type="text/event-stream")])
    try:
        with RiftClient(server.url, api_key="rift_test", retry=FAST_RETRY) as client, \
                pytest.raises(UnexpectedResponseError) as bad:
            list(client.stream_events("job_1", max_reconnects=0))
    finally:
        server.stop()
    assert "Event" in str(bad.value)


@pytest.mark.parametrize(("make", "named"), [
    (lambda url: RiftClient("http://[::1"), "base URL"),
    (lambda url: RiftClient("127.0.0.1:8000"), "base URL"),
    (lambda url: RiftClient("ftp://example.org"), "base URL"),
    (lambda url: RiftClient(url, api_key="rift_abc_é"), "API key"),
    (lambda url: RiftClient(url, api_key="rift_abc_def\n"), "API key"),
    (lambda url: RiftClient(url, api_key="k").create_job({"config": {}}, checkpoint_id="ck",
                                                         idempotency_key="run 42"),
     "Idempotency-Key"),
    (lambda url: RiftClient(url, api_key="k").create_job({"cfg": {}}, checkpoint_id="ck"),
     "JobSpec"),
], ids=["bad-port", "no-scheme", "ftp", "non-ascii-key", "key-with-newline",
        "idempotency-key-with-space", "not-a-spec"])
def test_arguments_that_cannot_be_sent_are_usage_errors_before_any_request(
        make: Any, named: str) -> None:
    # They used to be httpx.InvalidURL, UnicodeEncodeError, pydantic's ValidationError, or a
    # connection error after every retry (a newline is an illegal header value).
    server = ScriptedServer([ScriptedReply(200, {})])
    try:
        with pytest.raises(RiftUsageError) as refused:
            make(server.url)
    finally:
        server.stop()
    assert isinstance(refused.value, ValueError) and named in str(refused.value)
    assert "rift_abc" not in str(refused.value)  # a key is never quoted
    assert server.seen == []


# ---------------------------------------------------------------------------------- webhooks


def test_webhook_round_trip_with_a_signed_delivery(rift: RiftClient, queued_api: RunningApi,
                                                   checkpoint_file: Path) -> None:
    from worker.runtime import WorkerResources
    from worker.webhooks import deliver

    receiver = Receiver(statuses=[]).start()
    try:
        hook = rift.create_webhook(receiver.url, events=["job.failed", "job.cancelled"],
                                   description="ci", idempotency_key="hook-7")
        assert isinstance(hook, CreatedWebhook) and hook.secret.startswith("whsec_")
        assert hook.url == receiver.url and hook.events == ["job.cancelled", "job.failed"]
        # A retry under the key (events in another order) learns the same endpoint and secret;
        # another registration under it is refused.
        again = rift.create_webhook(receiver.url, events=["job.cancelled", "job.failed"],
                                    description="ci", idempotency_key="hook-7")
        assert (again.id, again.secret) == (hook.id, hook.secret)
        with pytest.raises(ConflictError) as taken:
            rift.create_webhook(receiver.url, idempotency_key="hook-7")
        assert taken.value.code == "idempotency_conflict"
        with pytest.raises(UnprocessableEntityError) as forbidden:
            rift.create_webhook("http://10.1.2.3/hooks")
        assert forbidden.value.code == "webhook_target_forbidden"
        assert forbidden.value.field == "url"

        [listed] = rift.list_webhooks()
        assert type(listed) is Webhook and listed.id == hook.id and listed.description == "ci"
        assert rift.get_webhook(hook.id) == listed
        assert rift.webhook_deliveries(hook.id) == []

        # A cancelled job owes the endpoint a message: recorded, its task handed to the
        # dispatcher, not yet attempted.
        job = rift.create_job({"config": digits_config()},
                              checkpoint_id=_upload(rift, checkpoint_file).id)
        rift.cancel(job.id)
        [pending] = rift.webhook_deliveries(hook.id)
        assert (pending.status, pending.event_type, pending.job_id) == (
            "pending", "job.cancelled", job.id)
        assert not pending.finished and pending.attempts == 0 and pending.attempt_log == []
        assert queued_api.dispatcher is not None
        assert queued_api.dispatcher.webhooks == [pending.id]

        # The worker's own delivery code sends it; the receiver checks it with the client's
        # helper and the secret from the registration.
        assert deliver(WorkerResources(queued_api.settings), pending.id,
                       schedule_retry=lambda *_: None) == "delivered"
        [received] = receiver.received
        message = verify_webhook(hook.secret, received.headers, received.body)
        assert message.id == pending.id and message.type == "job.cancelled"
        assert message.data.job_id == job.id and message.data.status == "cancelled"
        assert message.data.warnings_total == 0  # the job wrote none
        [sent] = rift.webhook_deliveries(hook.id, limit=1)
        assert sent.id == pending.id and sent.status == "succeeded" and sent.finished
        assert [(a.attempt, a.status_code, a.error) for a in sent.attempt_log] == [
            (1, 200, None)]
        assert sent.last_status_code == 200

        rift.delete_webhook(hook.id)
        assert rift.list_webhooks() == []
        for call in (rift.get_webhook, rift.webhook_deliveries, rift.delete_webhook):
            with pytest.raises(NotFoundError) as gone:
                call(hook.id)
            assert gone.value.code == "webhook_not_found" and gone.value.field == "webhook_id"
    finally:
        receiver.stop()


WEBHOOK = {"id": "wh_1", "url": "https://hooks.example.com/rift", "description": None,
           "events": ["job.cancelled", "job.failed", "job.succeeded"],
           "created_at": "2026-01-01T00:00:00Z"}
DELIVERY = {
    "id": "msg_1", "event_type": "job.failed", "job_id": "job_1", "status": "pending",
    "attempts": 2, "last_status_code": 500, "last_error": "the receiver answered HTTP 500",
    "next_attempt_at": "2026-01-01T00:01:00Z", "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:30Z", "attempt_log": [
        {"attempt": 1, "status_code": None, "error": "ConnectTimeout: timed out",
         "started_at": "2026-01-01T00:00:00Z", "duration_ms": 5000.0},
        {"attempt": 2, "status_code": 500, "error": "the receiver answered HTTP 500",
         "started_at": "2026-01-01T00:00:30Z", "duration_ms": 12.5}]}


def _scripted_client(scripted: list[ScriptedServer], *replies: ScriptedReply
                     ) -> tuple[ScriptedServer, RiftClient]:
    server = ScriptedServer(replies)
    scripted.append(server)
    return server, RiftClient(server.url, api_key="rift_test", retry=FAST_RETRY)


def test_paged_lists_are_read_to_their_last_page(scripted: list[ScriptedServer]) -> None:
    # The service pages webhooks and materializations newest first; the client follows every
    # next_cursor and keeps its own order (webhooks oldest first, materializations by α).
    newer = {**WEBHOOK, "id": "wh_2", "created_at": "2026-01-02T00:00:00Z"}
    made = {"id": "m_1", "job_id": "job_1", "alpha": 0.75, "status": "queued",
            "evaluate": False, "artifact": "tuned@0.75.safetensors", "artifact_url": None,
            "clean_accuracy": None, "robust_accuracy": None, "error": None,
            "created_at": "2026-01-02T00:00:00Z", "finished_at": None,
            "url": "/v1/jobs/job_1/materializations/m_1"}
    server, client = _scripted_client(
        scripted, ScriptedReply(200, {"items": [newer], "next_cursor": "c/1"}),
        ScriptedReply(200, {"items": [WEBHOOK], "next_cursor": None}),
        ScriptedReply(200, {"job_id": "job_1", "items": [made], "next_cursor": "c2"}),
        ScriptedReply(200, {"job_id": "job_1", "items": [{**made, "id": "m_2", "alpha": 0.25}],
                            "next_cursor": None}))
    with client:
        assert [h.id for h in client.list_webhooks()] == ["wh_1", "wh_2"]
        assert [m.alpha for m in client.list_materializations("job_1")] == [0.25, 0.75]
    assert [(r.method, r.path) for r in server.seen] == [
        ("GET", "/v1/webhooks"), ("GET", "/v1/webhooks?cursor=c%2F1"),
        ("GET", "/v1/jobs/job_1/materializations"),
        ("GET", "/v1/jobs/job_1/materializations?cursor=c2")]


def test_create_webhook_sends_the_registration_under_one_key(
        scripted: list[ScriptedServer]) -> None:
    server, client = _scripted_client(
        scripted, ScriptedReply(503, None, {"Retry-After": "0"}),
        ScriptedReply(201, {**WEBHOOK, "secret": "whsec_c2VjcmV0"}))
    with client:
        hook = client.create_webhook("https://hooks.example.com/rift", events=("job.failed",),
                                     description="team vision")
        assert hook.secret == "whsec_c2VjcmV0" and hook.id == "wh_1"
        assert hook.created_at.year == 2026
        # A 503 is retried with the same Idempotency-Key, drawn once per call.
        first, retried = server.seen
        assert (first.method, first.path) == ("POST", "/v1/webhooks")
        assert first.json() == {"url": "https://hooks.example.com/rift",
                                "events": ["job.failed"], "description": "team vision"}
        assert first.headers["idempotency-key"].startswith("rift-client-")
        assert retried.headers["idempotency-key"] == first.headers["idempotency-key"]
        assert retried.body == first.body
        # Without events or description, neither is sent (the service's default: all events).
        client.create_webhook("https://hooks.example.com/rift", idempotency_key="hook-1")
        assert server.seen[-1].json() == {"url": "https://hooks.example.com/rift"}
        assert server.seen[-1].headers["idempotency-key"] == "hook-1"
        other = client.create_webhook("https://hooks.example.com/rift")
        assert other.id == "wh_1"
        assert server.seen[-1].headers["idempotency-key"] != first.headers["idempotency-key"]


def test_list_get_delete_and_deliveries_parse_the_apis_answers(
        scripted: list[ScriptedServer]) -> None:
    server, client = _scripted_client(
        scripted, ScriptedReply(200, {"items": [WEBHOOK, {**WEBHOOK, "id": "wh_2"}]}),
        ScriptedReply(200, WEBHOOK), ScriptedReply(204), ScriptedReply(200, {"items": [DELIVERY]}))
    with client:
        assert [h.id for h in client.list_webhooks()] == ["wh_1", "wh_2"]
        assert client.get_webhook("wh/1") == Webhook.model_validate(WEBHOOK)
        assert client.delete_webhook("wh_1") is None
        [delivery] = client.webhook_deliveries("wh_1", limit=5)
    assert [(r.method, r.path) for r in server.seen] == [
        ("GET", "/v1/webhooks"), ("GET", "/v1/webhooks/wh%2F1"), ("DELETE", "/v1/webhooks/wh_1"),
        ("GET", "/v1/webhooks/wh_1/deliveries?limit=5")]
    assert delivery.id == "msg_1" and delivery.status == "pending" and not delivery.finished
    assert delivery.next_attempt_at is not None and delivery.last_status_code == 500
    assert [(a.attempt, a.status_code, a.duration_ms) for a in delivery.attempt_log] == [
        (1, None, 5000.0), (2, 500, 12.5)]


def test_deliveries_follow_the_cursor_until_limit(scripted: list[ScriptedServer]) -> None:
    """Before, one page was read: at most 100 messages, and ``limit`` above 100 was a 422."""
    server, client = _scripted_client(
        scripted,
        ScriptedReply(200, {"items": [{**DELIVERY, "id": f"msg_{i}"} for i in range(100)],
                            "next_cursor": "c1"}),
        ScriptedReply(200, {"items": [{**DELIVERY, "id": "msg_100"}, {**DELIVERY, "id": "x"}],
                            "next_cursor": "c2"}),
        ScriptedReply(200, {"items": [DELIVERY]}))
    with client:
        assert len(client.webhook_deliveries("wh_1", limit=101)) == 101
        # A service from before the log was paged answers without a cursor: one page.
        assert len(client.webhook_deliveries("wh_1", limit=150)) == 1
    assert [r.path for r in server.seen] == [
        "/v1/webhooks/wh_1/deliveries?limit=100",
        "/v1/webhooks/wh_1/deliveries?limit=1&cursor=c1",
        "/v1/webhooks/wh_1/deliveries?limit=100"]


@pytest.mark.parametrize(("reply", "error", "code"), [
    (ScriptedReply(404, {"error": {"code": "webhook_not_found", "message": "no webhook",
                                   "field": "webhook_id"}}), NotFoundError, "webhook_not_found"),
    (ScriptedReply(409, {"error": {"code": "webhook_limit_reached", "message": "20 webhooks",
                                   "field": "WEBHOOK_MAX_ENDPOINTS"}}), ConflictError,
     "webhook_limit_reached"),
    (ScriptedReply(422, {"error": {"code": "webhook_target_forbidden", "message": "private",
                                   "field": "url"}}), UnprocessableEntityError,
     "webhook_target_forbidden"),
], ids=["404", "409", "422"])
def test_webhook_calls_raise_the_apis_errors(scripted: list[ScriptedServer], reply: ScriptedReply,
                                             error: type[RiftAPIError], code: str) -> None:
    server, client = _scripted_client(scripted, reply)
    calls = (lambda: client.create_webhook("https://hooks.example.com/rift"),
             client.list_webhooks, lambda: client.get_webhook("wh_1"),
             lambda: client.delete_webhook("wh_1"), lambda: client.webhook_deliveries("wh_1"))
    with client:
        for call in calls:
            with pytest.raises(error) as raised:
                call()
            assert raised.value.code == code and raised.value.field == reply.body["error"]["field"]
    assert len(server.seen) == len(calls)  # none of them is retried


def test_webhook_answers_that_are_not_the_apis_and_arguments_that_cannot_be_sent(
        scripted: list[ScriptedServer]) -> None:
    server, client = _scripted_client(scripted, ScriptedReply(200, {"items": [{"id": 5}]}),
                                      ScriptedReply(200, WEBHOOK))
    with client:
        with pytest.raises(UnexpectedResponseError, match="list of Webhook"):
            client.list_webhooks()
        # A registration's answer must carry the secret.
        with pytest.raises(UnexpectedResponseError, match="CreatedWebhook"):
            client.create_webhook("https://hooks.example.com/rift")
        seen = len(server.seen)
        with pytest.raises(RiftUsageError, match="list of event types"):
            client.create_webhook("https://hooks.example.com/rift",
                                  events="job.failed")  # type: ignore[arg-type]
        with pytest.raises(RiftUsageError, match="Idempotency-Key"):
            client.create_webhook("https://hooks.example.com/rift", idempotency_key="run 42")
    assert len(server.seen) == seen  # refused before anything was sent
