"""JSON log lines with the bound job and request ids."""

from __future__ import annotations

import io
import json
import logging

from persistence.logs import clean_request_id, configure_logging, log_context


def test_json_lines_carry_the_bound_ids_and_extras() -> None:
    buffer = io.StringIO()
    handler = configure_logging("json", "INFO", stream=buffer)
    try:
        log = logging.getLogger("worker.test")
        with log_context(job_id="job-1", request_id="req-1"):
            log.info("stage %s done", "mrc", extra={"stage": "mrc", "seconds": 1.5})
            with log_context(job_id="job-2"):
                log.warning("inner")
        log.info("outside")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines[0]["message"] == "stage mrc done" and lines[0]["level"] == "INFO"
    assert (lines[0]["job_id"], lines[0]["request_id"]) == ("job-1", "req-1")
    assert lines[0]["stage"] == "mrc" and lines[0]["seconds"] == 1.5
    assert (lines[1]["job_id"], lines[1]["request_id"]) == ("job-2", "req-1")
    assert (lines[2]["job_id"], lines[2]["request_id"]) == (None, None)
    assert "ValueError: bad" in lines[3]["exc_info"]


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    first = configure_logging("json", stream=io.StringIO())
    second = configure_logging("text", stream=io.StringIO())
    try:
        assert first not in root.handlers and second in root.handlers
    finally:
        root.removeHandler(second)


def test_request_ids_from_clients_are_kept_only_when_safe() -> None:
    assert clean_request_id("abc-123.x:y") == "abc-123.x:y"
    for bad in (None, "", "has space", "x" * 65, "new\nline"):
        replaced = clean_request_id(bad)
        assert replaced != bad and len(replaced) == 32


def test_text_lines_cannot_be_forged_by_a_value_with_line_breaks() -> None:
    """A file name or label holding CR/LF (or an ANSI escape) is written escaped in the text
    format: one record stays one line. Before, ``"x\\n... ERROR api forged"`` printed a second
    line that read like the service's own."""
    stream = io.StringIO()
    handler = configure_logging("text", stream=stream)
    try:
        logging.getLogger("api.test").warning("upload %r refused: %s", "m.pt",
                                              "bad\r\n2026-01-01 ERROR api forged\x1b[2J")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("api.test").exception("failed\nagain")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue()
    assert lines[0].endswith("refused: bad\\r\\n2026-01-01 ERROR api forged\\x1b[2J")
    assert lines[1].endswith("failed\\nagain")
    assert lines[2] == "Traceback (most recent call last):"  # a traceback keeps its lines
