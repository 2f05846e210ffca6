"""The API started as the image starts it (uvicorn, ``--http api.http_protocol:HttpToolsProtocol``,
uvicorn's default log level) with ``LOG_FORMAT=json``: every line it writes, from start to
shutdown, is one JSON object, and a request's line carries its request id."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx
import pytest

from persistence.settings import Settings
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess

pytestmark = [pytest.mark.service]


def _raw(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        connection.recv(4096)


def test_every_line_of_a_json_logging_api_is_json(
        reliability_settings: Settings, optional_api_launcher: Launcher | None,
        tmp_path: Path) -> None:
    # Before: uvicorn's own lines ("INFO:     Started server process", "WARNING:  Invalid HTTP
    # request received.", the shutdown) were plain text among the JSON lines.
    env = {"DATABASE_URL": reliability_settings.database_url, "BROKER_URL": "memory://",
           "STORE_ROOT": str(reliability_settings.store_root), "VALIDATION_WARM_START": "false",
           "LOG_FORMAT": "json"}
    api = ApiProcess(env, tmp_path / "api.log", launcher=optional_api_launcher,
                     uvicorn_args=["--http", "api.http_protocol:HttpToolsProtocol",
                                   "--log-level", "info", "--no-access-log"]).wait_ready()
    try:
        httpx.get(f"{api.url}/v1/jobs/%0Afake%0D\u00e9", headers={"X-Request-ID": "req-odd-1"})
        _raw(api.port, b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")  # refused by the parser
        api.process.send_signal(signal.SIGTERM)
        api.process.wait(timeout=30)
    finally:
        api.kill()
    records = []
    for line in api.log().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\n{api.log()[-3000:]}")
    messages = [r["message"] for r in records]
    assert any(m.startswith("Started server process") for m in messages), messages
    assert "Invalid HTTP request received." in messages
    assert any(m.startswith("Finished server process") for m in messages), messages
    assert not any(r["logger"] == "uvicorn.access" for r in records)  # --no-access-log holds
    assert not any("color_message" in r for r in records)
    odd = next(r for r in records if r.get("status") == 401)
    assert odd["request_id"] == "req-odd-1" and odd["path"] == "/v1/jobs/\nfake\r\u00e9"
