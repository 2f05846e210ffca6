"""The in-process rate limiter and the stream slots (the Redis limiter is exercised against real
Redis in tests/reliability/test_limits.py)."""

from __future__ import annotations

from api.limits import InMemoryRateLimiter, StreamSlots, retry_after_header


def test_fixed_window_counts_and_retry_after() -> None:
    now = [120.0]
    limiter = InMemoryRateLimiter(clock=lambda: now[0])
    assert [limiter.hit("p", 3) for _ in range(3)] == [None, None, None]
    now[0] = 150.0
    retry = limiter.hit("p", 3)
    assert retry == 30.0 and retry_after_header(retry) == "30"
    assert limiter.hit("q", 3) is None  # another project has its own count
    now[0] = 180.0  # the next window
    assert limiter.hit("p", 3) is None


def test_stream_slots() -> None:
    slots = StreamSlots()
    assert slots.acquire("k", 2) and slots.acquire("k", 2)
    assert not slots.acquire("k", 2)
    assert slots.acquire("other", 2)
    slots.release("k")
    assert slots.acquire("k", 2)
