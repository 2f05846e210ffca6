"""The ``<target>.part`` file a download writes before renaming it to its target, held by one
call at a time.

Two downloads to the same path at once (the ranks of a distributed job on one machine, each
fetching the tuned weights; two shells) used to append to the same ``.part``: each hashed only
its own bytes, so the first to finish found its count and hash right and renamed a file
holding both (twice the artifact's size, interleaved) to the target, returning success; the
other failed with ``FileNotFoundError``. Now a call takes an exclusive advisory lock
(``flock``) on the ``.part`` before reading or writing it, and renames it while still holding
it; a second call finds it held and raises
:class:`~rift_client.errors.DownloadInProgressError` at once, leaving
the first call's bytes alone. Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any

from rift_client.errors import DownloadInProgressError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None  # type: ignore[assignment]

#: What flock answers on a file system that has no such locks.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
#: Opening, locking and finding the path renamed under the lock (by the call that held it) is
#: tried again this many times.
_CLAIM_ATTEMPTS = 5


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def claim(target: Path) -> IO[bytes]:
    """``target``'s ``.part`` opened for appending (and reading), locked for this call: an
    earlier call's bytes are kept for resuming. :class:`DownloadInProgressError` when another
    call holds it."""
    partial = part_path(target)
    for _ in range(_CLAIM_ATTEMPTS):
        out = partial.open("a+b")
        if fcntl is None:
            return out
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out.close()
            raise DownloadInProgressError(
                str(target), f"another download to this path is in progress (it holds "
                f"{partial.name}); wait for it to finish, or save to another path") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                out.close()
                raise
            return out  # a file system without locks (some FUSE mounts): unlocked, as before
        # The call that held it may have renamed it to the target just before letting go:
        # then this handle is the finished target, not a .part; open the name again.
        try:
            same = os.stat(partial).st_ino == os.fstat(out.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return out
        out.close()
    raise DownloadInProgressError(str(target), f"{partial.name} kept being replaced while this "
                                  "download opened it")


def hash_held(out: IO[bytes], size: int, digest: Any) -> int:
    """The bytes the claimed ``.part`` holds from an earlier call, added to ``digest``; 0 (and
    the file emptied) when it is longer than the artifact's ``size``."""
    held = os.fstat(out.fileno()).st_size
    if held > size:
        out.truncate(0)
        return 0
    out.seek(0)
    while chunk := out.read(1 << 20):
        digest.update(chunk)
    return held


def holds_any(out: IO[bytes]) -> bool:
    return os.fstat(out.fileno()).st_size > 0


def finish(out: IO[bytes], target: Path) -> None:
    """The claimed ``.part``, complete and checked, renamed to ``target``: under the lock, so
    that no other call claims it between the check and the rename (where there is no lock,
    after closing it: Windows cannot rename an open file)."""
    if fcntl is None:
        out.close()
    part_path(target).replace(target)
