"""Delivering webhook messages: sign (Standard Webhooks), check the target, POST, record.

Signature (https://www.standardwebhooks.com): the headers ``webhook-id`` (the message id, the
same on every attempt), ``webhook-timestamp`` (Unix seconds of this attempt) and
``webhook-signature: v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, where the key
is the base64-decoded part of the endpoint's ``whsec_`` secret. A 2xx answer settles the message;
anything else (another status, a timeout, a refused target) is retried after
``WEBHOOK_RETRY_BASE_SECONDS · 2^(attempt-1)`` (at most ``WEBHOOK_RETRY_MAX_SECONDS``), up to
``WEBHOOK_MAX_ATTEMPTS`` attempts, then the message is marked failed. The target is checked
against SSRF before every attempt and the request goes to the checked address, without
following redirects (:mod:`persistence.outbound`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from persistence import webhooks
from persistence.db_clock import db_now
from persistence.logs import keep_urls_out_of_logs
from persistence.outbound import AllowList, Resolver, TargetRefused, check_target, resolve
from persistence.settings import Settings
from worker.runtime import WorkerResources

logger = logging.getLogger(__name__)
# httpx logs each POST's URL at INFO, and a receiver's URL may be its secret: see the function.
keep_urls_out_of_logs()

USER_AGENT = "rift-webhooks/1"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhooks.secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
    return float(min(settings.webhook_retry_max_seconds,
                     settings.webhook_retry_base_seconds * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, allow: AllowList, *, headers: dict[str, str], body: bytes, timeout: float,
         resolver: Resolver = resolve) -> AttemptResult:
    """One checked POST of ``body`` to ``url``."""
    try:
        target = check_target(url, allow, resolver)
    except TargetRefused as exc:
        return AttemptResult(None, f"target refused: {exc.message}")
    deadline = _Deadline(timeout)
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    try:
        # trust_env=False: a proxy from the environment would connect to the host again,
        # bypassing the address just checked.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST", target.pinned_url, content=body, extensions=extensions,
                headers={**headers, "Host": target.host_header, "User-Agent": USER_AGENT,
                         "Content-Type": "application/json"})
            # stream=True: only the status line counts, so the body is never read (a
            # receiver announcing gigabytes, or trickling them, costs neither memory nor time).
            with deadline:
                response = client.send(request, stream=True)
                response.close()
    except httpx.HTTPError as exc:
        if deadline.expired:
            return AttemptResult(None, f"no answer within {timeout:g} s "
                                       "(WEBHOOK_TIMEOUT_SECONDS, the whole attempt)")
        return AttemptResult(None, f"{type(exc).__name__}: {str(exc)[:200]}")
    if 200 <= response.status_code < 300:
        return AttemptResult(response.status_code, None)
    return AttemptResult(response.status_code, f"the receiver answered HTTP {response.status_code}")


class _Deadline:
    """Bounds a whole attempt by ``seconds``: httpx's timeout bounds each read, so a receiver
    sending its answer's head a byte at a time, each byte within the timeout, held a delivery
    worker for hours. When the time is up the connection's socket is shut down, which ends the
    blocked read at once (the socket is learned from httpcore's trace of the TCP connect)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                with self._lock:
                    self._sockets.append(sock)
                    if self.expired:  # connected just after the time ran out
                        _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def deliver(resources: WorkerResources, delivery_id: str, *,
            schedule_retry: Callable[[str, float], None],
            now: Callable[[], datetime] | None = None) -> str:
    """Make the next attempt of one message; returns what happened (for logs and tests).
    ``now``: the clock (default: the database's, which the sweep and the other workers judge
    ``next_attempt_at`` by, persistence/db_clock.py)."""
    settings = resources.settings
    with resources.session() as session:
        loaded = webhooks.load_delivery(session, delivery_id)
        if loaded is None:
            return "missing"
        delivery, endpoint = loaded
        if delivery.status != webhooks.WebhookDeliveryStatus.PENDING:
            return "settled"
        seen, url, secret = delivery.attempts, endpoint.url, endpoint.secret
        body = delivery.body.encode("utf-8")
        started = now() if now is not None else db_now(session)
        lease = started + timedelta(seconds=2 * settings.webhook_timeout_seconds + 5)
        if not webhooks.claim_attempt(session, delivery_id, seen, started, lease):
            return "not_due"
    attempt = seen + 1
    timestamp = int(time.time())
    headers = {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, delivery_id, timestamp, body)}
    clock = time.monotonic()
    result = post(url, AllowList.parse(settings.webhook_allow_list), headers=headers, body=body,
                  timeout=settings.webhook_timeout_seconds)
    duration_ms = (time.monotonic() - clock) * 1000
    retry_at = None
    delay = 0.0
    if not result.succeeded and attempt < settings.webhook_max_attempts:
        delay = retry_delay(settings, attempt)
        # On the database's clock: the start read from it plus the POST's time, no second read.
        current = (now() if now is not None
                   else started + timedelta(milliseconds=duration_ms))
        retry_at = current + timedelta(seconds=delay)
    with resources.session() as session:
        recorded = webhooks.record_attempt(
            session, delivery_id, attempt, status_code=result.status_code, error=result.error,
            started_at=started, duration_ms=round(duration_ms, 2), succeeded=result.succeeded,
            retry_at=retry_at)
    if not recorded:
        # The endpoint (or its project) was deleted during the POST: nothing left to retry.
        return "deleted"
    if result.succeeded:
        return "delivered"
    if retry_at is None:
        logger.warning("webhook message %s failed after %d attempts: %s", delivery_id, attempt,
                       result.error)
        return "failed"
    schedule_retry(delivery_id, delay)
    return "retry"
