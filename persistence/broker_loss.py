"""Has the broker lost the messages it held? Then the waiting work is sent again at once.

A Redis broker without persistence (no AOF: a managed Redis, a cache-sized instance, a
``FLUSHALL``) comes back from a restart with every queue empty. The rows those messages drove
still wait (a queued job's stage, MRC shards, sweep candidates, materializations), and the
recovery loop only sends them again ``QUEUED_RESEND_AFTER_SECONDS`` (an hour: a row may just wait
behind a long queue) after their last send, so every job queued at the restart sat an hour.

The broker itself tells: a marker key beside the queues holds a random token, set with ``SET NX``
by whichever recovery pass finds it missing. A worker that saw one token and now reads another
knows the broker lost its data in between; of all such workers, the one that claims the new
token (``SET NX`` on a second key) sends every waiting row again. A worker that never saw a
token (its first pass: a new deployment, or every worker restarted with the broker) takes the
token as it finds it: it cannot tell a loss from a first start, and a first start would copy
every message of a long queue; such a loss is left to ``QUEUED_RESEND_AFTER_SECONDS``. A copy of
a message that was not lost is harmless, as a claim is one conditional UPDATE
(:mod:`persistence.resend`). Brokers other than Redis keep their messages (the embedded
SQLAlchemy broker is a database): nothing to watch.
"""

from __future__ import annotations

import uuid

import redis

from persistence.settings import Settings

#: Seconds a marker check may take: a recovery pass must not hang on a broker that is down.
CHECK_TIMEOUT_S = 3.0
#: Seconds the claim of one token's re-send is kept (long past any worker's next pass).
CLAIM_TTL_S = 24 * 3600


def marker_key(settings: Settings) -> str:
    """The marker's Redis key: one per queue (deployments may share a Redis database)."""
    return f"rift:broker-token:{settings.celery_queue}"


class BrokerLossWatch:
    """One recovery loop's view of the broker's marker (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis = settings.broker_url.lower().startswith(("redis://", "rediss://"))
        self._seen: str | None = None
        self._previous: str | None = None
        self._claimed: str | None = None

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.broker_url,
                                    socket_connect_timeout=CHECK_TIMEOUT_S,
                                    socket_timeout=CHECK_TIMEOUT_S, decode_responses=True)

    def lost_messages(self) -> bool:
        """True when the broker lost its data since this watch's last look and this caller is
        the one to send the waiting rows again (it calls :meth:`resend_failed` if it could
        not). Raises ``redis.RedisError`` when the broker does not answer."""
        if not self._redis:
            return False
        key = marker_key(self.settings)
        with self._client() as client:
            client.set(key, uuid.uuid4().hex, nx=True)
            current = client.get(key)
            previous, self._seen = self._seen, current
            if previous is None or current is None or current == previous:
                return False
            if not client.set(f"{key}:resent:{current}", "1", nx=True, ex=CLAIM_TTL_S):
                return False  # another worker's pass sends them
        self._claimed, self._previous = current, previous
        return True

    def resend_failed(self) -> None:
        """Release this pass's claim, so the next pass (of any worker) sends them again."""
        if self._claimed is None:
            return
        with self._client() as client:
            client.delete(f"{marker_key(self.settings)}:resent:{self._claimed}")
        self._seen, self._claimed = self._previous, None
