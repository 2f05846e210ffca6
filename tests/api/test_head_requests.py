"""HEAD on the GET routes (:mod:`api.head_requests`): the GET's status and headers without a
body, also for streamed answers (an artifact, a live event stream that would never end)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from persistence.models import Artifact
from persistence.storage import LocalObjectStore
from tests.api.helpers import Api, digits_config, make_key, upload_checkpoint

pytestmark = pytest.mark.service

PAYLOAD = b"\x01" * 5000


@pytest.fixture
def job_id(api: Api, small_cnn_file: Path) -> str:
    """A queued job with one stored artifact."""
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    key = f"jobs/{job['id']}/artifacts/tuned.safetensors"
    stored = LocalObjectStore(api.settings.store_root).put_bytes(key, PAYLOAD)
    with api.sessions() as session:
        session.add(Artifact(job_id=job["id"], name="tuned.safetensors", storage_key=key,
                             size=stored.size, sha256=stored.sha256,
                             content_type="application/octet-stream"))
        session.commit()
    return str(job["id"])


def test_head_answers_like_get_without_a_body(api: Api, job_id: str) -> None:
    # Before: every one of these was 405 Method Not Allowed.
    for path in ("/v1/jobs", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/artifacts",
                 f"/v1/jobs/{job_id}/report", "/healthz", "/v1/healthz"):
        got = api.client.get(path)
        head = api.client.head(path)
        assert head.status_code == got.status_code == 200, (path, head.text)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == str(len(got.content)), path

    artifact = f"/v1/jobs/{job_id}/artifacts/tuned.safetensors"
    head = api.client.head(artifact)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PAYLOAD))
    assert head.headers["etag"] == api.client.get(artifact).headers["etag"]
    partial = api.client.head(artifact, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.headers["content-length"] == "10"

    # Errors keep their status; HEAD needs a key and the read scope, like GET.
    assert api.client.head("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    with api.client_for(None) as anonymous:
        assert anonymous.head("/v1/jobs").status_code == 401
    _, reader = make_key(api.sessions, "tests", ("read",))
    with api.client_for(reader) as client:
        assert client.head(f"/v1/jobs/{job_id}").status_code == 200


def test_head_of_a_live_event_stream_ends_after_the_headers(api: Api, job_id: str) -> None:
    # The job is queued, so the GET stream would stay open; HEAD must not.
    # More HEADs than the key's max_streams_per_key (10): each stream's slot is given back.
    with httpx.Client(base_url=api.url, timeout=10,
                      headers={"Authorization": f"Bearer {api.key}"}) as client:
        for _ in range(api.settings.default_max_streams_per_key + 2):
            head = client.head(f"/v1/jobs/{job_id}/events",
                               headers={"Accept": "text/event-stream"})
            assert head.status_code == 200, head.text
            assert head.headers["content-type"].startswith("text/event-stream")
            assert head.content == b""
