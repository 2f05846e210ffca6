"""Per-project request rates and per-key open streams: one interface, two implementations.

:class:`RedisRateLimiter` counts in Redis, so every API process of a deployment shares the
count; :class:`InMemoryRateLimiter` counts in the process (the embedded mode has one process and
no Redis). ``create_app`` picks one from the broker URL, or takes the one it is given.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


#: Where a count lives, as ``GET /v1/usage`` names it: shared by every API process (Redis), or
#: this process's own (the embedded mode, and the open event streams in every mode).
COUNTED_SHARED = "shared"
COUNTED_IN_PROCESS = "process"


@dataclass(frozen=True)
class WindowCount:
    """The requests ``key`` made in the current fixed window: ``used`` (None when the counter
    cannot be read), the seconds until the window ends, and where the count lives."""

    used: int | None
    resets_in_seconds: float
    counted_in: str


def _window(now: float, window_s: int) -> tuple[int, float]:
    """The fixed window ``now`` falls in and the seconds left in it."""
    window = int(now // window_s)
    return window, (window + 1) * window_s - now


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_s: int = 60) -> float | None:
        """Count one request of ``key``; None if it is within ``limit`` per ``window_s``
        seconds, else the seconds until the window ends (for Retry-After)."""
        ...

    def current(self, key: str, window_s: int = 60) -> WindowCount:
        """What :meth:`hit` has counted for ``key`` in the current window (counting nothing)."""
        ...

    def close(self) -> None: ...


class InMemoryRateLimiter:
    """Fixed windows counted in this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window index, count)

    def hit(self, key: str, limit: int, window_s: int = 60) -> float | None:
        now = self._clock()
        window = int(now // window_s)
        with self._lock:
            current, count = self._counts.get(key, (window, 0))
            count = count + 1 if current == window else 1
            self._counts[key] = (window, count)
            if len(self._counts) > 100_000:  # forget old windows of keys gone quiet
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        return None if count <= limit else (window + 1) * window_s - now

    def current(self, key: str, window_s: int = 60) -> WindowCount:
        window, left = _window(self._clock(), window_s)
        with self._lock:
            counted, count = self._counts.get(key, (window, 0))
        return WindowCount(count if counted == window else 0, left, COUNTED_IN_PROCESS)

    def close(self) -> None:
        pass


class RedisRateLimiter:
    """Fixed windows counted in Redis (INCR, and an expiry on the window's first request).

    If Redis cannot be reached the request is let through (and logged): a broken counter should
    not take the API down with it.
    """

    def __init__(self, url: str, prefix: str = "rift:rate") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._prefix = prefix

    def hit(self, key: str, limit: int, window_s: int = 60) -> float | None:
        now = time.time()
        window = int(now // window_s)
        name = f"{self._prefix}:{key}:{window}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(name)
            pipe.expire(name, window_s + 1, nx=True)
            count = int(pipe.execute()[0])
        except Exception as exc:  # redis.RedisError, OSError
            logger.warning("rate limiter unavailable, request allowed: %s", type(exc).__name__)
            return None
        return None if count <= limit else (window + 1) * window_s - now

    def current(self, key: str, window_s: int = 60) -> WindowCount:
        window, left = _window(time.time(), window_s)
        try:
            raw = self._redis.get(f"{self._prefix}:{key}:{window}")
        except Exception as exc:  # redis.RedisError, OSError: unknown, not zero
            logger.warning("rate counter unavailable: %s", type(exc).__name__)
            return WindowCount(None, left, COUNTED_SHARED)
        return WindowCount(int(raw) if raw is not None else 0, left, COUNTED_SHARED)

    def close(self) -> None:
        self._redis.close()


def project_rate_key(project_id: str) -> str:
    """The rate counter of a project (``max_requests_per_minute`` counts a whole project)."""
    return f"project:{project_id}"


def rate_limiter_for(broker_url: str) -> RateLimiter:
    """Redis when the broker is Redis (production), else in-process (embedded mode)."""
    if broker_url.split("://", 1)[0].lower() in ("redis", "rediss"):
        return RedisRateLimiter(broker_url)
    return InMemoryRateLimiter()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """Open event streams per API key, counted in this process (a stream is a connection to
    this process, so that is where it is held), and per project for ``GET /v1/usage``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._by_project: dict[str, int] = {}

    def acquire(self, key_id: str, limit: int, project_id: str = "") -> bool:
        """Take a slot; False if ``limit`` streams of the key are already open."""
        with self._lock:
            count = self._open.get(key_id, 0)
            if count >= limit:
                return False
            self._open[key_id] = count + 1
            self._by_project[project_id] = self._by_project.get(project_id, 0) + 1
            return True

    def release(self, key_id: str, project_id: str = "") -> None:
        with self._lock:
            _decrement(self._open, key_id)
            _decrement(self._by_project, project_id)

    def open_for_key(self, key_id: str) -> int:
        """Streams of ``key_id`` open in this process."""
        with self._lock:
            return self._open.get(key_id, 0)

    def open_for_project(self, project_id: str) -> int:
        """Streams of every key of ``project_id`` open in this process."""
        with self._lock:
            return self._by_project.get(project_id, 0)


def _decrement(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count <= 0:
        counts.pop(key, None)
    else:
        counts[key] = count
