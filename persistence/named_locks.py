"""A lock by name across every process sharing the database, for work that must not run twice at
once but lasts too long for a row lock (a transaction held open for minutes).

On PostgreSQL a session-level advisory lock on a connection of its own (so it spans machines);
on SQLite, the embedded one-machine default, an ``flock`` on a file under ``lock_dir`` (the
processes share the machine and ``WORK_DIR``). Either goes with its process if that dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller would wait (``waited`` s)."""

    def __init__(self, message: str, waited: float) -> None:
        super().__init__(message)
        self.waited = waited


def _key(name: str) -> int:
    """A signed 64-bit advisory lock key from ``name`` (collisions only make two names wait)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def held(sessions: Callable[[], Session], lock_dir: Path, name: str, *, timeout: float,
         poll_interval: float = 0.2) -> Iterator[None]:
    """Run the block holding the lock ``name``, waiting at most ``timeout`` seconds for it
    (:class:`LockTimeout` then). ``sessions`` makes sessions of the service's database."""
    with sessions() as session:
        engine = session.get_bind().engine
    if engine.dialect.name == "postgresql":
        with _advisory(engine, name, timeout, poll_interval):
            yield
    else:
        with _file(lock_dir, name, timeout, poll_interval):
            yield


def _wait(try_once: Callable[[], bool], timeout: float, poll_interval: float,
          name: str) -> None:
    deadline = time.monotonic() + timeout
    while not try_once():
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{name} was held by another process for over {timeout:g} s",
                              timeout)
        time.sleep(poll_interval)


@contextlib.contextmanager
def _advisory(engine: Engine, name: str, timeout: float, poll_interval: float) -> Iterator[None]:
    key = _key(name)
    with engine.connect() as connection:
        def take() -> bool:
            taken = bool(connection.execute(select(func.pg_try_advisory_lock(key))).scalar())
            connection.commit()  # a session-level lock outlives the statement's transaction
            return taken

        _wait(take, timeout, poll_interval, name)
        try:
            yield
        finally:
            connection.execute(select(func.pg_advisory_unlock(key)))
            connection.commit()


@contextlib.contextmanager
def _file(lock_dir: Path, name: str, timeout: float, poll_interval: float) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_dir / f"{_key(name) & (2**64 - 1):016x}.lock",
                     os.O_RDWR | os.O_CREAT, 0o600)
    try:
        def take() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait(take, timeout, poll_interval, name)
        yield  # the lock file stays: removing it would let a third process lock a new inode
    finally:
        os.close(handle)
