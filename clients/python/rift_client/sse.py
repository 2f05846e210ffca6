"""A small parser of Server-Sent Events (the WHATWG "event stream" format) over text lines.

Only what the RiFT service sends is needed, but the rules are the standard ones: fields
``id``, ``event``, ``data`` (several lines joined with newlines) and ``retry``; a line starting
with ``:`` is a comment (keep-alive); a blank line dispatches the event; an event with no data
line is not dispatched; an ``id`` containing NUL is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None


class SSEDecoder:
    """Feed it lines (without their line terminator); it returns an event at each blank line.

    ``last_event_id`` is the stream's last-event-id buffer: the id to send back as
    ``Last-Event-ID`` when reconnecting. ``retry_ms`` is the reconnection delay the server asked
    for, if any.
    """

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._seen_data = False

    def feed(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._seen_data = True
        elif name == "id":
            if "\x00" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._seen_data:
            event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data),
                                    id=self.last_event_id, retry_ms=self.retry_ms)
        self._event, self._data, self._seen_data = "", [], False
        return event


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The events in a stream of lines; an event not ended by a blank line is dropped, as a
    browser drops it when the connection closes mid-event."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
