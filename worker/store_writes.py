"""A worker's writes to the object store outlive an outage shorter than its lease.

A stage's, part's or materialization's outputs are written once its work is done (θ_FT after
hours of fine-tuning, the MRC table, θ_α). A write that met an unavailable store (S3 answering
503 ``SlowDown`` past botocore's own retries, an endpoint not answering, a local disk full) used
to raise into the task's error handling: the claim was counted, the work ran again from its
start after ``STAGE_RETRY_DELAY_SECONDS``, and after ``MAX_STAGE_ATTEMPTS`` such outages the job
failed ``stage_failed_repeatedly``. Now each write is tried again in place, after 0.2 s doubling
up to 2 s, for at most ``WORKER_LEASE_SECONDS`` from its first failure (the heartbeat renews the
lease meanwhile), as the finishing transactions are (:mod:`worker.finishing`). A store that
refuses this deployment's settings (:class:`persistence.storage.StoreMisconfigured`) is not
waited for. Writing an object again is harmless: the same key and bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistence.storage import (
    DEFAULT_CONTENT_TYPE,
    ObjectStore,
    StoredObject,
    StoreMisconfigured,
    StoreUnavailable,
)
from worker.retry_delays import FIRST_RETRY_DELAY_S, next_retry_delay

logger = logging.getLogger(__name__)


def write_until_stored(write: Callable[[], StoredObject], key: str, *,
                       give_up_after_s: float) -> StoredObject:
    """``write()``, tried again while the store is unavailable, for at most ``give_up_after_s``
    seconds from the first failure; then the last :class:`StoreUnavailable` is raised."""
    delay, first_failure = FIRST_RETRY_DELAY_S, None
    while True:
        try:
            return write()
        except StoreMisconfigured:
            raise
        except StoreUnavailable as exc:
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            if now + delay - first_failure > give_up_after_s:
                raise
            logger.warning("writing %s: the object store is unavailable (%s); trying again in "
                           "%.1f s, for at most %g s (WORKER_LEASE_SECONDS)", key,
                           (exc.message.splitlines() or [""])[0][:300], delay, give_up_after_s)
            time.sleep(delay)
            delay = next_retry_delay(delay)


@dataclass
class PatientObjectStore:
    """The worker's object store: ``put_bytes`` and ``put_file`` go through
    :func:`write_until_stored` (their source can be read again; a stream cannot, and goes
    through unchanged); every other call goes to ``inner``."""

    inner: ObjectStore
    give_up_after_s: float

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE
                  ) -> StoredObject:
        return write_until_stored(
            lambda: self.inner.put_bytes(key, data, content_type=content_type), key,
            give_up_after_s=self.give_up_after_s)

    def put_file(self, key: str, path: str | Path, *, content_type: str = DEFAULT_CONTENT_TYPE
                 ) -> StoredObject:
        return write_until_stored(
            lambda: self.inner.put_file(key, path, content_type=content_type), key,
            give_up_after_s=self.give_up_after_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
