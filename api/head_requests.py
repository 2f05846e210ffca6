"""HEAD on every GET route: the GET's status and headers, no body (RFC 9110 §9.3.2).

FastAPI registers only the methods a route names, so ``HEAD /v1/jobs/{id}/artifacts/{name}``
(how a download tool learns the size first) or ``HEAD /healthz`` (how many uptime checkers probe)
was a 405. This middleware runs a HEAD request as the GET (same auth, scope ``read``, same
limits) and drops the body: the answer's ``Content-Length`` is still the GET's. A streamed answer
(an artifact, an event stream) is ended after its headers: the wrapped ``receive`` reports the
client gone, which stops a Starlette stream instead of reading it to the end.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: What routing adds to the scope: the matched route and its path parameters.
_ROUTING_KEYS = ("route", "endpoint", "path_params")


class HeadAsGet:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def receive_until_finished() -> Message:
            if finished:
                return {"type": "http.disconnect"}
            return await receive()

        async def send_without_body(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive_until_finished, send_without_body)
        finally:
            # The router records the matched route in the scope it was given; hand it back, so
            # that the metrics and logs outside label a HEAD by its route template, not as
            # "<unmatched>".
            for key in _ROUTING_KEYS:
                if key in as_get:
                    scope[key] = as_get[key]
