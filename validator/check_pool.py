"""The checks a validator server runs at once.

Each accepted connection is one check, run by a forked child. At most ``max_checks`` children
live at a time; further connections wait in arrival order, and one that has waited
``queue_timeout`` seconds is answered ``{"ok": false, "busy": {...}}`` instead. The bound lives
in the server, not in its clients, so API processes that share one server (``VALIDATION_SOCKET``)
share the bound: it holds for the whole host.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import deque
from collections.abc import Callable

_READ_BYTES = 64 * 1024


class CheckPool:
    """Admits connections and forks a child per check within the bound.

    ``run_check(connection)`` runs in the child; the child exits with status 0 when it returns
    and 1 when it raises. The server calls :meth:`step` whenever a child may have ended (on
    SIGCHLD) and while connections wait.
    """

    def __init__(self, max_checks: int, queue_timeout: float,
                 run_check: Callable[[socket.socket], None]) -> None:
        self._max_checks = max_checks
        self._queue_timeout = queue_timeout
        self._run_check = run_check
        self._running: set[int] = set()
        self._waiting: deque[tuple[socket.socket, float]] = deque()
        self.last_activity = time.monotonic()

    @property
    def idle(self) -> bool:
        """No check running and none waiting."""
        return not self._running and not self._waiting

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def admit(self, connection: socket.socket) -> None:
        """Queue a newly accepted connection and start what the bound allows."""
        self._waiting.append((connection, time.monotonic()))
        self.last_activity = time.monotonic()
        self.step()

    def step(self) -> None:
        """Reap ended children, answer connections that waited too long, start waiting checks
        while there is room."""
        self._reap()
        now = time.monotonic()
        while self._waiting and now - self._waiting[0][1] >= self._queue_timeout:
            connection, _ = self._waiting.popleft()
            self._answer_busy(connection)
        while self._waiting and len(self._running) < self._max_checks:
            connection, _ = self._waiting.popleft()
            self._start(connection)

    def _reap(self) -> None:
        while self._running:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._running.clear()
                break
            if pid == 0:
                break
            self._running.discard(pid)
            self.last_activity = time.monotonic()

    def _start(self, connection: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                self._run_check(connection)
                status = 0
            finally:
                os._exit(status)
        self._running.add(pid)
        connection.close()

    def _answer_busy(self, connection: socket.socket) -> None:
        reply = {"ok": False, "busy": {"max_checks": self._max_checks,
                                       "waited_seconds": self._queue_timeout}}
        # The client may have given up already; nothing here may block the server.
        with contextlib.suppress(OSError), connection:
            connection.setblocking(False)
            # Read the request first: closing a Unix socket with unread data resets the
            # connection, and the client would see that instead of the reply.
            with contextlib.suppress(BlockingIOError):
                while connection.recv(_READ_BYTES):
                    pass
            connection.sendall(json.dumps(reply).encode())
            connection.shutdown(socket.SHUT_WR)
