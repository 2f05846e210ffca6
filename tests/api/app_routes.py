"""Every route an app serves, read from the app object itself (not its OpenAPI document, which
leaves out the routes kept out of the schema: the root probes, ``/docs``, ``/static``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.routing import Mount

#: HEAD and OPTIONS are answered for every route by middleware (api.head_requests,
#: api.route_options), never declared by one: a declared HEAD is folded into its GET.
MIDDLEWARE_METHODS = frozenset({"HEAD", "OPTIONS"})


def _walk(routes: Sequence[Any]) -> Iterator[tuple[str, str]]:
    for route in routes:
        if hasattr(route, "effective_candidates"):
            # FastAPI keeps an included router nested; its effective candidates carry the
            # full path (every prefix applied), and nested routers again.
            for candidate in route.effective_candidates():
                if hasattr(candidate, "effective_candidates"):
                    yield from _walk([candidate])
                else:
                    for method in getattr(candidate.original_route, "methods", None) or ():
                        if method not in MIDDLEWARE_METHODS:
                            yield method, candidate.path
        elif isinstance(route, Mount):
            yield "GET", f"{route.path}/{{path}}"  # a mount of files: served as GET
        else:
            for method in getattr(route, "methods", None) or ():
                if method not in MIDDLEWARE_METHODS:
                    yield method, route.path


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """``(METHOD, path template)`` of every route ``app`` declares, prefixes applied."""
    return set(_walk(app.routes))
