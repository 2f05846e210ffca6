"""Request ids, per-request JSON log lines and Prometheus metrics of the API.

:class:`ObservabilityMiddleware` (pure ASGI, so streamed responses and SSE pass through
untouched) gives every request a request id (its ``X-Request-ID`` when usable, else a new one),
binds it for the request's logs, returns it in the ``X-Request-ID`` response header, logs one
``request`` line and records:

- ``rift_http_request_duration_seconds{method, route}``: latency histogram by route *template*
  (``/v1/jobs/{job_id}``, so ids do not explode the label set; unmatched paths are ``<unmatched>``;
  a method other than :data:`KNOWN_METHODS` is ``other``);
- ``rift_http_requests_total{method, route, status}``;
- ``rift_upload_bytes_total{kind}`` and ``rift_uploads_total{kind, status}`` for the upload routes
  (checkpoints, datasets, multipart jobs), counting the bytes of the request body received.

Each app has its own :class:`ApiMetrics` registry (no process-global collectors), served by
``GET /metrics`` at the root (see :mod:`api.routes.metrics`). With several uvicorn processes
(``PROMETHEUS_MULTIPROC_DIR``), a scrape sums every process's values:
:mod:`api.multiprocess_metrics`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.multiprocess_metrics import shared_exposition
from persistence.logs import clean_request_id, log_context

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: Upload routes (method, route template) and the kind each one counts as.
UPLOAD_ROUTES = {("POST", "/v1/checkpoints"): "checkpoint", ("POST", "/v1/datasets"): "dataset",
                 ("POST", "/v1/jobs"): "job_multipart"}
#: Methods counted under their own name; any other is counted as ``other``. A client chooses the
#: method: each one the parser lets through (some 40 with httptools, PROPFIND, PURGE, ...; any
#: token at all with h11) made a series of its own for every route and status.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Latency buckets (s): from a cached GET to a multi-GiB upload.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class ApiMetrics:
    """The API's collectors, in a registry of their own; with ``multiprocess_dir`` (the setting
    ``PROMETHEUS_MULTIPROC_DIR``) their values are also written there, and
    :meth:`exposition` sums those of all the API's processes."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None:
            # prometheus_client picks its value storage when imported, from the variable
            # itself: a setting given any other way would leave each process counting alone.
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be in the environment before "
                                   "prometheus_client is imported")
            multiprocess_dir.mkdir(parents=True, exist_ok=True)
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("rift_http_request_duration_seconds",
                                 "Time from request start to the last response byte.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.requests = Counter("rift_http_requests", "Requests answered, by status code.",
                                ["method", "route", "status"], registry=self.registry)
        self.upload_bytes = Counter("rift_upload_bytes", "Request-body bytes received by uploads.",
                                    ["kind"], registry=self.registry)
        self.uploads = Counter("rift_uploads", "Upload requests, by status code.",
                               ["kind", "status"], registry=self.registry)

    def exposition(self) -> bytes:
        """The metrics in the text exposition format: this process's, or with a multiprocess
        directory the sums over all the API's processes."""
        if self.multiprocess_dir is not None:
            return shared_exposition(self.multiprocess_dir)
        return generate_latest(self.registry)


def _route_template(scope: Scope) -> str:
    """The matched route's template: the request path with its last segments replaced by the
    matched route's own template (``/{job_id}/report``). (The route's own template lacks the
    prefixes of the routers it was included through, which are literal.) ``<unmatched>`` when
    no route matched.

    Segments are matched by position: replacing every segment equal to a parameter's value
    made ``GET /v1/jobs/jobs`` the series ``/v1/{job_id}/{job_id}``."""
    route = scope.get("route")
    if route is None:
        return _plain_route_template(scope)
    segments = str(scope.get("path", "")).split("/")
    own = str(getattr(route, "path_format", "") or "").lstrip("/").split("/")
    if len(own) > len(segments):  # not a path this route could have matched; keep it bounded
        return "<unmatched>"
    return "/".join(segments[:len(segments) - len(own)] + own)


def _plain_route_template(scope: Scope) -> str:
    """The template of a route the app itself holds that is not a FastAPI route (a Starlette
    ``Route``: ``/openapi.json``; a ``Mount``: ``/static/{path}``): FastAPI marks only its own
    routes in the scope, so those requests were all counted as ``<unmatched>``, mixed with the
    404s of unknown paths. Found by the endpoint the match put in the scope; such a route is
    the app's own, so its template is whole (no router prefix), and a mount's ``{path}`` stays
    a placeholder (never the file asked for)."""
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None:
        for route in getattr(app, "routes", ()):
            if isinstance(route, Mount | Route) and endpoint in (
                    getattr(route, "endpoint", None), getattr(route, "app", None)):
                return str(route.path_format)
    return "<unmatched>"


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"multipart/form-data"
    return False


class ObservabilityMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                         if k == b"x-request-id"), None)
        request_id = clean_request_id(incoming)
        started = time.perf_counter()
        status = 500
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, counting_receive, send_with_id)
            finally:
                self._record(scope, status, received, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, received: int, seconds: float) -> None:
        method = str(scope.get("method", ""))
        counted = method if method in KNOWN_METHODS else "other"
        route = _route_template(scope)
        self.metrics.latency.labels(counted, route).observe(seconds)
        self.metrics.requests.labels(counted, route, str(status)).inc()
        kind = UPLOAD_ROUTES.get((method, route))
        if kind == "job_multipart" and not _is_multipart(scope):
            kind = None
        if kind is not None:
            self.metrics.upload_bytes.labels(kind).inc(received)
            self.metrics.uploads.labels(kind, str(status)).inc()
        extra: dict[str, Any] = {"method": method, "route": route, "path": scope.get("path"),
                                 "status": status, "duration_ms": round(seconds * 1000, 2)}
        logger.info("%s %s %d", method, scope.get("path"), status, extra=extra)
