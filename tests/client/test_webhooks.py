"""``rift_client.verify_webhook`` against the service's own signing (``worker.webhooks.sign``,
secrets from ``persistence.webhooks.new_secret``, bodies from ``persistence.webhooks.job_payload``'s
envelope): a signed message verifies and parses; a changed body, another secret, a stale or
future timestamp, a missing header or an unsigned version does not."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from persistence.webhooks import new_secret
from rift_client import RiftUsageError, WebhookVerificationError, verify_webhook
from worker.webhooks import sign

NOW = 1_780_000_000
BODY = json.dumps({
    "type": "job.succeeded", "timestamp": "2026-05-28T20:26:40+00:00",
    "data": {"job_id": "job_1", "status": "succeeded", "labels": {"team": "vision"},
             "metrics": {"after": {"clean_accuracy": 91.5}}, "error": None,
             "finished_at": "2026-05-28T20:26:39+00:00", "links": {"self": "/v1/jobs/job_1"}},
}).encode()


def signed(secret: str, body: bytes = BODY, *, message_id: str = "msg_1",
           timestamp: int = NOW) -> dict[str, str]:
    """The headers the service's worker sends with ``body``."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body)}


def reason(secret: str, headers: dict[str, str], body: bytes | str = BODY,
           **kwargs: Any) -> str:
    with pytest.raises(WebhookVerificationError) as refused:
        verify_webhook(secret, headers, body, now=NOW, **kwargs)
    return refused.value.reason


def test_a_message_signed_by_the_service_verifies_and_parses() -> None:
    secret = new_secret()
    message = verify_webhook(secret, signed(secret), BODY, now=NOW)
    assert message.id == "msg_1" and message.type == "job.succeeded"
    assert message.data.job_id == "job_1" and message.data.status == "succeeded"
    assert message.data.labels == {"team": "vision"} and message.data.error is None
    assert message.data.metrics == {"after": {"clean_accuracy": 91.5}}
    # Header names in any case (frameworks differ), the body as text, the secret without its
    # prefix, and the default clock (a message stamped now).
    upper = {k.upper(): v for k, v in signed(secret).items()}
    assert verify_webhook(secret, upper, BODY.decode(), now=NOW) == message
    assert verify_webhook(secret.removeprefix("whsec_"), signed(secret), BODY, now=NOW) == message
    stamped_now = int(time.time())
    assert verify_webhook(secret, signed(secret, timestamp=stamped_now), BODY).id == "msg_1"


def test_changed_bodies_and_other_secrets_do_not_verify() -> None:
    secret = new_secret()
    headers = signed(secret)
    assert reason(secret, headers, BODY.replace(b"succeeded", b"failed")) == "invalid_signature"
    assert reason(secret, headers, json.dumps(json.loads(BODY), indent=1)) == "invalid_signature"
    assert reason(new_secret(), headers) == "invalid_signature"
    # The id and timestamp are signed too: neither can be swapped for another message's.
    assert reason(secret, {**headers, "webhook-id": "msg_2"}) == "invalid_signature"
    later = signed(secret, timestamp=NOW + 10)["webhook-timestamp"]
    assert reason(secret, {**headers, "webhook-timestamp": later}) == "invalid_signature"
    # Only v1 signatures count, and one garbled entry does not hide a good one.
    good = headers["webhook-signature"]
    assert reason(secret, {**headers, "webhook-signature": "v2," + good[3:]}) == \
        "invalid_signature"
    assert reason(secret, {**headers, "webhook-signature": "v1,@@@"}) == "invalid_signature"
    rotated = {**headers, "webhook-signature": f"v1,{'A' * 44} v1,not-base64 {good}"}
    assert verify_webhook(secret, rotated, BODY, now=NOW).id == "msg_1"


def test_timestamps_outside_the_tolerance_are_refused() -> None:
    secret = new_secret()
    for offset in (-301, 301):
        assert reason(secret, signed(secret, timestamp=NOW + offset)) == \
            "timestamp_out_of_tolerance"
    assert verify_webhook(secret, signed(secret, timestamp=NOW - 300), BODY, now=NOW)
    assert reason(secret, signed(secret, timestamp=NOW - 60), tolerance_s=30) == \
        "timestamp_out_of_tolerance"
    headers = {**signed(secret), "webhook-timestamp": "yesterday"}
    assert reason(secret, headers) == "invalid_timestamp"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused_naming_it(missing: str) -> None:
    secret = new_secret()
    headers = {k: v for k, v in signed(secret).items() if k != missing}
    with pytest.raises(WebhookVerificationError, match=missing) as refused:
        verify_webhook(secret, headers, BODY, now=NOW)
    assert refused.value.reason == "missing_header"


def test_a_signed_body_that_is_not_a_message_and_a_secret_that_is_not_one() -> None:
    secret = new_secret()
    for body in (b"[1, 2]", b"not json", json.dumps({"type": "job.failed"}).encode()):
        assert reason(secret, signed(secret, body), body) == "invalid_body"
    with pytest.raises(RiftUsageError, match="whsec_"):
        verify_webhook("whsec_not base64!", signed(secret), BODY, now=NOW)


def test_headers_as_the_standard_library_and_other_frameworks_give_them() -> None:
    """``http.server`` hands a receiver an ``email.message.Message``, Flask a werkzeug
    ``Headers``: neither is a ``Mapping``, which ``headers`` was typed as, so a type-checked
    receiver failed its check though the call worked. The annotation now names what is used
    (``items()``), and both kinds pass it and verify."""
    from email.message import Message
    from typing import get_type_hints

    secret = new_secret()
    stdlib = Message()
    for name, value in signed(secret).items():
        stdlib[name.title()] = value

    class FrameworkHeaders:  # werkzeug-like: items() and nothing of a Mapping
        def __init__(self, pairs: dict[str, str]) -> None:
            self._pairs = list(pairs.items())

        def items(self) -> list[tuple[str, str]]:
            return self._pairs

    accepted = get_type_hints(verify_webhook)["headers"]
    for headers in (stdlib, FrameworkHeaders(signed(secret)), signed(secret)):
        assert isinstance(headers, accepted)
        assert verify_webhook(secret, headers, BODY, now=NOW).id == "msg_1"


def test_forged_headers_and_bodies_raise_only_verification_errors() -> None:
    """What a sender controls (the headers, the body's bytes) must end in a
    WebhookVerificationError, the one exception a receiver's handler is told to catch: a
    timestamp of 400 digits raised OverflowError, of 5,000 ValueError, and text that no body
    decodes to UnicodeEncodeError, each a 500 from the receiver."""
    secret = new_secret()
    for stamp in ("9" * 16, "9" * 400, "9" * 5000):
        assert reason(secret, {**signed(secret), "webhook-timestamp": stamp}) == \
            "invalid_timestamp"
    assert reason(secret, signed(secret), "\ud800" + BODY.decode()) == "invalid_body"
    # Text decoded with surrogateescape (bytes that are not UTF-8 kept) is the same bytes.
    odd = BODY[:-1] + b' \xff}'
    text = odd.decode("utf-8", "surrogateescape")
    assert reason(secret, signed(secret, odd), text) == "invalid_body"  # signed, not JSON text
    assert reason(secret, signed(secret), text) == "invalid_signature"
