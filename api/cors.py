"""CORS (the Fetch standard's cross-origin protocol): which browser pages may call the API.

Off unless ``CORS_ALLOW_ORIGINS`` names origins (``persistence/setting_checks.py`` checks the
setting's form at start). Then, for a request whose ``Origin`` is one of them (or any, with
``*``):

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204 with the
  path's methods (as ``Allow`` lists them, :func:`api.route_methods.methods_at`; every method
  of the server for a path no route has, so that the page's request reaches the API and can
  read its 404), :data:`ALLOWED_REQUEST_HEADERS` and a max age; the key is never asked for;
- every other answer carries ``Access-Control-Allow-Origin`` and
  :data:`EXPOSED_RESPONSE_HEADERS`: error answers too (401, 404, 429, the 413 and 417 of
  middleware, a 500), so that a page can read the error body and its ``Retry-After``.

A request from any other origin gets no CORS header (its preflight is the plain ``OPTIONS``
answer: 204 with ``Allow``), so the browser refuses the page the answer; the request itself
is served as without the header (a page cannot set ``Authorization`` without a preflight, so
it carries no key). No credentials are ever allowed: keys travel in ``Authorization``, which a
page sets itself, never in cookies, so ``*`` is safe to offer.

This layer wraps the whole app, outside Starlette's ``ServerErrorMiddleware`` too
(:class:`api.main.ServiceApp`): Starlette's own ``CORSMiddleware``, added as a middleware,
sat inside it, so a 500 reached the browser without the header, and it answered a refused
preflight with a plain-text 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.route_methods import methods_at
from api.server_wide import server_methods

#: Request headers a page may send (beyond the CORS-safelisted ones): those the API reads.
ALLOWED_REQUEST_HEADERS = (
    "Accept", "Authorization", "Content-Encoding", "Content-Type", "Idempotency-Key", "If-Match",
    "If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Last-Event-ID",
    "Range", "X-Request-ID")
#: Response headers a page may read beyond the safelisted ones (Content-Type, Content-Length,
#: Last-Modified, Cache-Control...): those the API sends.
EXPOSED_RESPONSE_HEADERS = (
    "Accept-Ranges", "Allow", "Content-Disposition", "Content-Range", "ETag", "Location",
    "Retry-After", "WWW-Authenticate", "X-Request-ID")
#: How long a browser may reuse a preflight's answer (s); Chromium caps it at 7200.
PREFLIGHT_MAX_AGE_S = 600


@dataclass(frozen=True)
class CorsPolicy:
    """The origins allowed: exact ``scheme://host[:port]`` strings, as browsers send ``Origin``."""

    origins: frozenset[str]
    any_origin: bool = False

    @classmethod
    def from_setting(cls, origins: Sequence[str]) -> CorsPolicy | None:
        """The policy of a checked ``CORS_ALLOW_ORIGINS``; None when empty (CORS off)."""
        if not origins:
            return None
        return cls(frozenset(origins), any_origin="*" in origins)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins


def _is_preflight(scope: Scope, headers: Headers) -> bool:
    return (scope["method"] == "OPTIONS" and scope["path"] != "*"
            and "access-control-request-method" in headers)


def _with_vary_origin(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Origin`` added to its ``Vary`` (or a ``Vary: Origin``): the answer
    differs by the request's origin, which a shared cache must know."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            fields = {part.strip().lower() for part in value.split(b",")}
            if b"origin" not in fields and b"*" not in fields:
                headers[index] = (name, value + b", Origin")
            return headers
    return [*headers, (b"vary", b"Origin")]


class CorsHeaders:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origins = headers.getlist("origin")
        # Two Origin headers come from no browser: neither is trusted.
        origin = origins[0] if len(origins) == 1 and self.policy.allows(origins[0]) else None
        if origin is not None and _is_preflight(scope, headers):
            await self._preflight(scope, origin, send)
            return
        added: list[tuple[bytes, bytes]] = []
        if origin is not None:
            added = [(b"access-control-allow-origin", self._allow_origin(origin)),
                     (b"access-control-expose-headers",
                      ", ".join(EXPOSED_RESPONSE_HEADERS).encode("ascii"))]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = [*message.get("headers", []), *added]
                if not self.policy.any_origin:
                    answer = _with_vary_origin(answer)
                message = {**message, "headers": answer}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allow_origin(self, origin: str) -> bytes:
        return b"*" if self.policy.any_origin else origin.encode("latin-1")

    async def _preflight(self, scope: Scope, origin: str, send: Send) -> None:
        app = scope["app"]
        methods = methods_at(app, scope)
        headers = [
            (b"access-control-allow-origin", self._allow_origin(origin)),
            (b"access-control-allow-methods",
             ", ".join(methods or server_methods(app)).encode("ascii")),
            (b"access-control-allow-headers", ", ".join(ALLOWED_REQUEST_HEADERS).encode("ascii")),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode("ascii"))]
        if methods:
            headers.append((b"allow", ", ".join(methods).encode("ascii")))
        if not self.policy.any_origin:
            headers = _with_vary_origin(headers)
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
