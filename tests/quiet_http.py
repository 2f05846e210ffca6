"""A threading HTTP server for the tests' stand-ins (webhook receivers, proxies, fake APIs) that
stays quiet when a client hangs up: tests cut connections on purpose (timeouts, Ctrl-C,
cancelled downloads), and socketserver's default ``handle_error`` printed each as a traceback
in the suite's output, which read like a failure."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HUNG_UP = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


#: How often ``serve_forever`` looks for ``shutdown()``'s request: socketserver's 0.5 s was
#: waited at the teardown of every test with a stand-in server (0.25-0.5 s each).
SHUTDOWN_POLL_S = 0.02


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def serve_forever(self, poll_interval: float = SHUTDOWN_POLL_S) -> None:
        super().serve_forever(poll_interval)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _HUNG_UP):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """A :class:`QuietHTTPServer` for ``handler`` on a free loopback port, served from a daemon
    thread: ``url`` to reach it, ``stop()`` to shut it down and free the port."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = QuietHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 request handler that logs nothing and sends whole bodies with
    :meth:`send_body`."""

    protocol_version = "HTTP/1.1"

    def send_body(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
