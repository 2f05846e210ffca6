"""Scratch folders that say they are in use, so the janitor never removes one that is.

The janitor removes a scratch entry once nothing in it has changed for
``JANITOR_GRACE_SECONDS``. Age alone cannot tell a folder a killed process left from one whose
process is still reading it without writing (a materialization evaluating θ_α, an export
uploading to MLflow, a dataset being unpacked): with a grace shorter than such work (an operator
lowering it below ``JOB_TIME_LIMIT_SECONDS``, or 0 in a hand run) the janitor removed live
folders. A folder made here carries an exclusive ``flock`` on its own directory for as long as it
is used; the janitor takes that lock before it removes an entry and skips one whose lock is held.
The lock goes with its process (a killed one releases it), so what crashed work left is still
removed. ``flock`` locks are per open file, so a janitor running in the very process that holds
a folder also sees it in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held_scratch_folder(parent: Path, prefix: str = "") -> Iterator[Path]:
    """A new folder under ``parent`` (made if missing), locked while the block runs and removed
    after it."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    handle = os.open(folder, os.O_RDONLY)
    try:
        # Taken before the folder is used; until then its new mtime keeps the janitor away.
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(handle)  # releases the lock


@contextlib.contextmanager
def claimed_for_removal(entry: Path) -> Iterator[bool]:
    """True (and the entry's lock held while the block runs) when no process holds ``entry``'s
    lock; False when one does (the entry is in use: leave it). An entry that cannot be opened
    (gone, a dangling link, no permission) counts as free: removal tolerates those."""
    try:
        handle = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(handle)
