"""Files ``riftctl`` uploads that are not regular files: standard input (``-``) and pipes.

The client sends a regular file only (its size goes in Content-Length before the first byte, and
a retry sends it again from its start); a pipe has neither a size nor a second reading. So
``riftctl checkpoints upload -`` (and a path that is a pipe: ``/dev/stdin`` fed by ``cat``,
``<(curl ...)``) first copies the stream into a temporary file, which is then uploaded as any
other file and removed afterwards, upload failed or not. The copy lives in ``$TMPDIR`` (else
``/tmp``): point it at a disk with room for the file.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: What ``riftctl ... upload -`` reads: standard input.
STDIN = Path("-")
#: Bytes copied per read from a pipe.
COPY_CHUNK_BYTES = 1 << 20


def is_stream(path: Path) -> bool:
    """Whether ``path`` names standard input or an existing pipe, socket or device."""
    if path == STDIN:
        return True
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def as_regular_file(path: Path, *, stdin: BinaryIO | None = None) -> Iterator[Path]:
    """``path`` itself when it is not a stream (see :func:`is_stream`); else a temporary regular
    file holding everything read from it, removed on leaving."""
    if not is_stream(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="riftctl-") as folder:
        copy = Path(folder) / "upload"
        with copy.open("wb") as out:
            if path == STDIN:
                shutil.copyfileobj(stdin or sys.stdin.buffer, out, COPY_CHUNK_BYTES)
            else:
                with path.open("rb") as source:
                    shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
        yield copy
