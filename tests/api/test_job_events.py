"""``/v1/jobs/{id}/events`` over HTTP: pages by ``after``, and the live Server-Sent Events stream
that delivers new events as they are written and ends when the job has finished."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from persistence import jobs
from tests.api.helpers import Api, digits_config, error_of, upload_checkpoint

pytestmark = pytest.mark.service


@pytest.fixture
def job_id(api: Api, small_cnn_file: Path) -> str:
    checkpoint = upload_checkpoint(api, small_cnn_file)
    response = api.client.post("/v1/jobs", json={"checkpoint_id": checkpoint["id"],
                                                 "config": digits_config()})
    return str(response.json()["id"])


def append(api: Api, job_id: str, kind: str, payload: dict[str, Any]) -> int:
    with api.sessions() as session:
        return int(jobs.append_event(session, job_id, kind, payload).id)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body as dicts with ``event``, ``id`` and parsed ``data``."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def test_event_pages(api: Api, job_id: str) -> None:
    ids = [append(api, job_id, "epoch", {"epoch": i, "val_accuracy": 50.0 + i})
           for i in range(1, 6)]
    first = api.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 3}).json()
    assert [e["kind"] for e in first["items"]] == ["job_created", "epoch", "epoch"]
    assert first["finished"] is False and first["job_status"] == "queued"
    rest = api.client.get(f"/v1/jobs/{job_id}/events",
                          params={"after": first["next_after"], "limit": 100}).json()
    assert [e["id"] for e in rest["items"]] == ids[2:]
    assert rest["items"][-1]["payload"] == {"epoch": 5, "val_accuracy": 55.0}
    empty = api.client.get(f"/v1/jobs/{job_id}/events", params={"after": ids[-1]}).json()
    assert empty["items"] == [] and empty["next_after"] == ids[-1]

    for params in ({"after": -1}, {"after": 2**63}, {"limit": 0}, {"after": "x"}):
        response = api.client.get(f"/v1/jobs/{job_id}/events", params=params)
        assert response.status_code == 422, params
        assert error_of(response)["field"] in ("after", "limit")


def test_stream_of_a_finished_job_replays_and_ends(api: Api, job_id: str) -> None:
    api.client.post(f"/v1/jobs/{job_id}/cancel")
    response = api.client.get(f"/v1/jobs/{job_id}/events",
                              headers={"Accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [e["event"] for e in events] == ["job_created", "job_cancelled", "end"]
    assert events[-1]["data"] == {"status": "cancelled"}
    assert int(events[1]["id"]) == events[1]["data"]["id"]

    # Last-Event-ID resumes after the events the client already has.
    resumed = api.client.get(f"/v1/jobs/{job_id}/events", headers={
        "Accept": "text/event-stream", "Last-Event-ID": events[0]["id"]})
    assert [e["event"] for e in parse_sse(resumed.text)] == ["job_cancelled", "end"]

    # A Last-Event-ID that is not an event id is a 400 naming the header. Before: ignored, so
    # the stream replayed every event (here "²", a digit int() refuses; an id past BIGINT; a
    # browser's empty id; text).
    for odd_id in ("\u00b2".encode("latin-1"), str(2**63), "", "abc", "-1", "1.5"):
        odd = api.client.get(f"/v1/jobs/{job_id}/events", headers={
            "Accept": "text/event-stream", "Last-Event-ID": odd_id})
        assert odd.status_code == 400, (odd_id, odd.text)
        error = error_of(odd)
        assert (error["field"], error["code"]) == ("Last-Event-ID", "invalid_last_event_id")
    # On a page it is read as ?after= is, the larger of the two winning.
    page = api.client.get(f"/v1/jobs/{job_id}/events", params={"after": 0},
                          headers={"Last-Event-ID": events[0]["id"]}).json()
    assert [e["kind"] for e in page["items"]] == ["job_cancelled"]


def test_stream_delivers_new_events_live(api: Api, job_id: str) -> None:
    received: list[tuple[float, dict[str, Any]]] = []

    def listen() -> None:
        with api.client.stream("GET", f"/v1/jobs/{job_id}/events",
                               headers={"Accept": "text/event-stream"}) as response:
            buffer = ""
            for chunk in response.iter_text():
                buffer += chunk
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    for event in parse_sse(block + "\n\n"):
                        received.append((time.monotonic(), event))

    def seen(kind: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not any(e["event"] == kind for _, e in received):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    listener = threading.Thread(target=listen)
    listener.start()
    # The stream is open once its first event arrived (a fixed second was not always enough
    # on a loaded machine, and the warning then came as a replay, not live).
    assert seen("job_created", 60)
    append(api, job_id, "warning", {"message": "live"})
    # Delivered while the job is still queued, before the cancel that ends the stream: a
    # stream that only read again at its end would send it after the cancel, or never.
    delivered_live = seen("warning", 30)
    api.client.post(f"/v1/jobs/{job_id}/cancel")
    listener.join(timeout=60)
    assert not listener.is_alive(), "the stream did not end when the job finished"
    kinds = [e["event"] for _, e in received]
    assert kinds == ["job_created", "warning", "job_cancelled", "end"]
    assert delivered_live, "the warning came only with the job's end"


@pytest.mark.parametrize(("accept", "streams"), [
    ("text/event-stream", True),
    ("text/event-stream, */*;q=0.1", True),
    ("application/json, text/event-stream", True),
    # Before: each of these streamed, since the header merely contained the type.
    ("text/event-stream;q=0, application/json", False),
    ("application/json;q=1, text/event-stream;q=0.5", False),
    ("text/event-stream;q=x", False),
    ("*/*", False),
])
def test_the_stream_is_sent_only_where_accept_prefers_it(api: Api, job_id: str, accept: str,
                                                         streams: bool) -> None:
    api.client.post(f"/v1/jobs/{job_id}/cancel")  # a finished job's stream ends by itself
    response = api.client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": accept})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("text/event-stream" if streams else "application/json")


def test_a_stream_read_takes_two_statements_and_answers_to_the_key(api: Api, job_id: str
                                                                    ) -> None:
    from sqlalchemy import event, select, update

    from api.routes.job_events import _poll
    from persistence.models import ApiKey

    with api.sessions() as session:
        key_id = session.execute(select(ApiKey.id).where(ApiKey.revoked_at.is_(None))
                                 ).scalars().first()
    assert key_id is not None
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not statement.upper().startswith("BEGIN"):
            statements.append(statement)

    engine = api.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", note)
    try:
        read = _poll(api.sessions, job_id, 0, key_id)
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert read is not None
    events, status = read
    assert status == "queued" and [e.kind for e in events][:1] == ["job_created"]
    # The key and the job's status in one statement, then the events (was three).
    assert len(statements) == 2, statements
    assert _poll(api.sessions, "no-such-job", 0, key_id) == ([], None)
    with api.sessions() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id)
                        .values(revoked_at=jobs.utcnow()))
        session.commit()
    assert _poll(api.sessions, job_id, 0, key_id) is None
