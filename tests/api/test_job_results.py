"""A job's results over HTTP: the MRC table with the selected module flagged, the curves with the
chosen α flagged, and artifact downloads with Range support (206, 416), conditional GET (304,
If-Range), a missing artifact of an unfinished job (409 naming its status) and a job deleted
while its artifact is being opened."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from persistence.models import Artifact, EpochMetric, InterpolationPoint, Job, MRCRow
from persistence.settings import Settings
from persistence.storage import LocalObjectStore
from tests.api.helpers import Api, RecordingDispatcher, digits_config, error_of, upload_checkpoint

pytestmark = pytest.mark.service

PAYLOAD = os.urandom(300_000)


@pytest.fixture
def job_id(api: Api, small_cnn_file: Path) -> str:
    """A succeeded job whose results were written as a worker would have."""
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    store = LocalObjectStore(api.settings.store_root)
    key = f"jobs/{job['id']}/artifacts/tuned.safetensors"
    stored = store.put_bytes(key, PAYLOAD)
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        row.selected_module = "conv2"
        row.chosen_alpha = 0.5
        row.metrics = {"before": {"clean_accuracy": 80.0}, "after": {"clean_accuracy": 82.0}}
        for position, (module, mrc) in enumerate([("conv1", 0.4), ("conv2", 0.01),
                                                  ("fc", 2.5)]):
            session.add(MRCRow(job_id=job["id"], position=position, module=module,
                               parameters=100 * (position + 1), mrc=mrc,
                               worst_robust_loss=1.0 + mrc, robust_accuracy_at_worst=40.0,
                               robust_accuracy_drop=mrc * 10, seconds=0.1,
                               # fc: a lower bound (mrc.table "selection"); conv1: from before
                               passes=None if module == "conv1" else 1 if module == "fc" else 3,
                               exact=None if module == "conv1" else module != "fc"))
        for epoch in (1, 2):
            session.add(EpochMetric(job_id=job["id"], epoch=epoch, lr=0.01, train_loss=0.5,
                                    train_accuracy=90.0, val_accuracy=85.0 + epoch, seconds=1.0))
        for position, alpha in enumerate([0.0, 0.5, 1.0]):
            session.add(InterpolationPoint(job_id=job["id"], position=position, alpha=alpha,
                                           clean_accuracy=80.0 + alpha, robust_accuracy=40.0))
        session.add(Artifact(job_id=job["id"], name="tuned.safetensors", storage_key=key,
                             size=stored.size, sha256=stored.sha256,
                             content_type="application/octet-stream"))
        session.commit()
    return str(job["id"])


def test_mrc_table_flags_the_selected_module(api: Api, job_id: str) -> None:
    table = api.client.get(f"/v1/jobs/{job_id}/mrc").json()
    assert table["selected_module"] == "conv2"
    assert [(r["module"], r["selected"]) for r in table["rows"]] == [
        ("conv1", False), ("conv2", True), ("fc", False)]
    assert table["rows"][2]["mrc"] == 2.5
    assert [(r["passes"], r["exact"]) for r in table["rows"]] == [
        (None, None), (3, True), (1, False)]


def test_curves_flag_the_chosen_alpha(api: Api, job_id: str) -> None:
    curves = api.client.get(f"/v1/jobs/{job_id}/curves").json()
    assert [e["val_accuracy"] for e in curves["epochs"]] == [86.0, 87.0]
    assert [(p["alpha"], p["chosen"]) for p in curves["interpolation"]] == [
        (0.0, False), (0.5, True), (1.0, False)]
    assert curves["chosen_alpha"] == 0.5
    assert curves["metrics"]["after"]["clean_accuracy"] == 82.0


def test_results_of_a_job_without_any(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    assert api.client.get(f"/v1/jobs/{job['id']}/mrc").json()["rows"] == []
    curves = api.client.get(f"/v1/jobs/{job['id']}/curves").json()
    assert curves["epochs"] == [] and curves["interpolation"] == []
    assert api.client.get(f"/v1/jobs/{job['id']}/artifacts").json()["items"] == []
    # Asked too early: a 409 naming the job's status, not "no such file".
    missing = api.client.get(f"/v1/jobs/{job['id']}/artifacts/tuned.safetensors")
    assert missing.status_code == 409
    assert (error_of(missing)["code"], error_of(missing)["field"]) == ("job_not_succeeded",
                                                                       "job_id")
    assert "is queued" in error_of(missing)["message"]


def test_artifact_list_and_full_download(api: Api, job_id: str) -> None:
    items = api.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert [(a["name"], a["size"]) for a in items] == [("tuned.safetensors", len(PAYLOAD))]
    assert items[0]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    response = api.client.get(items[0]["url"])
    assert response.status_code == 200
    assert response.content == PAYLOAD
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(PAYLOAD))
    assert response.headers["etag"] == f'"{items[0]["sha256"]}"'
    # A local store has no URLs: asking for a redirect still streams.
    assert api.client.get(items[0]["url"], params={"redirect": "true"}).content == PAYLOAD
    other = api.client.get(f"/v1/jobs/{job_id}/artifacts/nope.bin")
    assert other.status_code == 404 and "tuned.safetensors" in error_of(other)["message"]
    for name in ("%00", "x" * 100, "a%20b"):
        odd = api.client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert odd.status_code == 404 and error_of(odd)["field"] == "name"
    traversal = api.client.get(f"/v1/jobs/{job_id}/artifacts/..%2F..%2Fetc%2Fpasswd")
    assert traversal.status_code == 404


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-99", 0, 100),
    ("bytes=1000-", 1000, len(PAYLOAD)),
    ("bytes=-500", len(PAYLOAD) - 500, len(PAYLOAD)),
    ("bytes=299990-400000", 299990, len(PAYLOAD)),
    ("bytes=0-0", 0, 1),
    # Bounds of any length: an end past the file is the file's end, a suffix longer than the
    # file the whole file (before: over 18 digits, the header was ignored: 200).
    ("bytes=10-" + "9" * 40, 10, len(PAYLOAD)),
    ("bytes=-" + "9" * 5000, 0, len(PAYLOAD)),
    ("bytes=" + "0" * 25 + "7-" + "0" * 25 + "8", 7, 9),
])
def test_range_downloads(api: Api, job_id: str, header: str, start: int, end: int) -> None:
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/tuned.safetensors",
                              headers={"Range": header})
    assert response.status_code == 206
    assert response.content == PAYLOAD[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(PAYLOAD)}"
    assert response.headers["content-length"] == str(end - start)


@pytest.mark.parametrize(("headers", "status"), [
    ({"Range": f"bytes={len(PAYLOAD)}-"}, 416),
    ({"Range": "bytes=-0"}, 416),
    ({"Range": "bytes=0-1,5-3"}, 200),  # an invalid range-spec among several: all ignored
    ({"Range": "lines=1-2"}, 200),
    ({"Range": "bytes=9-3"}, 200),
    # A start of any length past the end is a 416 like a short one (before: over 18 digits the
    # header was ignored and the whole file came back, 200).
    ({"Range": "bytes=" + "9" * 5000 + "-"}, 416),
    ({"Range": "bytes=" + "0" * 30 + "300000-"}, 416),
    ({"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}, 200),
])
def test_unsatisfiable_or_ignored_ranges(api: Api, job_id: str, headers: dict[str, Any],
                                         status: int) -> None:
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/tuned.safetensors", headers=headers)
    assert response.status_code == status
    if status == 416:
        assert response.headers["content-range"] == f"bytes */{len(PAYLOAD)}"
        assert error_of(response)["code"] == "range_not_satisfiable"
        assert len(error_of(response)["message"]) < 200  # the header is not echoed whole
    else:
        assert response.content == PAYLOAD


def _set_status(api: Api, job_id: str, status: str) -> None:
    with api.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status
        session.commit()


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled", "succeeded"])
def test_missing_artifact_names_the_job_status(api: Api, job_id: str, status: str) -> None:
    _set_status(api, job_id, status)
    missing = api.client.get(f"/v1/jobs/{job_id}/artifacts/finetuned.safetensors")
    error = error_of(missing)
    if status == "succeeded":
        assert missing.status_code == 404
        assert (error["code"], error["field"]) == ("artifact_not_found", "name")
    else:
        assert missing.status_code == 409, missing.text
        assert (error["code"], error["field"]) == ("job_not_succeeded", "job_id")
        assert error["status"] == status and f"is {status}" in error["message"]
    assert "tuned.safetensors" in error["message"]  # what there is, either way
    # What the job does have is served whatever its status (a failed job's MRC table, say).
    assert api.client.get(f"/v1/jobs/{job_id}/artifacts/tuned.safetensors").content == PAYLOAD


def test_conditional_downloads(api: Api, job_id: str) -> None:
    url = f"/v1/jobs/{job_id}/artifacts/tuned.safetensors"
    first = api.client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    with api.sessions() as session:
        created = session.query(Artifact).filter_by(job_id=job_id).one().created_at
    assert modified == format_datetime(created.replace(microsecond=0), usegmt=True)
    later = "Fri, 01 Jan 2100 00:00:00 GMT"
    earlier = "Thu, 01 Jan 2015 00:00:00 GMT"
    not_modified: list[dict[str, str]] = [
        {"If-None-Match": etag}, {"If-None-Match": f"W/{etag}"}, {"If-None-Match": "*"},
        {"If-None-Match": f'"other", {etag}'}, {"If-Modified-Since": modified},
        {"If-Modified-Since": later},
        {"If-None-Match": etag, "Range": "bytes=0-9"},  # 304 is decided before the range
    ]
    for headers in not_modified:
        for method in ("GET", "HEAD"):
            response = api.client.request(method, url, headers=headers)
            assert response.status_code == 304, (method, headers)
            assert response.content == b""
            assert (response.headers["etag"], response.headers["last-modified"]) == (etag,
                                                                                   modified)
    modified_since: list[dict[str, str]] = [
        {"If-None-Match": '"other"'}, {"If-Modified-Since": earlier},
        {"If-Modified-Since": "not a date"},
        # If-None-Match decides when present: If-Modified-Since is ignored (RFC 9110 13.1.3).
        {"If-None-Match": '"other"', "If-Modified-Since": later},
    ]
    for headers in modified_since:
        response = api.client.get(url, headers=headers)
        assert response.status_code == 200 and response.content == PAYLOAD, headers
    # If-Range: the strong ETag or exactly the Last-Modified date keeps the range; a weak tag,
    # another tag or another date sends the whole file.
    for if_range, status in [(etag, 206), (modified, 206), (f"W/{etag}", 200),
                             ('"other"', 200), (earlier, 200), ("garbage", 200)]:
        response = api.client.get(url, headers={"Range": "bytes=10-19", "If-Range": if_range})
        assert response.status_code == status, if_range
        assert response.content == (PAYLOAD[10:20] if status == 206 else PAYLOAD)
    # If-Match / If-Unmodified-Since (RFC 9110 13.1.1, 13.1.4): a client resuming the file it
    # began gets 412 naming the header if the name now holds another file. Before: ignored,
    # 200 (or 206) with the other file's bytes.
    for headers, field in [({"If-Match": '"other"'}, "If-Match"),
                           ({"If-Match": f"W/{etag}"}, "If-Match"),  # compared strongly
                           ({"If-Match": '"other"', "Range": "bytes=10-19"}, "If-Match"),
                           ({"If-Unmodified-Since": earlier}, "If-Unmodified-Since")]:
        for method in ("GET", "HEAD"):
            response = api.client.request(method, url, headers=headers)
            assert response.status_code == 412, (method, headers)
            assert response.headers["etag"] == etag
            if method == "GET":
                error = error_of(response)
                assert (error["code"], error["field"]) == ("precondition_failed", field)
    for headers in [{"If-Match": etag}, {"If-Match": "*"}, {"If-Match": f'"other", {etag}'},
                    {"If-Unmodified-Since": modified}, {"If-Unmodified-Since": later},
                    {"If-Unmodified-Since": "not a date"},
                    # If-Match decides when present: If-Unmodified-Since is then ignored.
                    {"If-Match": etag, "If-Unmodified-Since": earlier}]:
        response = api.client.get(url, headers=headers)
        assert response.status_code == 200 and response.content == PAYLOAD, headers
    resumed = api.client.get(url, headers={"If-Match": etag, "Range": "bytes=10-19"})
    assert resumed.status_code == 206 and resumed.content == PAYLOAD[10:20]


class DeletingStore(LocalObjectStore):
    """A local store that runs ``before_read`` when a download opens an object: a job deleted
    between the API's lookup of the artifact and the opening of its file."""

    before_read: Callable[[], None] | None = None

    def iter_range(self, key: str, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if self.before_read is not None:
            hook, self.before_read = self.before_read, None
            hook()
        return super().iter_range(key, start, end, chunk_size)


def test_job_deleted_while_its_artifact_is_opened(api_settings: Settings,
                                                  start_api: Callable[..., Api],
                                                  small_cnn_file: Path) -> None:
    store = DeletingStore(api_settings.store_root)
    api = start_api(api_settings, dispatcher=RecordingDispatcher(), store=store)
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    stored = store.put_bytes(f"jobs/{job['id']}/artifacts/mrc.csv", b"module,mrc\nfc,0.1\n")
    with api.sessions() as session:
        session.add(Artifact(job_id=job["id"], name="mrc.csv", storage_key=stored.key,
                             size=stored.size, sha256=stored.sha256, content_type="text/csv"))
        session.commit()
    _set_status(api, job["id"], "succeeded")

    def delete_the_job() -> None:
        assert api.client.delete(f"/v1/jobs/{job['id']}").status_code == 204

    store.before_read = delete_the_job
    response = api.client.get(f"/v1/jobs/{job['id']}/artifacts/mrc.csv")
    # Before: 503 object_missing, as if the store had lost a file the database still names.
    assert response.status_code == 404, response.text
    assert (error_of(response)["code"], error_of(response)["field"]) == ("job_not_found",
                                                                         "job_id")


def _candidate_result(module: str, chosen_alpha: float, key: str, payload: bytes) -> dict[str, Any]:
    """A finished candidate's recorded result, as ``worker.candidates`` records it."""
    return {"outcome": {"module": module, "lr": 0.01, "chosen_alpha": chosen_alpha,
                        "clean_accuracy": 81.0, "robust_accuracy": 40.0, "best_epoch": 1,
                        "points": [{"alpha": 0.0, "clean_accuracy": 80.0,
                                    "robust_accuracy": 40.0},
                                   {"alpha": chosen_alpha, "clean_accuracy": 81.0,
                                    "robust_accuracy": 40.0}]},
            "finetuned": {"key": key, "size": len(payload),
                          "sha256": hashlib.sha256(payload).hexdigest(),
                          "content_type": "application/octet-stream"}}


def test_a_sweep_candidates_weights_are_the_jobs_artifact_or_said_deleted(
        api: Api, job_id: str) -> None:
    from persistence.models import SweepCandidate, utcnow
    from persistence.stage_shards import forget_discarded_weights

    store = LocalObjectStore(api.settings.store_root)
    thetas = [os.urandom(1000 + i) for i in range(3)]
    keys = [f"jobs/{job_id}/finetune/attempt-1/candidate-{i}.attempt-1.finetuned.safetensors"
            for i in range(3)]
    stored = store.put_bytes(keys[1], thetas[1])  # the winner's, kept
    with api.sessions() as session:
        for index, module in enumerate(["conv1", "conv2", "fc"]):
            done = index < 2  # candidate 2 never finished (its result is still null)
            session.add(SweepCandidate(
                job_id=job_id, candidate=index, module=module, lr=0.01,
                status="done" if done else "running", attempts=1, created_at=utcnow(),
                result=_candidate_result(module, 0.5, keys[index], thetas[index])
                if done else None))
        session.commit()

    def candidates() -> list[dict[str, Any]]:
        answer = api.client.get(f"/v1/jobs/{job_id}/curves")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["candidates"])

    # No pick yet: nobody's θ_FT is downloadable, and none is said deleted.
    before = candidates()
    assert [c["finetuned"] and (c["finetuned"]["available"], c["finetuned"]["deleted"])
            for c in before] == [(False, False), (False, False), None]
    assert "only if the sweep picks it" in before[0]["finetuned"]["reason"]

    # The pick: candidate 1's θ_FT is the job's finetuned.safetensors.
    with api.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.metrics = {**(job.metrics or {}), "sweep": {"chosen": 1, "candidates": 3}}
        session.add(Artifact(job_id=job_id, name="finetuned.safetensors", storage_key=keys[1],
                             size=stored.size, sha256=stored.sha256,
                             content_type="application/octet-stream"))
        session.commit()
    picked = candidates()
    # A row recorded before its key was cleared reads as deleted all the same: the answer
    # follows the pick, never the recorded key.
    for answer in (picked, None):
        if answer is None:
            with api.sessions() as session:
                assert forget_discarded_weights(session, job_id, winner=1) == 1
                assert forget_discarded_weights(session, job_id, winner=1) == 0  # once
            answer = candidates()
        loser, winner, unfinished = (c["finetuned"] for c in answer)
        assert loser == {"available": False, "artifact": None, "url": None,
                         "size": len(thetas[0]),
                         "sha256": hashlib.sha256(thetas[0]).hexdigest(), "deleted": True,
                         "reason": "deleted once the sweep picked candidate 1: only the chosen "
                                   "candidate's θ_FT is kept (the job's artifact "
                                   "finetuned.safetensors)"}
        assert winner["available"] and not winner["deleted"] and winner["reason"] is None
        assert (winner["artifact"], winner["size"], winner["sha256"]) == (
            "finetuned.safetensors", len(thetas[1]), hashlib.sha256(thetas[1]).hexdigest())
        assert api.client.get(winner["url"]).content == thetas[1]
        assert unfinished is None
        assert [c["points"] for c in answer] == [c["points"] for c in picked]  # figures stay

    # The database no longer names the deleted file; the winner's row is untouched.
    with api.sessions() as session:
        rows = {row.candidate: row.result for row in session.query(SweepCandidate)
                .filter_by(job_id=job_id)}
    assert rows[0] is not None and rows[0]["finetuned"]["key"] is None
    assert rows[0]["finetuned"]["deleted"] is True
    assert rows[0]["outcome"]["chosen_alpha"] == 0.5
    assert rows[1] == _candidate_result("conv2", 0.5, keys[1], thetas[1])
    assert rows[2] is None
