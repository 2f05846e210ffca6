"""Request bodies with a ``Content-Encoding`` (:mod:`api.content_encoding`) and boolean query
parameters (:mod:`api.request_input`), over HTTP against the test app (SQLite: neither touches
the database beyond the rows a request writes)."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import zlib
from pathlib import Path
from typing import Any

import pytest

from api.request_input import BOOLEAN_WORDS
from tests.api.helpers import (
    Api,
    RecordingDispatcher,
    digits_config,
    error_of,
    make_key,
    upload_checkpoint,
)
from tests.api.test_request_input import api_routes

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

MIB = 1024 * 1024


def encoded(body: bytes, coding: str) -> bytes:
    return gzip.compress(body) if coding == "gzip" else zlib.compress(body)


def post(api: Api, path: str, body: bytes, coding: str, content_type: str,
         **params: str) -> Any:
    return api.client.post(path, content=body, params=params,
                           headers={"Content-Type": content_type, "Content-Encoding": coding})


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_json_bodies_are_decoded(api: Api, small_cnn_file: Path, coding: str) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    spec = json.dumps({"checkpoint_id": checkpoint["id"], "config": digits_config(),
                       "labels": {"sent": coding}}).encode()
    # POST /v1/jobs reads its JSON itself; before, the compressed bytes were parsed (a 422).
    created = post(api, "/v1/jobs", encoded(spec, coding), coding, "application/json")
    assert created.status_code == 201, created.text
    assert created.json()["labels"] == {"sent": coding}
    # A body FastAPI reads (an admin project), and the strict rules still apply to what decodes.
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        made = admin.post("/v1/admin/projects", content=encoded(b'{"name": "zipped"}', coding),
                          headers={"Content-Type": "application/json",
                                   "Content-Encoding": coding.upper()})
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "zipped"
        nan = admin.post("/v1/admin/projects", content=encoded(b'{"name": NaN}', coding),
                         headers={"Content-Type": "application/json",
                                  "Content-Encoding": coding})
        assert nan.status_code == 422 and "NaN" in nan.text, nan.text


def test_a_compressed_upload_stores_the_decoded_file(api: Api, small_cnn_file: Path) -> None:
    data = small_cnn_file.read_bytes()
    # Two gzip members one after the other are one body (RFC 1952).
    half = len(data) // 2
    body = gzip.compress(data[:half]) + gzip.compress(data[half:])
    raw = post(api, "/v1/checkpoints", body, "gzip", "application/octet-stream",
               filename="small.safetensors")
    assert raw.status_code == 201, raw.text
    # The hash and size are the file's (what sha256sum of it says), not the wire's.
    assert raw.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert raw.json()["size"] == len(data)
    # A multipart job with its checkpoint, compressed whole.
    multipart = api.client.build_request(
        "POST", "/v1/jobs", files={"checkpoint": ("c.safetensors", data)},
        data={"spec": json.dumps({"config": digits_config()})})
    form = multipart.read()
    created = api.client.post("/v1/jobs", content=gzip.compress(form), headers={
        "Content-Type": multipart.headers["Content-Type"], "Content-Encoding": "gzip"})
    assert created.status_code == 201, created.text


def test_limits_count_decoded_bytes_and_bad_data_is_named(api: Api) -> None:
    # 3 MiB of zeros compress to a few KiB: the 2 MiB upload limit still refuses them, and the
    # JSON routes' 1 MiB applies to the decoded body.
    bomb = gzip.compress(bytes(3 * MIB))
    assert len(bomb) < 64 * 1024
    upload = post(api, "/v1/checkpoints", bomb, "gzip", "application/octet-stream",
                  filename="zeros.safetensors")
    assert upload.status_code == 413, upload.text
    assert error_of(upload)["field"] == "file"
    api.assert_nothing_stored()
    big_json = gzip.compress(b'{"url": "https://example.com/' + b"a" * (2 * MIB) + b'"}')
    for path in ("/v1/jobs", "/v1/webhooks"):
        response = post(api, path, big_json, "gzip", "application/json")
        assert response.status_code == 413, (path, response.text)
        assert error_of(response)["field"] == "body"
        assert error_of(response)["limit_bytes"] == MIB
    # The same body sent as it is: the same limit (FastAPI would otherwise hold any size).
    plain_json = b'{"url": "https://example.com/' + b"a" * (2 * MIB) + b'"}'
    # An admin key for the admin route: the key and its scope are checked before the body
    # (tests/api/test_auth_matrix.py), so this project's key gets its 403 there first.
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        for path in ("/v1/jobs", "/v1/webhooks", "/v1/admin/projects"):
            client = admin if path.startswith("/v1/admin/") else api.client
            response = client.post(path, content=plain_json,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (path, response.text)
            assert (error_of(response)["field"],
                    error_of(response)["limit_bytes"]) == ("body", MIB)
    # Bytes that are not gzip, and a stream cut short: 400 naming the header, never a 500.
    for body in (b'{"name": "x"}', gzip.compress(b'{"url": "https://example.com/"}')[:-12]):
        for path in ("/v1/jobs", "/v1/webhooks"):
            response = post(api, path, body, "gzip", "application/json")
            assert response.status_code == 400, (path, response.text)
            error = error_of(response)
            assert (error["code"], error["field"]) == ("invalid_encoded_body",
                                                       "Content-Encoding"), response.text


def first_answer(api: Api, request: bytes) -> tuple[int, bytes]:
    """The status and body of the first answer to ``request`` sent over a raw socket (an
    interim 100 Continue counts: it is what the test looks for)."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, body
            body += chunk
    return status, body


def test_a_json_body_declared_past_the_limit_is_refused_before_it_is_sent(api: Api) -> None:
    # curl sends "Expect: 100-continue" for a body over 1 MiB and waits for the answer. Before:
    # "100 Continue" (uvicorn sends it when the body is first read), then the 413 once 1 MiB
    # of the body had arrived.
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    for path, key in (("/v1/webhooks", api.key), ("/v1/admin/projects", admin_key),
                      ("/v1/jobs", api.key)):
        request = (f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {2 * MIB}\r\n"
                   "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()
        status, body = first_answer(api, request)
        assert status == 413, (path, status)
        error = json.loads(body)["error"]
        assert (error["field"], error["limit_bytes"]) == ("body", MIB), (path, error)
        if path != "/v1/jobs":  # which reads its body itself, and words its own 413
            assert f"is {2 * MIB} bytes (Content-Length)" in error["message"], (path, error)


def test_a_refused_key_is_answered_before_the_body_is_asked_for(api: Api) -> None:
    # FastAPI reads a JSON body before the key guard runs. Before: "100 Continue", and the 401
    # or 403 only once the body had been sent.
    _, reader = make_key(api.sessions, "tests", ("read",))
    for path in ("/v1/webhooks", "/v1/admin/projects"):
        for key, status, field in (("rift_0123456789ab_" + "A" * 43, 401, "Authorization"),
                                   (reader, 403, "Authorization")):
            request = (f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                       "Content-Type: application/json\r\nContent-Length: 1000\r\n"
                       "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()
            answered, body = first_answer(api, request)
            assert answered == status, (path, status, answered)
            assert json.loads(body)["error"]["field"] == field
    # A key that may: told to go on, and the body is read as ever.
    request = (f"POST /v1/webhooks HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {api.key}"
               "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
               "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    assert first_answer(api, request)[0] == 100
    with_body = api.client.post("/v1/webhooks", content=b"{}", headers={
        "Content-Type": "application/json", "Expect": "100-continue"})
    assert with_body.status_code == 422 and error_of(with_body)["field"] == "url"


def test_other_content_encodings_are_refused_naming_the_header(api: Api) -> None:
    for coding in ("br", "zstd", "gzip, gzip", "compress"):
        for path, content_type in (("/v1/jobs", "application/json"),
                                   ("/v1/checkpoints", "application/octet-stream"),
                                   ("/v1/webhooks", "application/json")):
            response = post(api, path, b'{"a": 1}', coding, content_type)
            assert response.status_code == 415, (coding, path, response.text)
            error = error_of(response)
            assert (error["code"], error["field"]) == ("unsupported_content_encoding",
                                                       "Content-Encoding")
            assert "gzip" in error["message"] and "deflate" in error["message"]
            assert error["accepted"] == ["gzip", "deflate", "identity"]
    # identity is no coding at all.
    listed = api.client.post("/v1/webhooks", content=b"{}", headers={
        "Content-Type": "application/json", "Content-Encoding": "identity"})
    assert listed.status_code == 422 and error_of(listed)["field"] == "url", listed.text


def boolean_parameters(api: Api) -> set[tuple[str, str]]:
    """(path, parameter) of every boolean query parameter of the app."""
    from api.main import create_app
    from api.request_input import _query_params_of

    app = create_app(api.settings, session_factory=api.sessions,
                     dispatcher=RecordingDispatcher(), validator=object())  # type: ignore[arg-type]
    found = set()
    for route in api_routes(app.routes):
        for name in _query_params_of(route).boolean:
            found.add((route.path, name))
    return found


def test_boolean_query_parameters_take_true_or_false(api: Api, small_cnn_file: Path) -> None:
    # Every boolean parameter is one this test sends: a new one must be added here.
    assert boolean_parameters(api) == {("/jobs/{job_id}/artifacts/{name}", "redirect"),
                                       ("/admin/projects/{name}", "force")}
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    _, admin_key = make_key(api.sessions, "ops", ("admin",))
    with api.client_for(admin_key) as admin:
        for word in ("1", "0", "yes", "no", "on", "off", "t", "y", " true", "truth"):
            # Before: pydantic read 1/yes/on as true (and no/off/0 as false).
            for client, method, path, name in (
                    (api.client, "GET", f"/v1/jobs/{job['id']}/artifacts/x.json", "redirect"),
                    (admin, "DELETE", "/v1/admin/projects/tests", "force")):
                response = client.request(method, path, params={name: word})
                assert response.status_code == 422, (name, word, response.text)
                error = error_of(response)
                assert (error["code"], error["field"]) == ("invalid_boolean", name)
                assert error["accepted"] == list(BOOLEAN_WORDS)
                assert name in error["message"] and "true or false" in error["message"]
        # Both words pass the check, in any letter case (the job is queued, so its artifacts
        # are a 409; the project has a queued job, so deleting it without force is refused).
        for word in ("true", "false", "True", "FALSE"):
            got = api.client.get(f"/v1/jobs/{job['id']}/artifacts/x.json",
                                 params={"redirect": word})
            assert got.status_code == 409, (word, got.text)
        refused = admin.delete("/v1/admin/projects/tests", params={"force": "False"})
        assert error_of(refused)["code"] == "project_has_active_jobs", refused.text


def test_integer_query_parameters_take_decimal_digits(api: Api, small_cnn_file: Path) -> None:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    for value in ("1_0", " 1", "1 ", "+1", "1.0", "1e1", "0x1", "\u0661", "ten"):
        # Before: pydantic read 1_0 as 10 and " 1", "+1", "1.0" as 1 (200).
        for path, name in (("/v1/jobs", "limit"), (f"/v1/jobs/{job['id']}/events", "after")):
            response = api.client.get(path, params={name: value})
            assert response.status_code == 422, (name, value, response.text)
            error = error_of(response)
            assert (error["code"], error["field"]) == ("invalid_integer", name), error
    # Digits pass the check; the route's range still names its bound.
    assert api.client.get("/v1/jobs", params={"limit": "07"}).status_code == 200
    below = api.client.get("/v1/jobs", params={"limit": "-1"})
    assert below.status_code == 422 and "greater than or equal to 1" in below.text

    from api.main import create_app
    from api.request_input import _query_params_of

    app = create_app(api.settings, session_factory=api.sessions,
                     dispatcher=RecordingDispatcher(), validator=object())  # type: ignore[arg-type]
    integers = {(route.path, name) for route in api_routes(app.routes)
                for name in _query_params_of(route).integer}
    # Every list's limit and the events' after: found by type, so a new one gets the rule.
    assert {name for _, name in integers} == {"limit", "after"} and len(integers) >= 6


def test_a_streamed_answer_to_a_request_declaring_a_coding_ends(api: Api,
                                                                 small_cnn_file: Path) -> None:
    # The decoding receive hands the client's disconnect on once the (empty) body is over: a
    # streamed answer waits for it, and answering "no more body" for ever blocked the loop.
    checkpoint = upload_checkpoint(api, small_cnn_file)
    job = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                            "config": digits_config()}).json()
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    with api.client_for(api.key) as client:
        streamed = client.get(f"/v1/jobs/{job['id']}/events", timeout=15, headers={
            "Accept": "text/event-stream", "Content-Encoding": "gzip"})
    assert streamed.status_code == 200 and "cancel" in streamed.text, streamed.text
