"""Test-only pauses inside object writes, so a test can kill a process at a named phase.

Enabled only by the ``TEST_UPLOAD_PAUSE`` setting (``PHASE:SECONDS``); a deployment never sets it.
:class:`PausingObjectStore` wraps the real store and sleeps

- ``store``: once three quarters of an object's bytes have gone to the store (a local ``.part``
  file, or an S3 multipart upload with parts sent, exists but the object does not);
- ``record``: after the object is stored, before the caller writes its database row.

The reliability tests (``tests/reliability/``) kill the API with SIGKILL during the sleep and then
check that the janitor leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from persistence.storage import (
    DEFAULT_CONTENT_TYPE,
    ByteSource,
    ObjectStore,
    StoredObject,
    iter_source,
)

logger = logging.getLogger(__name__)

PHASES = ("store", "record")


@dataclass
class PausingObjectStore:
    """An object store that sleeps ``seconds`` at ``phase`` of every streamed write; every other
    call goes to ``inner`` unchanged."""

    inner: ObjectStore
    phase: str
    seconds: float

    @classmethod
    def from_setting(cls, store: ObjectStore, setting: str) -> PausingObjectStore:
        """Parse ``PHASE:SECONDS``; ValueError naming the setting when it is malformed."""
        phase, _, seconds = setting.partition(":")
        if phase not in PHASES or not seconds:
            raise ValueError(f"TEST_UPLOAD_PAUSE must be 'PHASE:SECONDS' with PHASE one of "
                             f"{PHASES}, got {setting!r}")
        return cls(store, phase, float(seconds))

    def _pause(self, phase: str, key: str) -> None:
        if phase == self.phase:
            logger.warning("TEST_UPLOAD_PAUSE: pausing %s s at phase %r of %s", self.seconds,
                           phase, key)
            time.sleep(self.seconds)

    def put_stream(self, key: str, chunks: ByteSource, *,
                   content_type: str = DEFAULT_CONTENT_TYPE,
                   max_bytes: int | None = None) -> StoredObject:
        total = max_bytes  # callers that stream a scratch file pass its exact size

        def paused() -> Iterator[bytes]:
            sent, waited = 0, False
            for chunk in iter_source(chunks):
                yield chunk
                sent += len(chunk)
                if not waited and total is not None and sent * 4 >= total * 3:
                    waited = True
                    self._pause("store", key)

        stored = self.inner.put_stream(key, paused(), content_type=content_type,
                                       max_bytes=max_bytes)
        self._pause("record", key)
        return stored

    def put_file(self, key: str, path: Any, *, content_type: str = DEFAULT_CONTENT_TYPE
                 ) -> StoredObject:
        with open(path, "rb") as handle:
            return self.put_stream(key, handle, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE
                  ) -> StoredObject:
        return self.put_stream(key, [data], content_type=content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
