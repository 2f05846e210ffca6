"""Which methods a path serves, asked of the app's own routing: one answer for ``Allow`` on a
405 (:mod:`api.errors`), on ``OPTIONS`` of a route (:mod:`api.route_options`) and in a CORS
preflight (:mod:`api.cors`), so that the three cannot disagree with each other or with what a
request of that method would meet.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match, Mount
from starlette.types import Scope

#: Methods in the order ``Allow`` lists them (as ``OPTIONS *`` does: :mod:`api.server_wide`).
ALLOW_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: The methods a route may be declared with; HEAD and OPTIONS are answered for every route by
#: middleware (:mod:`api.head_requests`, :mod:`api.route_options`), never by a route.
ROUTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def methods_at(app: Any, scope: Scope) -> list[str]:
    """The methods some route of ``app`` serves at ``scope``'s path, in :data:`ALLOW_ORDER`,
    with HEAD where GET is and OPTIONS; ``[]`` when no route has the path (a 404).

    Routing's own matcher is asked once per method, so FastAPI's nested routers count too
    (their ``matches`` does not say which route or methods matched). A mount (``/static``)
    takes every method there; it serves files, so it counts as GET."""
    found: set[str] = set()
    for method in ROUTED_METHODS:
        probe = {**scope, "method": method}
        for route in app.router.routes:
            if route.matches(probe)[0] == Match.FULL:
                found.add("GET" if isinstance(route, Mount) else method)
                break
    if not found:
        return []
    found.add("OPTIONS")
    if "GET" in found:
        found.add("HEAD")
    return [method for method in ALLOW_ORDER if method in found]
