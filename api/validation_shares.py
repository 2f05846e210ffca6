"""Each project's share of the upload validator, counted in this API process.

A check waiting for a validator slot, or running, holds one of the API process's worker threads
(AnyIO's pool of 40, which every synchronous route runs in) for up to
``VALIDATION_QUEUE_TIMEOUT_SECONDS`` plus the check's own limits. Without a bound per project,
one project's burst of uploads (or of job creations, whose fit check is a validator run) held
every thread, and every route of every project waited behind it. A project may have
``VALIDATION_MAX_PENDING_PER_PROJECT`` checks waiting or running at once; one more is answered
429 at once, before it takes a thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from api.errors import TooManyRequests

#: Retry-After of a refused check: a check takes seconds; the client's retry comes back then.
RETRY_AFTER_S = 5


class ValidationShares:
    """Checks in flight per project in this process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, project_id: str, limit: int) -> Iterator[None]:
        """Count one check of ``project_id`` for the block.

        Raises:
            TooManyRequests: (429, ``validation_pending_limit``) the project already has
                ``limit`` checks waiting or running in this process.
        """
        with self._lock:
            pending = self._pending.get(project_id, 0)
            if pending >= limit:
                raise TooManyRequests(
                    f"this project already has {pending} uploads or job checks waiting for or "
                    f"in the validator, the most it may (VALIDATION_MAX_PENDING_PER_PROJECT); "
                    "retry when one has been answered",
                    field="VALIDATION_MAX_PENDING_PER_PROJECT", code="validation_pending_limit",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                    details={"limit": limit, "used": pending})
            self._pending[project_id] = pending + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._pending[project_id] - 1
                if left:
                    self._pending[project_id] = left
                else:
                    del self._pending[project_id]

    def pending(self, project_id: str) -> int:
        """Checks of ``project_id`` waiting or running in this process."""
        with self._lock:
            return self._pending.get(project_id, 0)
