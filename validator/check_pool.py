"""The checks a validator server runs at once, and the spare children that will run the next ones.

Each accepted connection is one check, run by a child of the server. At most ``max_checks``
children live at a time; further connections wait in arrival order, and one that has waited
``queue_timeout`` seconds is answered ``{"ok": false, "busy": {...}}`` instead. The bound lives
in the server, not in its clients, so API processes that share one server (``VALIDATION_SOCKET``)
share the bound: it holds for the whole host.

Spares. A check's latency is mostly not its own work: forking a torch-loaded server and, above
all, the forked child's first touches of the memory it shares copy-on-write with the server cost
more than a ``fit`` check itself (``bench/validator_latency.py``). So the slots that no check
uses hold spare children, forked and warmed up (``warm_up``: one check of the server's own
choosing, which takes those first touches) ahead of time. A spare waits on a socket pair for the
descriptor of the connection it is to serve (``SCM_RIGHTS``), then runs it exactly as a freshly
forked child would: its limits are applied when its request arrives, so what it did while it
waited does not count against them, except for the CPU seconds of its warm-up. A new spare is
forked when a slot is free again: after a check has ended, off any request's path. A spare says
``w`` on its socket pair once warmed up, so a server that starts can wait for its first spares
(:meth:`CheckPool.wait_until_warm`) before it calls itself ready. Spares count
against ``max_checks`` (a check that takes one takes its slot), so no more children live than
before. A spare that waits ends when it reads end-of-file on its socket pair, which happens when the
server dies, even by SIGKILL; a server that stops ends its spares itself
(:meth:`CheckPool.retire_spares`). So no idle spare outlives its server.
When no spare is ready (all taken, or one died), the check is forked on its path as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable

_READ_BYTES = 64 * 1024
#: After a spare died while it waited (killed, or failing in its warm-up), none is forked for
#: this long (seconds): a spare that cannot start must not make the server fork in a loop.
SPARE_RETRY_SECONDS = 5.0
#: What a spare sends on its socket pair once its warm-up is done.
WARM_SIGNAL = b"w"


class CheckPool:
    """Admits connections and runs each in a child, within the bound.

    In every child, ``detach()`` runs first (it drops what belongs to the server: its listening
    socket, signal handlers, lock); ``run_check(connection)`` then serves the connection, and the
    child exits with status 0 when it returns and 1 when it raises. A spare runs ``warm_up()``
    between the two, before it waits for a connection. The server calls :meth:`step` whenever a
    child may have ended (on SIGCHLD), while connections wait, and at least every poll interval.
    """

    def __init__(self, max_checks: int, queue_timeout: float,
                 run_check: Callable[[socket.socket], None], *,
                 detach: Callable[[], None] = lambda: None,
                 warm_up: Callable[[], None] = lambda: None) -> None:
        self._max_checks = max_checks
        self._queue_timeout = queue_timeout
        self._run_check = run_check
        self._detach = detach
        self._warm_up = warm_up
        self._running: set[int] = set()
        self._waiting: deque[tuple[socket.socket, float]] = deque()
        #: pid → the server's end of its socket pair, oldest first (the most likely warmed up).
        self._spares: OrderedDict[int, socket.socket] = OrderedDict()
        self._spares_wanted = True
        self._no_spare_before = 0.0
        self.last_activity = time.monotonic()

    @property
    def idle(self) -> bool:
        """No check running and none waiting (spares wait for checks: they are not activity)."""
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
        while there is room, then fill the free slots with spares."""
        self._reap()
        now = time.monotonic()
        while self._waiting and now - self._waiting[0][1] >= self._queue_timeout:
            connection, _ = self._waiting.popleft()
            self._answer_busy(connection)
        while self._waiting and len(self._running) < self._max_checks:
            connection, _ = self._waiting.popleft()
            self._start(connection)
        while (self._spares_wanted and not self._waiting and time.monotonic() >= self._no_spare_before
               and len(self._running) + len(self._spares) < self._max_checks):
            self._fork_spare()

    def wait_until_warm(self, timeout: float) -> int:
        """Fill the free slots with spares and wait, at most ``timeout`` seconds, until each has
        finished its warm-up (or died); the number warmed. Called by a server that starts, before
        it says it is ready, so that its first check costs what a later one does."""
        self.step()
        pending = dict(self._spares)
        warmed = 0
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select(list(pending.values()), [], [], left)
            for control in readable:
                pid = next(pid for pid, end in pending.items() if end is control)
                del pending[pid]
                # One byte: "w" once warmed up; nothing (end-of-file) when it died first.
                with contextlib.suppress(OSError):
                    warmed += int(control.recv(1) == WARM_SIGNAL)
        return warmed

    def retire_spares(self) -> None:
        """Fork no more spares and end those waiting (they hold nothing of a client's: SIGKILL
        ends one at once, even in its warm-up), then reap them: the server stops. Checks still
        waiting are then forked on their path."""
        self._spares_wanted = False
        for pid, control in self._spares.items():
            control.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._spares:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._spares.clear()

    def _reap(self) -> None:
        while self._running or self._spares:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._running.clear()
                self._spares.clear()
                break
            if pid == 0:
                break
            if pid in self._spares:  # died while it waited: killed, or its warm-up failed
                self._spares.pop(pid).close()
                self._no_spare_before = time.monotonic() + SPARE_RETRY_SECONDS
                continue
            self._running.discard(pid)
            self.last_activity = time.monotonic()

    def _start(self, connection: socket.socket) -> None:
        while self._spares:
            pid, control = self._spares.popitem(last=False)
            self._running.add(pid)  # one that died since the last reap is reaped as a check
            with control:
                try:
                    # The spare's warm-up byte, unless wait_until_warm read it: a Unix socket
                    # closed with bytes unread resets its peer, and the spare would lose the
                    # connection it is handed here.
                    _drain(control)
                    socket.send_fds(control, [b"c"], [connection.fileno()])
                except OSError:
                    continue
            connection.close()
            return
        pid = self._fork()
        if pid == 0:
            self._child(lambda: connection)
        self._running.add(pid)
        connection.close()

    def _fork_spare(self) -> None:
        server_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = self._fork()
        if pid == 0:
            server_end.close()
            self._child(lambda: _receive_connection(child_end),
                        warmed=lambda: _say_warm(child_end))
        child_end.close()
        self._spares[pid] = server_end

    def _fork(self) -> int:
        """Fork; in the child, first close what is the server's alone: the connections that
        wait for a slot and the other spares' socket pairs (a child holding one would keep a
        client or a spare waiting after the server has let them go)."""
        pid = os.fork()
        if pid == 0:
            with contextlib.suppress(OSError):
                for connection, _ in self._waiting:
                    connection.close()
                for control in self._spares.values():
                    control.close()
        return pid

    def _child(self, connection: Callable[[], socket.socket | None], *,
               warmed: Callable[[], None] | None = None) -> None:
        """The rest of a child's life: never returns. A spare (``warmed`` given) warms up first,
        then says so with ``warmed()``."""
        status = 1
        try:
            self._detach()
            if warmed is not None:
                self._warm_up()
                warmed()
            served = connection()
            if served is not None:
                self._run_check(served)
            status = 0
        finally:
            os._exit(status)

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


def _drain(control: socket.socket) -> None:
    """Read what waits on a spare's socket pair (its warm-up byte) without blocking."""
    control.setblocking(False)
    try:
        while control.recv(_READ_BYTES):
            pass
    except BlockingIOError:
        pass
    finally:
        control.setblocking(True)


def _say_warm(control: socket.socket) -> None:
    """In a spare: tell the server the warm-up is done. The server may have handed this spare
    a connection and closed its end already (a check came during the warm-up): the connection
    is still there to read, so a failed send must not end the spare."""
    with contextlib.suppress(OSError):
        control.sendall(WARM_SIGNAL)


def _receive_connection(control: socket.socket) -> socket.socket | None:
    """In a spare: wait for the connection to serve; None when the server closed the socket
    pair (it retired the spare, or it died)."""
    with control:
        _, descriptors, _, _ = socket.recv_fds(control, 1, 1)
    if not descriptors:
        return None
    return socket.socket(fileno=descriptors[0])
