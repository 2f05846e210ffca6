"""Requests answered before routing, about the server rather than a resource (RFC 9110):

- an ``Expect`` other than ``100-continue`` (§10.1.1): the only expectation this server meets is
  100-continue (uvicorn sends "100 Continue" when the body is first read); any other was
  ignored and the request carried out as if it were not there. It is now 417
  ``expectation_failed`` naming the header, before the body is read.
- ``OPTIONS *`` (the asterisk form, §9.3.7): a question about the server as a whole, which was
  routed as the path ``*`` and answered 404. It is now 200 with ``Allow`` listing every method
  some route takes (plus HEAD, which every GET route answers: :mod:`api.head_requests`).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body
from api.route_methods import ALLOW_ORDER

#: The one expectation this server meets (compared case-insensitively, §10.1.1).
MET_EXPECTATION = "100-continue"


def server_methods(app: Any) -> list[str]:
    """Every method some documented route of ``app`` takes (its OpenAPI paths: the public view
    of the routes, cached by FastAPI), with HEAD and OPTIONS, in a stable order."""
    methods = {"HEAD", "OPTIONS"}
    for item in app.openapi().get("paths", {}).values():
        methods.update(name.upper() for name in item if name.upper() in ALLOW_ORDER)
    return sorted(methods, key=ALLOW_ORDER.index)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
                  ) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode("ascii")), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ServerWideRequests:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        expect = Headers(scope=scope).getlist("expect")
        unmet = [value for value in expect if value.strip().lower() != MET_EXPECTATION]
        if unmet:
            body = json.dumps(error_body(
                "expectation_failed",
                f"Expect: {unmet[0][:64]!r} is not an expectation this server meets; the only "
                f"one is {MET_EXPECTATION} (or leave the header out)", "Expect")).encode()
            await _answer(send, 417, body, [(b"content-type", b"application/json")])
            return
        if scope["method"] == "OPTIONS" and scope["path"] == "*":
            allow = ", ".join(server_methods(scope["app"]))
            await _answer(send, 200, b"", [(b"allow", allow.encode("ascii"))])
            return
        await self.app(scope, receive, send)
