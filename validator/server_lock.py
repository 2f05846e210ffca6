"""Who serves a shared validator socket, told by ``flock`` locks on files beside the socket.

A shared server (``python -m validator --shared``) holds an exclusive lock on
``<socket>.server-lock``, with its pid written there, for as long as it accepts checks. An API
process that finds the lock free starts a server, one process at a time, under an exclusive lock
on ``<socket>.start-lock``. A ``flock`` goes with the open file, so a server that is killed,
even by SIGKILL, releases it at once: a dead server is never taken for a live one, as a pid file
alone would allow. Imports no torch: the API uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def server_lock_path(socket_path: Path) -> Path:
    """The file a running shared server keeps locked."""
    return socket_path.with_name(socket_path.name + ".server-lock")


def start_lock_path(socket_path: Path) -> Path:
    """The file an API process locks while it starts a shared server."""
    return socket_path.with_name(socket_path.name + ".start-lock")


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


class ServerLock:
    """The lock a shared server holds; its file descriptor must not outlive the server (forked
    checks close it: see :meth:`close_in_child`)."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, socket_path: Path) -> ServerLock | None:
        """The lock, with this process's pid written in its file, or ``None`` when another
        server holds it."""
        descriptor = _open(server_lock_path(socket_path))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        return cls(descriptor)

    def release(self) -> None:
        """Let the lock go: in the server when it stops taking checks, and in each forked check,
        whose inherited descriptor would otherwise keep the lock held after the server has gone."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def server_alive(socket_path: Path) -> bool:
    """Whether a shared server holds the lock of ``socket_path``."""
    descriptor = _open(server_lock_path(socket_path))
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also releases the shared lock taken when there was no server
    return False


def server_pid(socket_path: Path) -> int | None:
    """The pid of the shared server of ``socket_path``, ``None`` when none is running."""
    if not server_alive(socket_path):
        return None
    with contextlib.suppress(OSError, ValueError):
        return int(server_lock_path(socket_path).read_text())
    return None


@contextlib.contextmanager
def starting_server(socket_path: Path) -> Iterator[None]:
    """Hold the start lock of ``socket_path``: one process at a time starts its server."""
    descriptor = _open(start_lock_path(socket_path))
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
