"""The validator server: ``python -m validator --socket PATH``.

Started by the API (``api/validation.py``) with an environment free of credentials, it imports
torch and the check modules once, forks its spare children and waits for their warm-up, prints
``ready``, then accepts connections on the Unix socket ``PATH``; each connection is one check,
served by a forked child that applies its limits (memory, CPU time, wall-clock alarm: ``limits``
in the request) as soon as it has read its request, before any work, so a hostile file can only
exhaust its own child. The child is usually a spare, forked and warmed up before the request came
(``check_pool.py``), so a check pays neither a torch import nor a fork. At most ``--max-checks``
children live at once, spares included.

Two lifetimes. A private server (the default) belongs to the API process that started it
(``--owner-pid``) and exits, its children with it, as soon as that process is gone (even killed
by SIGKILL) or has removed the server's folder (the API closing while the server still starts),
whatever the server is doing then, its torch import and its spares' warm-up included. A shared
server (``--shared``, the API's ``VALIDATION_SOCKET``) serves every API process of the host: it
detaches from the process that started it (and outlives it, by design), holds the socket's
server lock while it takes checks (``server_lock.py``), and exits after ``--idle-exit`` seconds
without a check, or on SIGTERM; either way it first removes its socket and lets the lock go, so
that a new server can start while it answers the connections already made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from validator.check_pool import CheckPool
from validator.limits import apply_limits
from validator.server_lock import ServerLock

#: How often an idle server looks whether it should stop (seconds); SIGCHLD and SIGTERM wake it
#: at once.
IDLE_POLL_SECONDS = 1.0
#: How often it looks again while connections wait for a free check slot (seconds).
WAITING_POLL_SECONDS = 0.05
#: How long a starting server waits for its first spares' warm-up before it says ``ready``
#: anyway (seconds): a check that comes sooner waits for a spare, or is forked on its path.
SPARE_WARM_UP_SECONDS = 60.0
_READ_BYTES = 1024 * 1024
#: How often a private server looks whether its folder is still there (seconds); its owner's
#: end wakes it at once where the kernel has pidfds.
OWNER_POLL_SECONDS = 0.2


def _owner_gone(owner: int, pidfd: int | None) -> bool:
    if pidfd is not None:
        # A pidfd is readable once its process has ended (a zombie included).
        return bool(select.select([pidfd], [], [], OWNER_POLL_SECONDS)[0])
    time.sleep(OWNER_POLL_SECONDS)
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, though not ours to signal
        return False
    return False


def _watch_owner(owner: int, socket_path: str) -> None:
    """In a thread of a private server: once ``owner`` has ended or the socket's folder is gone,
    remove the socket (and the folder, where the owner could not: killed) and SIGKILL the
    server's process group, its spares and checks included. A thread, not the accept loop: the
    server spends its first seconds importing torch and warming up its spares, and an owner that
    ends meanwhile (an API stopped or killed right after its start) must not leave it running
    them to the end, holding the owner's stderr open."""
    folder = os.path.dirname(socket_path)
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        pidfd = None
        gone = True
    except (AttributeError, OSError):  # no pidfd here (an old kernel): poll the pid instead
        pidfd, gone = None, False
    else:
        gone = False
    while not gone and os.path.isdir(folder):
        gone = _owner_gone(owner, pidfd)
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # only when empty: the API made it for this server alone
    os.killpg(os.getpid(), signal.SIGKILL)


def _preload() -> None:
    # Imported once here, shared copy-on-write by every forked check.
    # Fit checks run the model on the meta device, whose BatchNorm decomposition imports
    # torch._dynamo on first use (seconds on a small CPU): imported here, not in every child.
    import numpy  # noqa: F401
    import torch
    import torch._dynamo
    import torch.utils.flop_counter  # the fit check counts the model's FLOPs (~0.3 s to import)

    import rift.checkpoints
    import rift.finetune
    import rift.models
    import rift.mrc  # noqa: F401
    import validator.checkpoint
    import validator.dataset
    import validator.fit
    import validator.service  # noqa: F401

    torch.set_num_threads(1)


def _read_request(connection: socket.socket) -> dict[str, Any]:
    parts = []
    while chunk := connection.recv(_READ_BYTES):
        parts.append(chunk)
    request: dict[str, Any] = json.loads(b"".join(parts))
    return request


def _run_check(connection: socket.socket) -> None:
    """Serve one connection, in a child: read the request, apply its limits, then answer."""
    from validator.service import answer

    # Blocking reads, whatever the flags of the descriptor a spare was passed.
    connection.settimeout(None)
    request = _read_request(connection)
    limits = request.pop("limits")
    apply_limits(memory_bytes=int(limits["memory_bytes"]), cpu_seconds=int(limits["cpu_seconds"]))
    # SIGALRM's default action ends the process: the API then sees a closed connection.
    signal.alarm(max(1, math.ceil(float(limits["wall_seconds"]))))
    reply = answer(request)
    connection.sendall(json.dumps(reply).encode())
    connection.shutdown(socket.SHUT_WR)


class _Server:
    """The accept loop of one server: admits connections into its pool until ``keep_serving``
    says no, then (after ``on_stop``, which makes sure no new connection can arrive) serves the
    connections already queued and returns."""

    def __init__(self, listener: socket.socket, max_checks: int, queue_timeout: float,
                 keep_serving: Callable[[CheckPool], bool], on_stop: Callable[[], None],
                 child_cleanup: Callable[[], None]) -> None:
        from validator.service import warm_up_request

        self._listener = listener
        self._keep_serving = keep_serving
        self._on_stop = on_stop
        self._child_cleanup = child_cleanup
        self._warm_up_request = warm_up_request()
        self.pool = CheckPool(max_checks, queue_timeout, _run_check, detach=self._detach,
                              warm_up=self._warm_up)
        self.stop_requested = False
        # SIGCHLD (a check ended: a slot is free) and SIGTERM wake the loop through this pipe.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _detach(self) -> None:
        # In a forked child, spare or not: nothing of the server's may outlive it or answer its
        # signals. A spare would otherwise keep the socket accepting connections, or the
        # shared server's lock held, after the server has gone.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._child_cleanup()

    def _warm_up(self) -> None:
        from validator.service import answer

        json.dumps(answer(self._warm_up_request))

    def warm_up(self) -> None:
        """Before ``ready``: fork the spares and let them warm up, so that the first check,
        however soon it comes, costs what a later one does."""
        self.pool.wait_until_warm(SPARE_WARM_UP_SECONDS)

    def run(self) -> None:
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._request_stop)
        pool = self.pool
        while not self.stop_requested and self._keep_serving(pool):
            pool.step()
            timeout = WAITING_POLL_SECONDS if pool.has_waiting else IDLE_POLL_SECONDS
            listening = self._listener.fileno()
            readable, _, _ = select.select([listening, self._wake_read], [], [], timeout)
            if self._wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 512):
                        pass
            if listening in readable:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    pool.admit(self._listener.accept()[0])
        self._on_stop()
        pool.retire_spares()
        # Connections made before the socket went away are still queued: serve them too.
        self._listener.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                pool.admit(self._listener.accept()[0])
        while pool.has_waiting:
            select.select([self._wake_read], [], [], WAITING_POLL_SECONDS)
            pool.step()
        self._listener.close()

    def _request_stop(self, *_: Any) -> None:
        self.stop_requested = True


def _listen(path: str) -> tuple[socket.socket, int]:
    """A listening socket at ``path`` that only this user can reach, and its inode."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener, os.stat(path).st_ino


def _remove_socket(path: str, inode: int) -> None:
    """Remove the socket file, unless it is already another server's."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def _announce_ready() -> None:
    # The process that started it may be gone (an API process killed while the server it
    # started in the background warmed up): a shared server serves the others all the same.
    with contextlib.suppress(BrokenPipeError):
        print("ready", flush=True)
    # The API reads nothing more from this pipe: nothing written later may fill it and block.
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())


def serve_private(path: str, max_checks: int, queue_timeout: float) -> None:
    """Accept checks on the Unix socket ``path`` until the parent process is gone."""
    parent = os.getppid()
    listener, inode = _listen(path)
    server = _Server(listener, max_checks, queue_timeout,
                     keep_serving=lambda _: os.getppid() == parent,
                     on_stop=lambda: _remove_socket(path, inode), child_cleanup=lambda: None)
    server.warm_up()
    _announce_ready()
    server.run()


def serve_shared(path: str, max_checks: int, queue_timeout: float, idle_exit: float) -> None:
    """Serve the host's checks on ``path`` until idle for ``idle_exit`` seconds or SIGTERM."""
    lock = ServerLock.acquire(Path(path))
    if lock is None:  # another server took the socket first: it serves the checks
        print("running", flush=True)
        return
    _preload()
    # A file left at the path can only be a dead server's socket: the live one holds the lock.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener, inode = _listen(path)

    def stop() -> None:
        _remove_socket(path, inode)
        lock.release()

    server = _Server(
        listener, max_checks, queue_timeout,
        keep_serving=lambda pool: not pool.idle or time.monotonic() - pool.last_activity < idle_exit,
        on_stop=stop, child_cleanup=lock.release)
    server.warm_up()
    _announce_ready()
    # Its idle time counts from now, not from before the warm-up.
    server.pool.last_activity = time.monotonic()
    server.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validator")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--max-checks", type=int, default=2,
                        help="checks run at once; further connections wait")
    parser.add_argument("--queue-timeout", type=float, default=120.0,
                        help="seconds a connection waits for a slot before it is answered busy")
    parser.add_argument("--shared", action="store_true",
                        help="serve every API process of the host: detach, and exit when idle")
    parser.add_argument("--idle-exit", type=float, default=600.0,
                        help="with --shared: seconds without a check after which the server exits")
    parser.add_argument("--owner-pid", type=int, default=None,
                        help="without --shared: exit, with every child, as soon as this process "
                             "has ended or the socket's folder is removed")
    args = parser.parse_args(argv)
    if args.owner_pid is not None and not args.shared:
        # A group of its own, so that the watcher's SIGKILL reaches this server and its
        # children and nothing else (a server started from a shell would share the shell's).
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)
        threading.Thread(target=_watch_owner, args=(args.owner_pid, args.socket),
                         name="owner-watch", daemon=True).start()
    if args.shared and os.fork() != 0:
        # The starting API waits for this process only; the server lives on without it and
        # prints "ready" on the inherited pipe.
        os._exit(0)
    if args.shared:
        serve_shared(args.socket, args.max_checks, args.queue_timeout, args.idle_exit)
    else:
        _preload()
        serve_private(args.socket, args.max_checks, args.queue_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
