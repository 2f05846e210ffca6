"""Named locks across processes, on real SQLite (a file lock beside the work folder) and real
Postgres (an advisory lock): a second holder waits, gives up after its timeout, and gets the
lock once the first holder's process has gone (killed, not only ended cleanly)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from persistence.named_locks import LockTimeout, held

_HOLDER = """
import sys, time
from pathlib import Path
from persistence.db import create_db_engine, create_session_factory
from persistence.named_locks import held
sessions = create_session_factory(create_db_engine(sys.argv[1]))
with held(sessions, Path(sys.argv[2]), sys.argv[3], timeout=30):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold_in_another_process(db_url: str, lock_dir: Path, name: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, db_url, str(lock_dir), name],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_waits_until_the_first_process_is_gone(
        db_url: str, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = _hold_in_another_process(db_url, locks, "mlflow-export:job_1")
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as refused, held(sessions, locks, "mlflow-export:job_1",
                                                         timeout=0.3, poll_interval=0.05):
            pytest.fail("the lock was taken while another process held it")
        assert time.monotonic() - started >= 0.3 and refused.value.waited == 0.3
        # Another name is another lock.
        with held(sessions, locks, "mlflow-export:job_2", timeout=0.3):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with held(sessions, locks, "mlflow-export:job_1", timeout=10, poll_interval=0.05):
        pass
    # Released at the block's end: taken again at once, also after a block that raised.
    with pytest.raises(RuntimeError), held(sessions, locks, "mlflow-export:job_1", timeout=1):
        raise RuntimeError("the export failed")
    with held(sessions, locks, "mlflow-export:job_1", timeout=0.1):
        pass
