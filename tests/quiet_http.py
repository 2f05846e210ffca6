"""A threading HTTP server for the tests' stand-ins (webhook receivers, proxies, fake APIs) that
stays quiet when a client hangs up: tests cut connections on purpose (timeouts, Ctrl-C,
cancelled downloads), and socketserver's default ``handle_error`` printed each as a traceback
in the suite's output, which read like a failure."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any

_HUNG_UP = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _HUNG_UP):
            return
        super().handle_error(request, client_address)
