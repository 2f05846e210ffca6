"""A real HTTP receiver of webhooks on 127.0.0.1 for the tests: answers each POST with the next
scripted status, and checks the Standard Webhooks signature with its own implementation (hmac and
base64 straight from the spec, none of the service's code)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.quiet_http import QuietHTTPServer


def expected_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: base64(HMAC-SHA256(base64decode(secret without 'whsec_'),
    '{id}.{timestamp}.{body}')), prefixed 'v1,'."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    content = message_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    statuses: list[int]
    received: list[Received] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rift?x=1"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Received(
                    {k.lower(): v for k, v in self.headers.items()}, body, self.path))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verify(self, item: Received, secret: str) -> bool:
        headers = item.headers
        wanted = expected_signature(secret, headers["webhook-id"], headers["webhook-timestamp"],
                                    item.body)
        # The header may carry several space-separated signatures; one must match.
        return any(hmac.compare_digest(wanted, s) for s in headers["webhook-signature"].split())
