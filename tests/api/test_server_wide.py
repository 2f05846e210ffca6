"""Requests about the server as a whole (:mod:`api.server_wide`), over a raw socket to the API
under uvicorn: an ``Expect`` it cannot meet is 417, ``OPTIONS *`` is 200 with ``Allow``."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.api.helpers import Api

pytestmark = [pytest.mark.service,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def _exchange(api: Api, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of one request sent as bytes (Connection: close)."""
    where = urlsplit(api.url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def test_an_unmet_expectation_is_417_naming_the_header(api: Api) -> None:
    body = b'{"url": "http://127.0.0.1:9/hook"}'
    for expect in (b"something-else", b"100-continue, fancy", b"200-ok"):
        status, headers, answer = _exchange(api, (
            b"POST /v1/webhooks HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer " + api.key.encode()
            + b"\r\nContent-Type: application/json\r\nExpect: " + expect
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body))
        # Before: the expectation was ignored and the request carried out (a 422 here: the URL
        # is not allow-listed).
        assert status.startswith("HTTP/1.1 417"), (expect, status, answer)
        error = json.loads(answer)["error"]
        assert error["field"] == "Expect" and error["code"] == "expectation_failed"
        assert headers["content-type"] == "application/json"
    # 100-continue (any case) is met as before: the request is carried out.
    status, _, answer = _exchange(api, (
        b"GET /v1/jobs HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer " + api.key.encode()
        + b"\r\nExpect: 100-Continue\r\nConnection: close\r\n\r\n"))
    assert status.startswith("HTTP/1.1 200"), (status, answer)


def test_options_asterisk_answers_the_servers_methods(api: Api) -> None:
    status, headers, body = _exchange(
        api, b"OPTIONS * HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    # Before: 404 naming the path "/*".
    assert status.startswith("HTTP/1.1 200"), (status, body)
    assert headers["allow"] == "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
    assert body == b"" and headers["content-length"] == "0"
    # A path of "/*" is an ordinary (unknown) path, still a 404.
    status, _, _ = _exchange(api, b"OPTIONS /* HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    assert status.startswith("HTTP/1.1 404")
