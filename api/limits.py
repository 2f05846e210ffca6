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
from typing import Protocol

logger = logging.getLogger(__name__)


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_s: int = 60) -> float | None:
        """Count one request of ``key``; None if it is within ``limit`` per ``window_s``
        seconds, else the seconds until the window ends (for Retry-After)."""
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

    def close(self) -> None:
        self._redis.close()


def rate_limiter_for(broker_url: str) -> RateLimiter:
    """Redis when the broker is Redis (production), else in-process (embedded mode)."""
    if broker_url.split("://", 1)[0].lower() in ("redis", "rediss"):
        return RedisRateLimiter(broker_url)
    return InMemoryRateLimiter()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """Open event streams per API key, counted in this process (a stream is a connection to
    this process, so that is where it is held)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key_id: str, limit: int) -> bool:
        """Take a slot; False if ``limit`` streams of the key are already open."""
        with self._lock:
            count = self._open.get(key_id, 0)
            if count >= limit:
                return False
            self._open[key_id] = count + 1
            return True

    def release(self, key_id: str) -> None:
        with self._lock:
            count = self._open.get(key_id, 0) - 1
            if count <= 0:
                self._open.pop(key_id, None)
            else:
                self._open[key_id] = count
