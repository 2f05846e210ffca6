"""uvicorn's HTTP/1.1 protocols, answering the requests they refuse themselves in the API's JSON.

uvicorn refuses a request it cannot parse before any application runs, with a plain-text 400
("Invalid HTTP request received."), which a client parsing ``{"error": {...}}`` cannot read.
These subclasses keep uvicorn's parsing and answer such a request with the API's error body
(``invalid_http_request``, ``field`` null). The image and docker-compose run the API with
``--http api.http_protocol:HttpToolsProtocol`` (the parser uvicorn picks when httptools is
installed); ``api.http_protocol:H11Protocol`` is the pure-Python twin.

**The request head's limit.** ``--h11-max-incomplete-event-size`` (``REQUEST_HEAD_MAX_BYTES``
in ``persistence/settings.py``; the image and compose pass it) bounds the request line and
headers: uvicorn gives it to h11; httptools has no such bound of its own (headers of any size
were buffered) and only fails URLs of 64 KiB or more (its URL parser's offsets are 16 bits), so
:class:`HttpToolsProtocol` counts the bytes read before the headers end itself. Past the limit:
431 ``request_head_too_large`` naming ``limit_bytes``, and the connection is closed. h11 words
its own refusal as a 400 (the cause is not passed on), in JSON too.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl, httptools_impl

from api.errors import error_body

#: The head's bound when uvicorn is not given one (uvicorn's own h11 default is 16 KiB).
DEFAULT_HEAD_BYTES = 64 * 1024

_INVALID = ("the request could not be read as HTTP/1.1: a malformed request line or header, a "
            "request line and headers past the server's limit, or a URL (path and query "
            "string) of 64 KiB or more; send long inputs in a JSON body")


def _json(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    return json.dumps(error_body(code, message, None, details)).encode()


def head_limit(config: Any) -> int:
    """The request head's bound of a uvicorn ``config`` (see the module docstring)."""
    return int(getattr(config, "h11_max_incomplete_event_size", None) or DEFAULT_HEAD_BYTES)


class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
    """uvicorn's httptools protocol with JSON refusals and a bound on the request head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit = head_limit(self.config)
        self._in_head = True  # between a message's start (or the connection's) and its headers
        self._head_bytes = 0
        self._ended_in_chunk = False

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self._head_ends_within_limit(data):
            self.logger.warning("Request head past %d bytes refused.", self._head_limit)
            self._refuse(431, _json(
                "request_head_too_large",
                f"the request line and headers are larger than the limit of {self._head_limit} "
                "bytes; send long inputs in a JSON body", {"limit_bytes": self._head_limit}))
            return
        self._ended_in_chunk = False
        super().data_received(data)
        if self._in_head and not self._ended_in_chunk:
            # A head still unfinished after the whole chunk: all of it was head. (After a
            # message ended in this chunk the next head's share is unknown: not counted.)
            self._head_bytes += len(data)

    def _head_ends_within_limit(self, data: bytes) -> bool:
        room = self._head_limit - self._head_bytes
        # The head ends at the first blank line: within the room left, or the chunk fits it.
        return len(data) <= room or b"\r\n\r\n" in data[:max(room, 0) + 4]

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._ended_in_chunk = True, 0, True

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, _json("invalid_http_request", _INVALID))

    def shutdown(self) -> None:
        """The server stops (SIGTERM): end a response streaming without a length now.

        uvicorn waits for every response in progress to finish before its process exits, and
        an event stream never does: the API outlived ``docker stop``'s 10 s and was killed,
        cutting the uploads it was finishing. Such a response (``transfer-encoding: chunked``:
        event streams, a download read from S3 part by part) gets its last chunk here, between
        two of its writes, so the client sees a well-formed end and reconnects (an event
        stream with ``Last-Event-ID``, a download with ``Range``); the application's next read
        is told the client left, which ends its stream. A request still arriving, or a route
        that has not answered yet, is waited for as before.
        """
        cycle = self.cycle
        if (cycle is not None and cycle.response_started and not cycle.response_complete
                and cycle.chunked_encoding and not cycle.disconnected):
            self.transport.write(b"0\r\n\r\n")
            cycle.disconnected = True  # its later sends are dropped, its receive says so
            cycle.message_event.set()
            self.transport.close()
            return
        super().shutdown()

    def _refuse(self, status: int, body: bytes) -> None:
        content = [httptools_impl.STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol with its refusals in JSON."""

    def send_400_response(self, msg: str) -> None:
        body = _json("invalid_http_request", _INVALID)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode("ascii")),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
