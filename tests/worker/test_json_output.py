"""A real ``celery worker`` with ``LOG_FORMAT=json``: every line it writes, from start to a warm
shutdown, is one JSON object (what a log shipper parsing JSON lines gets)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.service_fixtures import WorkerProcess
from worker.json_output import json_notice

pytestmark = [pytest.mark.service]


def test_every_line_of_a_json_logging_worker_is_json(
        start_worker: Callable[..., WorkerProcess]) -> None:
    # Before: Celery's banner (ASCII art, queues, tasks), a warning raised before its logging
    # was set up, and "worker: Warm shutdown (MainProcess)" were plain text among the JSON lines.
    worker = start_worker(LOG_FORMAT="json")
    worker.stop()  # SIGTERM: the warm shutdown notice
    lines = worker.log().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}\n{worker.log()[-3000:]}")
    assert all(isinstance(r, dict) and {"ts", "level", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any(m.endswith(" ready.") for m in messages)
    assert any("Warm shutdown" in m for m in messages)
    starting = next(r for r in records if r["logger"] == "worker.json_output")
    assert starting["queues"] and starting["concurrency"] == 1  # the banner's facts


def test_a_notice_with_line_breaks_and_odd_text_is_one_json_line() -> None:
    line = json_notice("\nworker: Warm shutdown\n\"quoted\" é \ud800\n")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["message"].startswith("worker: Warm shutdown\n\"quoted\" é")
