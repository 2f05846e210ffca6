"""The key is checked before a JSON body is read, on every route behind the key guard.

FastAPI reads a route's JSON body whole, and parses it, before it runs the route's
dependencies, so the key (``api.auth.get_caller``) was checked only after the body had been
received and parsed: a request without a key, with a revoked one or with a read-only one got
the body's 422 (``{`` sent as JSON), 400 or 413 instead of its 401 or 403, where every other
route answers the key first; and a client waiting for ``Expect: 100-continue`` was told to send
its body (up to 1 MiB) for the refusal. The routes that read their bodies themselves (uploads,
``POST /v1/jobs``) check the key first already.

:class:`KeyBeforeBody` wraps ``receive``: when a JSON-body route behind the key guard first reads
the body, the key and its scope are checked there (in a worker thread: it is a database read),
and a refusal is raised before a byte is asked for (answered as the route's own 401 / 403
would be). The caller found is kept in the request's state for ``get_caller``, so the key is
looked up once, and the request is counted against the rate limit once, when the route runs.
It must sit inside :class:`api.content_encoding.RequestDecoding`, whose size checks come at
the first read too.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AUTHENTICATED_CALLER, authorized_caller

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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        checked = False

        async def receive_after_key() -> Message:
            nonlocal checked
            if not checked:
                checked = True
                # Routing has run by the first read, and recorded the route in the scope.
                if _guarded_json_route(scope.get("route"), scope["path"]):
                    headers = Headers(scope=scope)
                    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
                    caller = await run_in_threadpool(
                        authorized_caller, scope["app"].state, headers.getlist("authorization"),
                        token if scheme.lower() == "bearer" and token else None,
                        scope["method"], scope["path"])
                    scope.setdefault("state", {})[AUTHENTICATED_CALLER] = caller
            return await receive()

        await self.app(scope, receive_after_key, send)
