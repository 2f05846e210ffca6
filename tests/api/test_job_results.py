"""A job's results over HTTP: the MRC table with the selected module flagged, the curves with the
chosen α flagged, and artifact downloads with Range support (206, 416)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from persistence.models import Artifact, EpochMetric, InterpolationPoint, Job, MRCRow
from persistence.storage import LocalObjectStore
from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint

pytestmark = pytest.mark.service

PAYLOAD = os.urandom(300_000)


@pytest.fixture
def job_id(api: Api, small_cnn_file: Path) -> str:
    """A job whose results were written as a worker would have."""
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    store = LocalObjectStore(api.settings.store_root)
    key = f"jobs/{job['id']}/artifacts/tuned.safetensors"
    stored = store.put_bytes(key, PAYLOAD)
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.selected_module = "conv2"
        row.chosen_alpha = 0.5
        row.metrics = {"before": {"clean_accuracy": 80.0}, "after": {"clean_accuracy": 82.0}}
        for position, (module, mrc) in enumerate([("conv1", 0.4), ("conv2", 0.01),
                                                  ("fc", 2.5)]):
            session.add(MRCRow(job_id=job["id"], position=position, module=module,
                               parameters=100 * (position + 1), mrc=mrc,
                               worst_robust_loss=1.0 + mrc, robust_accuracy_at_worst=40.0,
                               robust_accuracy_drop=mrc * 10, seconds=0.1))
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
    missing = api.client.get(f"/v1/jobs/{job['id']}/artifacts/tuned.safetensors")
    assert missing.status_code == 404 and error_of(missing)["field"] == "name"


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
    ({"Range": "bytes=0-1,5-6"}, 200),  # several ranges: ignored, as RFC 9110 allows
    ({"Range": "lines=1-2"}, 200),
    ({"Range": "bytes=9-3"}, 200),
    ({"Range": "bytes=" + "9" * 5000 + "-"}, 200),
    ({"Range": "bytes=0-9", "If-Range": '"not-the-etag"'}, 200),
])
def test_unsatisfiable_or_ignored_ranges(api: Api, job_id: str, headers: dict[str, Any],
                                         status: int) -> None:
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/tuned.safetensors", headers=headers)
    assert response.status_code == status
    if status == 416:
        assert response.headers["content-range"] == f"bytes */{len(PAYLOAD)}"
        assert error_of(response)["code"] == "range_not_satisfiable"
    else:
        assert response.content == PAYLOAD
