"""Several ranges in one ``Range`` header (RFC 9110 §14.6): a 206 ``multipart/byteranges`` answer
over real HTTP, parsed part by part, from the local store and from S3 (moto's standalone
server); coalescing, order, the bound on the number of ranges, and what is ignored or refused."""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api.byte_ranges import MAX_RANGES, coalesce
from persistence.models import Artifact, Job
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher, digits_config, upload_checkpoint
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service

# Random bytes, with the delimiter's look-alikes inside: a part's data must come back exact.
PAYLOAD = os.urandom(50_000) + b"\r\n--\r\n\r\n" + os.urandom(50_000)
NAME = "tuned.safetensors"


def _succeeded_job_with_artifact(api: Api, small_cnn_file: Path) -> str:
    """A succeeded job holding ``PAYLOAD`` as an artifact in the API's own store."""
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    stored = api.settings.build_object_store().put_bytes(f"jobs/{job['id']}/artifacts/{NAME}",
                                                         PAYLOAD)
    with api.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        session.add(Artifact(job_id=job["id"], name=NAME, storage_key=stored.key,
                             size=stored.size, sha256=stored.sha256,
                             content_type="application/octet-stream"))
        session.commit()
    return str(job["id"])


def parse_byteranges(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """The parts of a ``multipart/byteranges`` answer, as (Content-Type, Content-Range, data),
    read strictly by RFC 2046's framing (the first delimiter, CRLF before each later one, the
    close delimiter and nothing but CRLF after it)."""
    match = re.fullmatch(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})",
                         response.headers["content-type"])
    assert match is not None, response.headers["content-type"]
    delimiter = b"--" + match.group(1).encode("ascii")
    body = response.content
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2:-(len(delimiter) + 6)]
    parts = []
    for part in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, data = part.split(b"\r\n\r\n", 1)
        fields = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        assert set(fields) == {"Content-Type", "Content-Range"}, fields
        parts.append((fields["Content-Type"], fields["Content-Range"], data))
    return parts


def _check_multipart(response: httpx.Response, ranges: list[tuple[int, int]]) -> None:
    """A 206 multipart answer with exactly ``ranges`` (inclusive bounds) of ``PAYLOAD``."""
    assert response.status_code == 206, response.text[:300]
    assert "content-range" not in response.headers  # the parts carry theirs
    assert response.headers["content-length"] == str(len(response.content))
    assert parse_byteranges(response) == [
        ("application/octet-stream", f"bytes {first}-{last}/{len(PAYLOAD)}",
         PAYLOAD[first:last + 1]) for first, last in ranges]


def test_several_ranges_answer_multipart_byteranges(api: Api, small_cnn_file: Path) -> None:
    job_id = _succeeded_job_with_artifact(api, small_cnn_file)
    url = f"/v1/jobs/{job_id}/artifacts/{NAME}"
    size = len(PAYLOAD)
    asked = api.client.get(url, headers={"Range": "bytes=0-99,50000-50009, -100"})
    _check_multipart(asked, [(0, 99), (50000, 50009), (size - 100, size - 1)])
    # The standard library's MIME parser reads the same parts (an independent reader).
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + asked.headers["content-type"].encode() + b"\r\n\r\n" + asked.content)
    assert [part.get_payload(decode=True) for part in message.iter_parts()] == [
        PAYLOAD[0:100], PAYLOAD[50000:50010], PAYLOAD[-100:]]

    # The order asked is kept; empty list items are allowed; a fresh boundary each time.
    reordered = api.client.get(url, headers={"Range": "bytes=-10,,0-4"})
    _check_multipart(reordered, [(size - 10, size - 1), (0, 4)])
    assert reordered.headers["content-type"] != asked.headers["content-type"]
    # Ranges outside the file are dropped, the rest answered.
    _check_multipart(api.client.get(url, headers={"Range": f"bytes=0-0,{size}-,9-9"}),
                     [(0, 0), (9, 9)])
    # As many as allowed.
    most = ",".join(f"{10 * i}-{10 * i + 4}" for i in range(MAX_RANGES))
    _check_multipart(api.client.get(url, headers={"Range": f"bytes={most}"}),
                     [(10 * i, 10 * i + 4) for i in range(MAX_RANGES)])
    # HEAD: the same headers, no body.
    head = api.client.head(url, headers={"Range": "bytes=0-99,200-299"})
    got = api.client.get(url, headers={"Range": "bytes=0-99,200-299"})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-99,50-149", 0, 150),  # overlapping: merged
    ("bytes=10-19,0-9", 0, 20),  # adjacent: merged
    ("bytes=0-9,0-9,0-9", 0, 10),  # the same range asked again
    ("bytes=5-9,0-" + "9" * 30, 0, len(PAYLOAD)),
    (f"bytes=100-199,{len(PAYLOAD) + 5}-", 100, 200),  # the other lies outside the file
])
def test_ranges_that_merge_or_drop_to_one_answer_a_single_part(
        api: Api, small_cnn_file: Path, header: str, start: int, end: int) -> None:
    job_id = _succeeded_job_with_artifact(api, small_cnn_file)
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/{NAME}", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(PAYLOAD)}"
    assert response.content == PAYLOAD[start:end]


@pytest.mark.parametrize(("header", "status"), [
    ("bytes=" + ",".join(f"{10 * i}-{10 * i + 4}" for i in range(MAX_RANGES + 1)), 200),
    ("bytes=" + ",".join(["0-1"] * 5000), 200),  # a long header is not split whole
    ("bytes=0-9,9-3", 200),  # one invalid range-spec: the header is ignored
    ("bytes=0-9,x-y", 200),
    ("bytes=0-9,-", 200),
    ("bytes=,,", 200),
    (f"bytes={len(PAYLOAD)}-,-0", 416),  # none inside the file
])
def test_too_many_or_malformed_ranges_send_the_file_and_none_inside_is_416(
        api: Api, small_cnn_file: Path, header: str, status: int) -> None:
    job_id = _succeeded_job_with_artifact(api, small_cnn_file)
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/{NAME}", headers={"Range": header})
    assert response.status_code == status
    if status == 200:
        assert response.content == PAYLOAD
    else:
        assert response.headers["content-range"] == f"bytes */{len(PAYLOAD)}"
        assert response.json()["error"]["code"] == "range_not_satisfiable"


def test_if_range_of_another_version_sends_the_whole_file(api: Api, small_cnn_file: Path) -> None:
    job_id = _succeeded_job_with_artifact(api, small_cnn_file)
    url = f"/v1/jobs/{job_id}/artifacts/{NAME}"
    etag = api.client.head(url).headers["etag"]
    kept = api.client.get(url, headers={"Range": "bytes=0-1,4-5", "If-Range": etag})
    _check_multipart(kept, [(0, 1), (4, 5)])
    other = api.client.get(url, headers={"Range": "bytes=0-1,4-5", "If-Range": '"other"'})
    assert other.status_code == 200 and other.content == PAYLOAD


def test_several_ranges_from_s3_are_streamed_part_by_part(
        api_settings: Settings, moto_s3_endpoint: str, start_api: Callable[..., Api],
        small_cnn_file: Path) -> None:
    env = {"DATABASE_URL": api_settings.database_url, "BROKER_URL": "memory://",
           "STORE_KIND": "s3", "S3_BUCKET": f"rift-{uuid.uuid4().hex[:10]}",
           "S3_ENDPOINT_URL": moto_s3_endpoint, "S3_ACCESS_KEY": "testing",
           "S3_SECRET_KEY": "testing", "S3_CREATE_BUCKET": "true",
           "S3_REDIRECT_DOWNLOADS": "true", "WORK_DIR": str(api_settings.work_dir)}
    api = start_api(settings_from_env(env), dispatcher=RecordingDispatcher())
    job_id = _succeeded_job_with_artifact(api, small_cnn_file)
    url = f"/v1/jobs/{job_id}/artifacts/{NAME}"
    size = len(PAYLOAD)
    # One range keeps the redirect (S3 answers it); several are streamed by the API, since a
    # presigned URL answers one range per request.
    assert api.client.get(url, headers={"Range": "bytes=0-9"}).status_code == 307
    streamed = api.client.get(url, headers={"Range": "bytes=0-99, 60000-60099,-7"})
    _check_multipart(streamed, [(0, 99), (60000, 60099), (size - 7, size - 1)])
    merged = api.client.get(url, params={"redirect": "false"},
                            headers={"Range": "bytes=0-99,100-199"})
    assert merged.status_code == 206 and merged.content == PAYLOAD[:200]
    assert merged.headers["content-range"] == f"bytes 0-199/{size}"
    # Asked for explicitly, the redirect is given all the same.
    assert api.client.get(url, params={"redirect": "true"},
                          headers={"Range": "bytes=0-9,20-29"}).status_code == 307


def test_coalescing_keeps_the_order_asked() -> None:
    assert coalesce([(50, 60), (0, 10), (55, 70), (10, 20)]) == [(50, 70), (0, 20)]
    assert coalesce([(30, 40), (0, 10), (20, 25)]) == [(30, 40), (0, 10), (20, 25)]
    assert coalesce([(0, 10), (20, 30), (5, 25)]) == [(0, 30)]
