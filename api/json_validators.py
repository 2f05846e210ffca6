"""An ``ETag`` on every JSON answer to a GET, and 304 Not Modified for a client that holds it.

A client polling a job (``GET /v1/jobs/{id}`` every few seconds), or a cache in front of the API,
had no validator on the JSON answers (only artifact downloads had one: :mod:`api.conditional`),
so every poll sent the whole document again. Here a 200 JSON answer to a GET (HEAD runs as one:
:mod:`api.head_requests`) gets a strong ``ETag`` computed from its bytes, and an
``If-None-Match`` that names it (compared weakly, RFC 9110 §13.1.2) gets 304 with no body.
The tag is a digest of exactly the bytes sent, so it changes whenever the answer does (a status,
a queue position, a new item on a list page); ``Cache-Control: no-cache`` makes a cache ask
again each time rather than serve a stored copy of a job that may have moved on.

A route that sets its own ``ETag`` (one that leaves out fields changing without a write, so
that ``If-Match`` on the resource's writes does not fail over them: an API key's) keeps it, and
its answer is never a 304 (see below).

Only JSON answers sent whole (one body message, as ``JSONResponse`` sends) are tagged; streams
(event streams, downloads, which set their own validators) pass through untouched.
"""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.conditional import none_match

#: Headers of a 200 a 304 leaves out: it has no body (RFC 9110 §15.4.5).
_BODY_HEADERS = ("content-length", "content-type")


def json_etag(body: bytes) -> str:
    """The quoted strong ETag of an answer's bytes (128 bits of their SHA-256)."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


class JsonValidators:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if_none_match = Headers(scope=scope).get("if-none-match")
        start: Message | None = None

        async def send_tagged(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] == 200 and content_type.startswith("application/json"):
                    start = message  # held until the body shows whether it comes whole
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            held, start = start, None
            body = message.get("body", b"")
            if message.get("more_body", False):  # a stream: sent as it is, untagged
                await send(held)
                await send(message)
                return
            headers = MutableHeaders(raw=list(held.get("headers", [])))
            own = headers.get("etag")
            etag = own or json_etag(body)
            headers["ETag"] = etag
            headers["Cache-Control"] = "no-cache"
            # A route's own tag leaves out fields that move without a write (a key's
            # last_used_at, api.write_conditions.representation_etag): a 304 for it would tell
            # a client holding an older copy of those fields that its copy is current, so such
            # an answer always comes whole.
            if own is None and if_none_match is not None and none_match(if_none_match, etag):
                for name in _BODY_HEADERS:
                    del headers[name]
                await send({"type": "http.response.start", "status": 304,
                            "headers": headers.raw})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send({**held, "headers": headers.raw})
            await send(message)

        await self.app(scope, receive, send_tagged)
