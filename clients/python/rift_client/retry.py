"""When and how long to wait before sending a request again.

Retried: answers 429 (rate limited, over a quota) and 503 (the database, broker or store is
down: the service did nothing), for every method; a proxy's 502 and 504 (the service behind it
restarting, or slow to answer: it may have acted), and a connection lost after the request was
sent, only for idempotent requests (reads, deletes, a job's cancel, and the POSTs sent under
an Idempotency-Key); a connection that could not be opened (the request never left), for every
method, unless its certificate check failed (no retry passes that). The delay is the answer's
``Retry-After`` when it has one (seconds or an HTTP date), else exponential backoff with jitter.

A wait (``wait``, ``wait_materialization``) outlives an outage longer than one request's
retries: :class:`Outage` decides how long it keeps looking.
"""

from __future__ import annotations

import math
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from rift_client.errors import (
    RiftAPIError,
    RiftClientError,
    RiftConnectionError,
    RiftUsageError,
    UntrustedCertificateError,
)

#: Answers saying the service did nothing (429: rate limited or over a quota; 503: a dependency
#: down): retried for every method.
RETRY_STATUSES = frozenset({429, 503})
#: A proxy's answers when the service behind it refused the connection, dropped it or did not
#: answer in time (502, 504: a restart, a deploy). The service may have acted on the request,
#: so only idempotent requests are retried; before, neither was, and a GET through a proxy
#: failed at the first 502 of a restart.
GATEWAY_STATUSES = frozenset({502, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries``: retries after the first attempt (0 turns retrying off).
    ``backoff_s``: the first delay without Retry-After, doubled per retry up to ``max_backoff_s``
    (seconds), each drawn uniformly from its upper half so that many clients spread out.
    ``max_retry_after_s``: the longest Retry-After honoured; a longer one is not waited for
    (the error is raised, carrying the header), since a caller would rather know.
    ``max_outage_s``: how long ``wait`` and ``wait_materialization`` go on looking while the
    service cannot be reached or answers 429/502/503/504 past each request's retries (a restart,
    a deploy: the job runs on meanwhile), before raising that error; their ``timeout`` still
    ends them."""

    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    max_outage_s: float = 300.0

    def __post_init__(self) -> None:
        # Checked here, not at the first retry: a negative backoff was "sleep length must be
        # non-negative" after the first 503, and a NaN limit compared false with everything.
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise RiftUsageError(f"max_retries must be a whole number of at least 0, not "
                                 f"{self.max_retries!r}", field="max_retries")
        for name in ("backoff_s", "max_backoff_s", "max_retry_after_s", "max_outage_s"):
            value = getattr(self, name)
            # Infinity is allowed for the two limits only ("always honour", "never give up").
            finite = name in ("backoff_s", "max_backoff_s")
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not value >= 0 or (finite and value == math.inf):
                raise RiftUsageError(f"{name} must be a number of seconds of at least 0"
                                     f"{' and finite' if finite else ''}, not {value!r}", field=name)

    def backoff(self, retry: int) -> float:
        """The delay before retry number ``retry`` (0-based) when the server named none."""
        ceiling = min(self.max_backoff_s, self.backoff_s * (2 ** retry))
        return random.uniform(ceiling / 2, ceiling)

    def delay_for(self, response: httpx.Response, retry: int, *,
                  idempotent: bool = True) -> float | None:
        """Seconds to wait before retrying after ``response`` (the answer to a request that is
        ``idempotent`` or not), or None not to retry it."""
        status = response.status_code
        retryable = status in RETRY_STATUSES or (idempotent and status in GATEWAY_STATUSES)
        if not retryable or retry >= self.max_retries:
            return None
        after = retry_after_seconds(response.headers.get("retry-after"))
        if after is None:
            return self.backoff(retry)
        return after if after <= self.max_retry_after_s else None


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (never negative), or None when absent or unreadable.
    It is either a number of seconds or an HTTP date (RFC 9110, section 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def sent_nothing(exc: httpx.TransportError) -> bool:
    """Whether the request certainly never reached the server (safe to retry for any method)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The failed certificate check behind a transport error (httpx wraps it twice), if any:
    no retry can pass it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (raised once a request's retries were spent) says the service is down or
    busy for now, not that the request is wrong: no connection, or 429/502/503/504 (a
    certificate this machine does not trust is no outage)."""
    if isinstance(exc, UntrustedCertificateError):
        return False
    if isinstance(exc, RiftConnectionError):
        return True
    return isinstance(exc, RiftAPIError) and \
        exc.status_code in RETRY_STATUSES | GATEWAY_STATUSES


class Outage:
    """The outage a wait is living through: since when its looks have failed (None: the last
    one succeeded), whether it may go on looking after another failure, and how long the
    service asked it to stay away (``pause_s``, the last failure's ``Retry-After``).
    ``on_change`` is told when an outage begins (the first failure it tolerates) and when it
    ends (the first look that succeeds after it), with None then."""

    def __init__(self, limit_s: float,
                 on_change: Callable[[RiftClientError | None], None] | None = None) -> None:
        self.limit_s = limit_s
        self.since: float | None = None
        self.pause_s = 0.0
        self.on_change = on_change

    def tolerate(self, exc: RiftClientError, deadline: float | None) -> bool:
        """True to look again later after ``exc``; False to raise it (not an outage, one that
        has lasted ``limit_s``, or the wait's ``deadline`` passed)."""
        now = time.monotonic()
        if not is_outage(exc):
            return False
        began = self.since is None
        since = now if self.since is None else self.since
        self.since = since
        # A Retry-After the request did not wait out (past max_retry_after_s, or its retries
        # spent) is honoured by the next look: looking again every poll_interval would ignore
        # a rate limit the service asked the client to keep.
        headers = exc.headers if isinstance(exc, RiftAPIError) else None
        self.pause_s = (retry_after_seconds(headers.get("retry-after")) or 0.0) \
            if headers is not None else 0.0
        tolerated = now - since < self.limit_s and (deadline is None or now < deadline)
        if began and tolerated and self.on_change is not None:
            self.on_change(exc)
        return tolerated

    def delay(self, interval: float) -> float:
        """Seconds before the next look: ``interval``, or longer when the service asked."""
        return max(interval, self.pause_s)

    def over(self) -> None:
        """A look succeeded."""
        if self.since is not None and self.on_change is not None:
            self.on_change(None)
        self.since = None
        self.pause_s = 0.0
