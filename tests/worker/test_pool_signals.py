"""A prefork parent's warm shutdown tells its pool children with SIGUSR2
(``worker.tasks.signal_pool_children``): only processes that are still its children get it.
The pool lists a child that exited until it is replaced, and its pid may by then be another
process's, which SIGUSR2 (default action: terminate) would kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker.tasks import SHUTDOWN_SIGNAL, signal_pool_children


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan killed stays one where nothing reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def _controller(*pids: int) -> SimpleNamespace:
    """The attributes of Celery's WorkController that lead to billiard's pool processes."""
    processes = [SimpleNamespace(pid=pid) for pid in pids]
    return SimpleNamespace(pool=SimpleNamespace(_pool=SimpleNamespace(_pool=processes)))


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc")
def test_only_our_own_children_are_signalled() -> None:
    child = subprocess.Popen(["sleep", "30"])
    # A process that is not ours: the shell that started it exits, so it is re-parented.
    shell = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True)
    stranger = int(shell.stdout.strip())
    try:
        if parent_of(stranger) == os.getpid():
            pytest.skip("this test process is a child subreaper: the orphan became its child")
        signalled = signal_pool_children(_controller(stranger, child.pid), SHUTDOWN_SIGNAL)
        assert signalled == [child.pid]
        assert child.wait(timeout=10) == -signal.SIGUSR2
        time.sleep(0.2)
        assert _alive(stranger), "a process that is not the pool's child was signalled"
    finally:
        child.kill()
        child.wait()
        if _alive(stranger):
            os.kill(stranger, signal.SIGKILL)


def parent_of(pid: int) -> int:
    from worker.tasks import _parent_pid

    parent = _parent_pid(pid)
    assert parent is not None
    return parent
