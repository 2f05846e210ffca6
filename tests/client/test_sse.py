"""The Server-Sent Events parser: the standard's field rules, on the lines the service sends and
on the corner cases of the format."""

from __future__ import annotations

from rift_client.sse import ServerSentEvent, SSEDecoder, iter_sse


def _lines(text: str) -> list[str]:
    return text.split("\n")


def test_events_as_the_service_sends_them() -> None:
    stream = ("retry: 2000\n\n"
              'id: 4\nevent: epoch\ndata: {"id":4}\n\n'
              ": keep-alive\n\n"
              'id: 5\nevent: job_succeeded\ndata: {"id":5}\n\n'
              'event: end\ndata: {"status": "succeeded"}\n\n')
    events = list(iter_sse(_lines(stream)))
    assert events == [
        ServerSentEvent("epoch", '{"id":4}', "4", 2000),
        ServerSentEvent("job_succeeded", '{"id":5}', "5", 2000),
        # An event without an id keeps the last one seen (the stream's last-event-id).
        ServerSentEvent("end", '{"status": "succeeded"}', "5", 2000),
    ]


def test_field_rules() -> None:
    decoder = SSEDecoder()
    # Several data lines are joined with newlines; one leading space after the colon is dropped.
    for line in ("data:first", "data:  second", "id: 7\x00", "retry: soon", "unknown: x"):
        assert decoder.feed(line) is None
    event = decoder.feed("")
    assert event == ServerSentEvent("message", "first\n second", None, None)
    # A block with no data line dispatches nothing, but its id is remembered.
    assert decoder.feed("id: 9") is None and decoder.feed("") is None
    assert decoder.last_event_id == "9"


def test_an_event_cut_before_its_blank_line_is_dropped() -> None:
    assert list(iter_sse(["id: 1", "data: whole", "", "id: 2", "data: cut"])) == [
        ServerSentEvent("message", "whole", "1", None)]
