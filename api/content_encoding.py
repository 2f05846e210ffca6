"""Request bodies sent with a ``Content-Encoding``: decoded as they stream, or refused; and the
size limits every body is read under, encoded or not.

``gzip`` (and its old name ``x-gzip``) and ``deflate`` (the zlib format RFC 9110 names, not raw
DEFLATE) are decoded; ``identity`` is no coding. Any other coding, or several stacked, is a 415
``unsupported_content_encoding`` naming ``Content-Encoding`` and the codings accepted, answered
before the key is checked (as for a body that cannot be read at all).

The body is decoded in the wrapped ``receive``, piece by piece, each piece at most
:data:`PIECE_BYTES` of decoded bytes: a small compressed body that expands enormously (a "zip
bomb") is never expanded past what the route reads, and every size limit counts decoded bytes,
because the routes only ever see decoded ones:

- a route whose JSON body FastAPI reads whole (``route.body_field``) gets at most
  ``max_json_bytes`` decoded (413 ``payload_too_large`` on ``body`` beyond);
- every other route reads its body as a stream and applies its own limit (an upload's
  ``MAX_CHECKPOINT_BYTES`` / ``MAX_DATASET_BYTES``, ``POST /v1/jobs``' 1 MiB of JSON) to the
  decoded bytes; ``max_streamed_bytes`` is a backstop for a route that would not.

The headers the routes see lose ``Content-Encoding`` and ``Content-Length`` (which counts the
encoded bytes: an upload's early size check would judge the wrong number). An upload's SHA-256
and size are therefore those of the decoded file, the one stored (what ``sha256sum`` of the
file gives), never of the compressed bytes on the wire. Bytes that are not valid data for their
coding, or a body that ends inside the compressed stream, are a 400 ``invalid_encoded_body``.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi.routing import APIRoute
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BadRequest, PayloadTooLarge, error_body, quote

#: Codings decoded, by the name a client sends, to zlib's window bits for that format.
DECODED_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                   "deflate": zlib.MAX_WBITS}
#: The codings a 415 lists (``x-gzip`` is an alias).
ACCEPTED_CODINGS = ("gzip", "deflate", "identity")
#: The most decoded bytes one ``receive`` hands on: bounds the memory one compressed chunk can
#: make, whatever its ratio.
PIECE_BYTES = 256 * 1024
FIELD = "Content-Encoding"


class UnsupportedCoding(ValueError):
    """A ``Content-Encoding`` this service does not decode (the message says which)."""


def body_coding(header_values: list[str]) -> str | None:
    """The one coding to undo for these ``Content-Encoding`` header values (None: none).

    Raises:
        UnsupportedCoding: a coding not decoded here, or more than one.
    """
    codings = [item.strip().lower() for value in header_values for item in value.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    accepted = ", ".join(ACCEPTED_CODINGS)
    for coding in codings:
        if coding not in DECODED_CODINGS:
            raise UnsupportedCoding(f"the Content-Encoding {quote(coding)} is not accepted; "
                                    f"send the body as {accepted}")
    if len(codings) > 1:
        raise UnsupportedCoding(f"the body is encoded {len(codings)} times ({', '.join(codings)})"
                                f"; send it with one coding of {accepted}")
    return codings[0] if codings else None


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length`` (None: absent; the server refuses a malformed one)."""
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else None
    return None


class _Decoder:
    """One request body's decoding state: compressed bytes fed in, decoded pieces taken out one
    at a time (never more than PIECE_BYTES decoded ahead of the route)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._wbits = DECODED_CODINGS[coding]
        self._inflate = zlib.decompressobj(self._wbits)
        self._pending = b""
        self._fed = False
        self.decoded = 0

    def feed(self, data: bytes) -> None:
        self._pending += data
        self._fed = self._fed or bool(data)

    def next_piece(self) -> bytes:
        """Up to PIECE_BYTES of decoded bytes; b"" once the bytes fed are used up."""
        while self._pending:
            if self._inflate.eof:
                if self.coding == "deflate":
                    raise self._invalid("data follows the end of the deflate stream")
                # gzip allows several members one after the other (RFC 1952 §2.2).
                self._inflate = zlib.decompressobj(self._wbits)
            try:
                piece = self._inflate.decompress(self._pending, PIECE_BYTES)
            except zlib.error as exc:
                raise self._invalid(f"it is not {self.coding} data ({exc})") from None
            self._pending = self._inflate.unconsumed_tail or self._inflate.unused_data
            if piece:
                return piece
        return b""

    def finish(self) -> None:
        """The body has ended: its compressed stream must have too (an empty body is empty)."""
        if self._fed and not self._inflate.eof:
            raise self._invalid(f"the body ended inside its {self.coding} stream")

    def _invalid(self, reason: str) -> BadRequest:
        return BadRequest(f"the body could not be decoded as Content-Encoding "
                          f"{quote(self.coding)}: {reason}", field=FIELD,
                          code="invalid_encoded_body")


class RequestDecoding:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_streamed_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_streamed_bytes = max_streamed_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        values = [value.decode("latin-1") for name, value in headers
                  if name == b"content-encoding"]
        if not values:
            await self.app(scope, self._counting(scope, receive), send)
            return
        try:
            coding = body_coding(values)
        except UnsupportedCoding as exc:
            if not _has_body(headers):  # nothing to decode: the header describes nothing
                await self.app(scope, receive, send)
                return
            response = JSONResponse(
                error_body("unsupported_content_encoding", str(exc), FIELD,
                           {"accepted": list(ACCEPTED_CODINGS)}),
                status_code=415, headers={"Accept-Encoding": ", ".join(ACCEPTED_CODINGS)})
            await response(scope, receive, send)
            return
        if coding is None:
            await self.app(scope, self._counting(scope, receive), send)
            return
        scope["headers"] = [(name, value) for name, value in headers
                            if name not in (b"content-encoding", b"content-length")]
        await self.app(scope, self._decoding(scope, receive, coding), send)

    def _limit(self, scope: Scope) -> tuple[int, str]:
        # Routing has run by the time a route reads its body, and records the route in the scope.
        route: Any = scope.get("route")
        if isinstance(route, APIRoute) and route.body_field is not None:
            return self.max_json_bytes, "the JSON body"
        return self.max_streamed_bytes, "the body"

    def _counting(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` for a body sent as it is: the same limits as a decoded one. A JSON body
        FastAPI reads whole would otherwise be held in memory whatever its size; the streamed
        routes apply their own limits first (``max_streamed_bytes`` is only a backstop).

        A ``Content-Length`` past the limit is refused before the first byte is read: uvicorn
        answers ``Expect: 100-continue`` with "100 Continue" when the body is first read, so a
        client waiting for it (curl does, for bodies over 1 MiB) was told to send the body, and
        the 413 came only after the limit's worth of it had arrived."""
        received = 0
        declared = _content_length(scope["headers"])

        async def counted_receive() -> Message:
            nonlocal received
            limit, what = self._limit(scope)
            if received == 0 and declared is not None and declared > limit:
                raise PayloadTooLarge(
                    f"{what} is {declared} bytes (Content-Length), larger than the limit of "
                    f"{limit} bytes", field="body", details={"limit_bytes": limit})
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                limit, what = self._limit(scope)
                if received > limit:
                    raise PayloadTooLarge(
                        f"{what} is larger than the limit of {limit} bytes", field="body",
                        details={"limit_bytes": limit})
            return message

        return counted_receive

    def _decoding(self, scope: Scope, receive: Receive, coding: str) -> Receive:
        decoder = _Decoder(coding)
        ended = False
        handed_end = False

        async def decoded_receive() -> Message:
            nonlocal ended, handed_end
            if handed_end:
                # The body is over: what comes now is the client's disconnect, which a streamed
                # answer waits for (answering "no more body" again would spin it).
                return await receive()
            piece = decoder.next_piece()
            while not piece and not ended:
                message = await receive()
                if message["type"] != "http.request":
                    return message  # a disconnect: passed on as it is
                decoder.feed(message.get("body", b""))
                piece = decoder.next_piece()
                if not message.get("more_body", False):
                    ended = True
            if ended and not piece:
                decoder.finish()
            decoder.decoded += len(piece)
            limit, what = self._limit(scope)
            if decoder.decoded > limit:
                raise PayloadTooLarge(
                    f"{what} decodes to more than the limit of {limit} bytes", field="body",
                    details={"limit_bytes": limit})
            more = not ended or bool(piece)
            handed_end = not more
            return {"type": "http.request", "body": piece, "more_body": more}

        return decoded_receive
