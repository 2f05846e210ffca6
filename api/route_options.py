"""``OPTIONS`` on a route: 204 with ``Allow`` listing the methods its path serves (RFC 9110
§9.3.7), for every route alike, from the app's routing (:func:`api.route_methods.methods_at`).

FastAPI registers only the methods a route names, so ``OPTIONS /v1/jobs`` was a 405 (whose
``Allow`` said the same, as an error). No key is asked for: the answer says only which methods
the path takes, which a 405 told anyone too, and a browser's CORS preflight never carries one.
Nothing is looked up either: ``OPTIONS /v1/jobs/{id}`` answers alike whether the job exists.
A path no route has goes on to the router, whose 404 is the usual one (``path_meant`` for a
trailing slash, ``/v1`` given twice...); ``OPTIONS *`` is :mod:`api.server_wide`'s.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.route_methods import methods_at


class RouteOptions:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS" or scope["path"] == "*":
            await self.app(scope, receive, send)
            return
        methods = methods_at(scope["app"], scope)
        if not methods:
            await self.app(scope, receive, send)
            return
        # 204: no content, so no Content-Length either (RFC 9110 §8.6).
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"allow", ", ".join(methods).encode("ascii"))]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
