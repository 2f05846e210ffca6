"""ETags on the JSON answers to GET (:mod:`api.json_validators`): a poller or a cache that holds
the current answer gets 304 with no body, and a new tag once the answer changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.json_validators import json_etag
from tests.api.helpers import Api, digits_config, upload_checkpoint

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_a_json_answer_is_tagged_and_revalidated(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job_id = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                               "config": digits_config()}).json()["id"]
    job = f"/v1/jobs/{job_id}"
    for path in (job, "/v1/jobs", f"{job}/mrc", f"{job}/curves", f"{job}/artifacts",
                 f"{job}/events", "/v1/checkpoints", "/v1/datasets/digits"):
        first = api.client.get(path)
        assert first.status_code == 200, (path, first.text)
        # Before: no ETag on any JSON answer, and If-None-Match was ignored (200, whole body).
        etag = first.headers["etag"]
        assert etag == json_etag(first.content), path
        assert first.headers["cache-control"] == "no-cache"
        for method in ("GET", "HEAD"):
            for held in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                again = api.client.request(method, path, headers={"If-None-Match": held})
                assert again.status_code == 304, (method, path, held, again.text)
                assert again.content == b"" and again.headers["etag"] == etag
                assert "content-type" not in again.headers
        stale = api.client.get(path, headers={"If-None-Match": '"other"'})
        assert stale.status_code == 200 and stale.content == first.content, path

    held = api.client.get(job).headers["etag"]
    assert api.client.post(f"{job}/cancel").status_code == 200
    changed = api.client.get(job, headers={"If-None-Match": held})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] not in (held, None)

    # Errors and non-JSON answers are left as they were; a download keeps its own validator.
    missing = api.client.get("/v1/jobs/0123456789abcdef0123456789abcdef",
                             headers={"If-None-Match": "*"})
    assert missing.status_code == 404 and "etag" not in missing.headers
    report = api.client.get(f"{job}/report")
    assert report.status_code == 200 and "etag" not in report.headers
