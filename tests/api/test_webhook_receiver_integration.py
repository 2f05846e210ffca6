"""A platform's receiver, written the way the README tells a user to: a small HTTP server that
checks each request with ``rift_client.verify_webhook`` on the raw body (and, independently, with
the Standard Webhooks algorithm straight from the spec), registered through the API; a real
Celery worker delivers a job's end. Checked end to end: the headers, the body's documented
fields, the same ``webhook-id`` on a retry, event filtering, and that a deleted endpoint gets
nothing more, neither a new message nor the retry of one it had failed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from rift_client import WebhookVerificationError, verify_webhook
from tests.api.helpers import Api
from tests.api.test_job_list_queries import add_jobs
from tests.quiet_http import QuietHTTPServer
from tests.service_fixtures import WorkerProcess, settings_from_env

pytestmark = pytest.mark.service

#: The body fields the README's "Webhooks" section lists.
DATA_FIELDS = {"job_id", "status", "labels", "metrics", "error", "finished_at", "warnings_total",
               "links"}


def spec_signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


@dataclass
class Hit:
    path: str
    header_names: list[str]
    headers: dict[str, str]
    body: bytes
    verified: str | None  # the message type, or the verification error's reason


@dataclass
class PlatformReceiver:
    """Answers each path with its scripted statuses (then 200); secrets are set per path once
    registered, as a platform stores them."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    #: Paths whose answers wait for their event: the test acts while an attempt is in flight.
    holds: dict[str, threading.Event] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    server: Any = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def of(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    def start(self) -> PlatformReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    message = verify_webhook(receiver.secrets[self.path], self.headers, raw)
                    verified = message.type
                except WebhookVerificationError as exc:
                    verified = exc.reason
                receiver.hits.append(Hit(self.path, list(self.headers.keys()),
                                         {k.lower(): v for k, v in self.headers.items()}, raw,
                                         verified))
                if self.path in receiver.holds:
                    receiver.holds[self.path].wait(30)
                scripted = receiver.statuses.get(self.path) or []
                self.send_response(scripted.pop(0) if scripted else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self


@pytest.fixture
def platform() -> Iterator[PlatformReceiver]:
    receiver = PlatformReceiver().start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _wait(until: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_receiver_using_verify_webhook_gets_what_the_readme_says(
        service_env: dict[str, str], start_api: Callable[..., Api],
        start_worker: Callable[..., WorkerProcess], celery_queue: str,
        platform: PlatformReceiver) -> None:
    env = {"WEBHOOK_QUEUE": celery_queue, "WEBHOOK_ALLOW_LIST": "127.0.0.1",
           "WEBHOOK_RETRY_BASE_SECONDS": "0.5", "WEBHOOK_MAX_ATTEMPTS": "4"}
    start_worker(**env)
    api = start_api(settings_from_env({**service_env, **env}))

    def register(path: str, events: list[str] | None = None) -> dict[str, Any]:
        created = api.client.post("/v1/webhooks", json={
            "url": platform.url(path), **({"events": events} if events else {})})
        assert created.status_code == 201, created.text
        hook = created.json()
        platform.secrets[path] = hook["secret"]
        # The secret is shown once: neither the list nor a read repeats it.
        assert "secret" not in api.client.get(f"/v1/webhooks/{hook['id']}").json()
        return dict(hook)

    platform.statuses = {"/ok": [500], "/gone-later": [500, 500, 500]}
    platform.holds["/gone-later"] = answer_gone_later = threading.Event()
    ok = register("/ok")
    register("/succeeded-only", ["job.succeeded"])
    gone = register("/gone")
    gone_later = register("/gone-later", ["job.cancelled"])
    assert api.client.delete(f"/v1/webhooks/{gone['id']}").status_code == 204

    [first_job, second_job] = add_jobs(api, 2, labels={"team": "<vision>"})
    assert api.client.post(f"/v1/jobs/{first_job}/cancel").status_code == 200
    _wait(lambda: len(platform.of("/gone-later")) == 1, "the first attempt to /gone-later")
    # Deleted while its first attempt is in flight (held by the receiver), then answered 500:
    # no retry may follow, nor the second job's message.
    assert api.client.delete(f"/v1/webhooks/{gone_later['id']}").status_code == 204
    answer_gone_later.set()
    _wait(lambda: len(platform.of("/ok")) == 2, "the retry to /ok")
    assert api.client.post(f"/v1/jobs/{second_job}/cancel").status_code == 200
    _wait(lambda: len(platform.of("/ok")) == 3, "the second job's message to /ok")
    time.sleep(1.5)  # past the retry /gone-later would have had (0.5 s after its 500)

    first, retried, second = platform.of("/ok")
    assert [hit.verified for hit in (first, retried, second)] == ["job.cancelled"] * 3
    for hit in (first, retried, second):
        headers = hit.headers
        assert spec_signature(ok["secret"], headers["webhook-id"], headers["webhook-timestamp"],
                              hit.body) in headers["webhook-signature"].split()
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        assert headers["content-type"] == "application/json"
        # The spec's names, lower case, as its own libraries send them.
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(hit.header_names)
    assert first.headers["webhook-id"] == retried.headers["webhook-id"] != \
        second.headers["webhook-id"]
    assert first.body == retried.body

    envelope = json.loads(first.body)
    assert set(envelope) == {"type", "timestamp", "data"}
    assert set(envelope["data"]) == DATA_FIELDS
    data = envelope["data"]
    assert (data["job_id"], data["status"], data["labels"]["team"]) == (
        first_job, "cancelled", "<vision>")
    assert data["links"]["self"] == f"/v1/jobs/{first_job}" and data["warnings_total"] == 0
    assert data["finished_at"] is not None
    assert json.loads(second.body)["data"]["job_id"] == second_job

    # A receiver given the body re-serialized (a framework that parsed it) refuses it; the raw
    # body as text verifies; a header listing a rotated-out signature first still verifies.
    reformatted = json.dumps(envelope, indent=2)
    with pytest.raises(WebhookVerificationError) as refused:
        verify_webhook(ok["secret"], first.headers, reformatted)
    assert refused.value.reason == "invalid_signature"
    assert verify_webhook(ok["secret"], first.headers, first.body.decode()).data.job_id == \
        first_job
    rotated = {**first.headers, "webhook-signature": "v1,"
               + base64.b64encode(b"\0" * 32).decode() + " " + first.headers["webhook-signature"]}
    assert verify_webhook(ok["secret"], rotated, first.body).id == first.headers["webhook-id"]

    assert platform.of("/succeeded-only") == [] and platform.of("/gone") == []
    assert len(platform.of("/gone-later")) == 1
