"""A request waiting for "100 Continue" learns that its key is refused before it sends its body.

uvicorn answers ``Expect: 100-continue`` with "100 Continue" when the app first reads the body.
FastAPI reads a JSON body whole before it runs a route's dependencies, so the key
(``api.auth.get_caller``) was checked only once the body had arrived: a client with a wrong,
revoked or read-only key was told to send its body (up to 1 MiB) for a 401 or 403. The routes
that read their bodies themselves (uploads, ``POST /v1/jobs``) check the key first already.

:class:`KeyBeforeBody` wraps ``receive``: when a JSON-body route behind the key guard first reads
the body of a request that expects 100-continue, the key and its scope are checked there, and a
refusal is raised before a byte is asked for (answered as the route's own 401 / 403 would be).
The request is counted against the rate limit once, by ``get_caller``, when the route runs.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authorized_caller

#: Where the key guard is: every ``/v1`` route but the probes, which take no body (api.main).
#: (The guard is the ``/v1`` router's dependency, which the matched route does not list.)
KEYED_PATH_PREFIX = "/v1/"


def _guarded_json_route(route: Any, path: str) -> bool:
    """A route FastAPI reads a JSON body for, behind the key guard."""
    return (isinstance(route, APIRoute) and route.body_field is not None
            and path.startswith(KEYED_PATH_PREFIX))


class KeyBeforeBody:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or headers.get("expect", "").strip().lower() != "100-continue":
            await self.app(scope, receive, send)
            return
        checked = False

        async def receive_after_key() -> Message:
            nonlocal checked
            if not checked:
                checked = True
                # Routing has run by the first read, and recorded the route in the scope.
                if _guarded_json_route(scope.get("route"), scope["path"]):
                    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
                    authorized_caller(scope["app"].state, headers.getlist("authorization"),
                                      token if scheme.lower() == "bearer" and token else None,
                                      scope["method"], scope["path"])
            return await receive()

        await self.app(scope, receive_after_key, send)
