"""Checking a webhook request on the receiving side.

The service signs each message as the Standard Webhooks spec says
(https://www.standardwebhooks.com, and ``worker/webhooks.py`` in the service):

- ``webhook-id``: the message's id, the same on every attempt (use it to drop repeats);
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, where
  ``key`` is the base64-decoded part of the endpoint's ``whsec_...`` secret. The spec allows
  several space-separated signatures (a secret being rotated); one matching is enough.

::

    from rift_client import WebhookVerificationError, verify_webhook

    def receive(request):                       # any web framework
        try:
            message = verify_webhook(SECRET, request.headers, request.body)
        except WebhookVerificationError:
            return 400
        if message.type == "job.succeeded":
            ...
        return 204

Verify the raw body as received, before any JSON parsing: re-serialized JSON does not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from rift_client.errors import RiftUsageError, WebhookVerificationError
from rift_client.models import WebhookMessage

SECRET_PREFIX = "whsec_"
#: How far a message's timestamp may be from the receiver's clock (seconds), either way: the
#: Standard Webhooks libraries' default. It bounds how long a captured request can be replayed;
#: the service stamps each attempt afresh, so a retried message is never too old.
DEFAULT_TOLERANCE_S = 300.0
SIGNATURE_VERSION = "v1"
#: Unix seconds have 10 digits until the year 2286; more than this is no timestamp.
MAX_TIMESTAMP_DIGITS = 15


def _secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (the prefix is optional)."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise RiftUsageError("the webhook secret is not 'whsec_' followed by base64 (the "
                             "'secret' of the registration's answer)", field="secret") from None


@runtime_checkable
class Headers(Protocol):
    """A request's headers as any framework gives them: anything with ``items()`` of (name,
    value) pairs. Typed as ``Mapping`` before, so a receiver on the standard library's
    ``http.server`` (its ``email.message.Message``) or on Flask (werkzeug ``Headers``), neither of
    them a ``Mapping``, failed its type check though the call worked."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def _raw_body(body: bytes | str) -> bytes:
    """The body's bytes; text back to the bytes it was decoded from. Text decoded with
    ``errors="surrogateescape"`` (which keeps bytes that are not UTF-8) is encoded back the same
    way; text that no bytes decode to (a lone surrogate) raised UnicodeEncodeError, not a
    WebhookVerificationError."""
    if not isinstance(body, str):
        return bytes(body)
    try:
        return body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise WebhookVerificationError(
            f"the body is text that no request body decodes to ({exc.reason} at character "
            f"{exc.start}): pass the raw bytes as received", reason="invalid_body") from None


def _header(headers: Headers, name: str) -> str:
    # Frameworks differ in the case they give header names; HTTP names are case-insensitive.
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"the request has no {name} header", reason="missing_header")


def verify_webhook(secret: str, headers: Headers, body: bytes | str, *,
                   tolerance_s: float = DEFAULT_TOLERANCE_S,
                   now: float | None = None) -> WebhookMessage:
    """Check a webhook request's signature and timestamp and return its message.

    Args:
        secret: The endpoint's ``whsec_...`` secret (``RiftClient.create_webhook``'s answer).
        headers: The request's headers, any case (a dict, or a framework's header mapping).
        body: The raw request body, exactly as received (a str is taken as its UTF-8 bytes).
        tolerance_s: How far ``webhook-timestamp`` may be from ``now``, either way (seconds).
        now: Unix seconds to compare against (default: ``time.time()``).

    Raises:
        WebhookVerificationError: a header is missing, the timestamp is not an integer or is
            outside the tolerance, no ``v1`` signature matches, or the signed body is not a
            RiFT message (``reason`` tells which).
        RiftUsageError: ``secret`` is not a webhook secret.
    """
    key = _secret_key(secret)
    raw = _raw_body(body)
    message_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp").strip()
    signatures = _header(headers, "webhook-signature")
    # Bounded before int(): 400 digits raised OverflowError (comparing with the clock), 5,000
    # ValueError (Python's limit on int()), neither of them a WebhookVerificationError, so a
    # forged request answered with a 500 where the receiver's handler expected one kind.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:40]!r} is not Unix seconds",
                                       reason="invalid_timestamp")
    skew = (time.time() if now is None else now) - int(stamp)
    if abs(skew) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'} "
            f"(tolerance {tolerance_s:g} s): a replayed request, or a clock that is off",
            reason="timestamp_out_of_tolerance")
    expected = hmac.new(key, f"{message_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    for candidate in signatures.split():
        version, _, encoded = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            break
    else:
        raise WebhookVerificationError(
            "no v1 signature in webhook-signature matches the body (another secret, or the "
            "body was changed or re-encoded)", reason="invalid_signature")
    try:
        envelope = json.loads(raw)
        if not isinstance(envelope, dict):
            raise ValueError("not a JSON object")
        return WebhookMessage.model_validate({**envelope, "id": message_id})
    except ValueError as exc:  # not JSON (UnicodeDecodeError too), or another shape
        raise WebhookVerificationError(f"the signed body is not a RiFT webhook message: "
                                       f"{str(exc)[:300]}", reason="invalid_body") from exc
