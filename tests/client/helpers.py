"""Helpers of the client tests: a TCP proxy on loopback that cuts chosen responses mid-way (to
test resuming), a scripted HTTP server (to test retries), and running ``riftctl``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.preloaded_launcher import Launcher
from tests.quiet_http import LoopbackServer

CLI_TIMEOUT_S = 300.0
#: The rift_client sources of this checkout.
CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python"


class CuttingProxy:
    """Forwards TCP connections from ``self.url`` to ``upstream`` and, for the first ``times``
    requests whose bytes contain ``marker``, closes the connection after ``cut_after`` bytes of
    the response: the client sees a connection dropped in the middle of the body. Everything the
    clients sent is kept in ``sent`` (one bytes object per connection)."""

    def __init__(self, upstream: str, *, marker: bytes, cut_after: int, times: int = 1) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.marker = marker
        self.cut_after = cut_after
        self.cuts_left = times
        self.cuts_done = 0
        self.sent: list[bytearray] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
                self.sent.append(bytearray())
                index = len(self.sent) - 1
            # Per connection: where the response to a marked request starts (None: not armed).
            armed: dict[str, int | None] = {"at": None, "received": 0}
            self._start(self._client_to_upstream, client, upstream, index, armed)
            self._start(self._upstream_to_client, upstream, client, armed)

    def _client_to_upstream(self, client: socket.socket, upstream: socket.socket, index: int,
                            armed: dict[str, int | None]) -> None:
        while data := _recv(client):
            with self._lock:
                self.sent[index] += data
                if self.marker in data and self.cuts_left > 0:
                    self.cuts_left -= 1
                    armed["at"] = armed["received"]
            try:
                upstream.sendall(data)
            except OSError:
                break
        _close(client, upstream)

    def _upstream_to_client(self, upstream: socket.socket, client: socket.socket,
                            armed: dict[str, int | None]) -> None:
        while data := _recv(upstream):
            received = armed["received"] or 0
            start = armed["at"]
            if start is not None and received + len(data) - start >= self.cut_after:
                keep = max(0, start + self.cut_after - received)
                with contextlib.suppress(OSError):
                    client.sendall(data[:keep])
                with self._lock:
                    self.cuts_done += 1
                break
            armed["received"] = received + len(data)
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client, upstream)

    def requests_text(self) -> list[str]:
        """What each connection sent, decoded (bodies of uploads would be bytes; none here)."""
        with self._lock:
            return [bytes(s).decode("latin-1") for s in self.sent]

    def drop_open_connections(self) -> None:
        """Close every connection open now, as a server that goes down does: a stream being
        read ends mid-way. New connections are forwarded as before."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        _close(*sockets)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            _close(*self._sockets)
        for thread in self._threads:
            thread.join(timeout=5)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@dataclass
class ScriptedReply:
    """``body`` is sent as JSON; ``raw`` (with ``content_type``) as it is, for answers that are
    not the API's (another server's page, a body that does not decode). ``delay_s``: seconds
    the server waits, once the request is read, before answering (a slow check)."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"
    delay_s: float = 0.0


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    at: float
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer:
    """A real HTTP server on loopback answering each request with the next reply of a script
    (the last one repeats), and remembering the requests (method, path, headers, monotonic time,
    body)."""

    def __init__(self, replies: Sequence[ScriptedReply]) -> None:
        import time

        self.replies = list(replies)
        self.seen: list[SeenRequest] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.seen.append(SeenRequest(self.command, self.path,
                                               {k.lower(): v for k, v in self.headers.items()},
                                               time.monotonic(), body))
                reply = server.replies[min(len(server.seen), len(server.replies)) - 1]
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                payload = (reply.raw if reply.raw is not None
                           else json.dumps(reply.body).encode() if reply.body is not None
                           else b"")
                # A client that gave up waiting has closed the connection.
                with contextlib.suppress(OSError):
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def stop(self) -> None:
        self._server.stop()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        """The JSON error object ``riftctl --output json`` writes on stderr."""
        return dict(json.loads(self.stderr.strip().splitlines()[-1])["error"])


def riftctl_command() -> list[str]:
    """The ``riftctl`` console script of this environment (or the module, if not installed)."""
    script = Path(sys.executable).with_name("riftctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rift_client.cli"]


def run_riftctl(args: Sequence[str], *, url: str | None, api_key: str | None, home: Path,
                env: Mapping[str, str] | None = None, cwd: Path | None = None,
                launcher: Launcher | None = None) -> CliResult:
    """Run ``riftctl`` in a process of its own with a clean configuration: ``HOME`` is ``home``
    (so no user config is read), the URL and key come from RIFT_API_URL and RIFT_API_KEY.

    With a ``launcher`` (the torch-free one, ``cli_launcher``) the process is forked from it and
    calls the console script's function, as the script does, instead of a fresh interpreter
    importing the client again; without, the installed console script runs."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("RIFT_API_URL", "RIFT_API_KEY", "RIFTCTL_CONFIG", "XDG_CONFIG_HOME")}
    full.update({"HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"})
    # This checkout's rift_client first (as the tests import it: pyproject's pytest pythonpath).
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_SOURCE),
                                                       os.environ.get("PYTHONPATH")]))
    if url is not None:
        full["RIFT_API_URL"] = url
    if api_key is not None:
        full["RIFT_API_KEY"] = api_key
    full.update(env or {})
    if launcher is not None:
        forked = launcher.run(["riftctl", *args], full, cwd or Path.cwd(), timeout=CLI_TIMEOUT_S,
                              call="rift_client.cli:main")
        return CliResult(forked.returncode, forked.stdout, forked.stderr)
    process = subprocess.run([*riftctl_command(), *args], env=full, cwd=cwd, capture_output=True,
                             text=True, timeout=CLI_TIMEOUT_S, check=False)
    return CliResult(process.returncode, process.stdout, process.stderr)
