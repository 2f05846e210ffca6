"""Has the broker lost the messages it held? Then the waiting work is sent again at once.

A Redis broker without persistence (no AOF: a managed Redis, a cache-sized instance, a
``FLUSHALL``) comes back from a restart with every queue empty. The rows those messages drove
still wait (a queued job's stage, MRC shards, sweep candidates, materializations), and the
recovery loop only sends them again ``QUEUED_RESEND_AFTER_SECONDS`` (an hour: a row may just wait
behind a long queue) after their last send, so every job queued at the restart sat an hour.

The broker itself tells: a marker key, written with ``SET NX`` next to the queues, is gone
exactly when the broker lost its data. Each recovery pass sets it; the one pass whose
``SET NX`` makes it (of every worker of the queue) sends every waiting row again now. A first
start of a deployment makes it too and sends its waiting rows again: a copy is harmless, as a
claim is one conditional UPDATE (:mod:`persistence.resend`). Brokers other than Redis keep
their messages (the embedded SQLAlchemy broker is a database): never lost here.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import redis

from persistence.settings import Settings

#: Seconds a marker check may take: a recovery pass must not hang on a broker down.
CHECK_TIMEOUT_S = 3.0


def marker_key(settings: Settings) -> str:
    """The marker's Redis key: one per queue (deployments may share a Redis database)."""
    return f"rift:broker-kept-messages:{settings.celery_queue}"


def _client(settings: Settings) -> redis.Redis | None:
    if not settings.broker_url.lower().startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(settings.broker_url, socket_connect_timeout=CHECK_TIMEOUT_S,
                                socket_timeout=CHECK_TIMEOUT_S)


def broker_lost_messages(settings: Settings) -> bool:
    """True once after the broker lost its data (or was never marked): this caller then sends
    every waiting row again, or calls :func:`forget_marker` if it could not. Raises
    ``redis.RedisError`` when the broker does not answer."""
    client = _client(settings)
    if client is None:
        return False
    try:
        made = client.set(marker_key(settings),
                          f"{datetime.now(UTC).isoformat()} {socket.gethostname()}", nx=True)
    finally:
        client.close()
    return bool(made)


def forget_marker(settings: Settings) -> None:
    """Delete the marker, so the next pass sends the waiting rows again (this one failed)."""
    client = _client(settings)
    if client is None:
        return
    try:
        client.delete(marker_key(settings))
    finally:
        client.close()
