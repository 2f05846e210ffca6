"""An HTTP proxy in front of moto's S3 server that injects the faults a real S3 shows now and
then: a ``503 SlowDown`` answer, or a response cut off after some body bytes (a connection reset
mid-download). Everything else is forwarded unchanged, so requests are still signed, sent and
parsed for real; only the named requests fail.

    with FaultProxy(moto_endpoint) as proxy:
        proxy.fail("GET", times=1, cut_after=1000)    # the next GET breaks after 1000 bytes
        proxy.fail("PUT", times=2, query="partNumber")  # the next two UploadPart answer 503
        store = S3ObjectStore(bucket, endpoint_url=proxy.url, ...)
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from urllib.parse import urlsplit

from tests.quiet_http import QuietHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


@dataclass
class Fault:
    """Fail the next ``times`` requests with ``method`` whose query contains ``query``: with a
    503 SlowDown, or (``cut_after`` set) by closing the connection after that many body bytes,
    or (``ignore_range``) by answering the whole object as a server or cache that drops
    ``Range`` does."""

    method: str
    times: int
    query: str = ""
    cut_after: int | None = None
    ignore_range: bool = False


class FaultProxy:
    """A threaded proxy on 127.0.0.1 (a port the OS picks) to ``upstream`` (``http://host:port``).
    ``requests`` counts what it forwarded per method, faults included."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self._server = QuietHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail(self, method: str, *, times: int = 1, query: str = "",
             cut_after: int | None = None, ignore_range: bool = False) -> None:
        with self._lock:
            self._faults.append(Fault(method, times, query, cut_after, ignore_range))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests[method] = self.requests.get(method, 0) + 1
            for fault in self._faults:
                if fault.method == method and fault.times > 0 and fault.query in path:
                    fault.times -= 1
                    return fault
        return None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the tests read the counters, not a log

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None and fault.ignore_range:
                    fault = None
                    self.headers.replace_header("Range", "bytes=0-")
                if fault is not None and fault.cut_after is None:
                    # Drain the request first, as S3 does, so the client reads the answer.
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items()}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                # A HEAD answer's Content-Length is the object's size: passed on as it is.
                dropped = {"transfer-encoding", "connection"}
                if self.command != "HEAD":
                    dropped.add("content-length")
                for name, value in answer.getheaders():
                    if name.lower() not in dropped:
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                if fault is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if fault is not None and fault.cut_after is not None:
                    # The headers promised the whole body; the connection ends short of it.
                    self.wfile.write(payload[: fault.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
