"""The FastAPI application factory.

``uvicorn --factory api.main:create_app`` builds the app from the environment (one ``Settings``);
tests call ``create_app(settings)`` and may inject their own session factory, object store or
dispatcher and rate limiter. Everything a request needs hangs on ``app.state``; there are no
module-level globals.

Every ``/v1`` route but the probes requires an API key (:mod:`api.auth`); the probes, ``/docs``
and ``/openapi.json`` do not. ``OPTIONS`` on any route answers its ``Allow`` (:mod:`api.route_options`);
CORS headers are sent only to the origins in ``CORS_ALLOW_ORIGINS`` (none by default:
:mod:`api.cors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp

from api.accept import check_accept
from api.auth import get_caller
from api.checkpoint_validation import StoredTensorsCache
from api.content_encoding import RequestDecoding
from api.cors import CorsHeaders, CorsPolicy
from api.dispatch import CeleryDispatcher, Dispatcher
from api.docs import document_models, install_offline_docs
from api.errors import install_error_handlers
from api.event_feed import EventFeed, LocalPublisher, build_event_feed
from api.expect_continue import KeyBeforeBody
from api.head_requests import HeadAsGet
from api.json_validators import JsonValidators
from api.limits import RateLimiter, StreamSlots, rate_limiter_for
from api.observability import ApiMetrics, ObservabilityMiddleware
from api.openapi_document import install_document_completion, operation_id
from api.request_input import check_request_input
from api.route_options import RouteOptions
from api.routes import (
    admin,
    audit,
    checkpoints,
    datasets,
    health,
    job_events,
    job_report,
    job_results,
    jobs,
    materialize,
    metrics,
    mlflow_export,
    usage,
    webhooks,
)
from api.schemas import JobCreate, JobSpec
from api.server_wide import ServerWideRequests
from api.uploads import MAX_FIELD_BYTES
from api.validation import Validator
from api.validation_shares import ValidationShares
from persistence.db import session_factory_from_settings
from persistence.event_notify import EventPublisher, build_publisher, install_publisher, notify_mode
from persistence.logs import configure_logging
from persistence.schema import refuse_outdated_schema
from persistence.settings import Settings, settings_or_exit
from persistence.storage import ObjectStore
from persistence.webhooks import install_delivery_dispatch

API_PREFIX = "/v1"


class ServiceApp(FastAPI):
    """FastAPI with the observability layer (:mod:`api.observability`) and, inside it, the
    CORS layer (:mod:`api.cors`) around its whole middleware stack.

    ``add_middleware`` puts a layer inside Starlette's ``ServerErrorMiddleware``, which sends
    the 500 of an unexpected error itself: added so, the CORS headers missed that answer.
    Observability wraps CORS because CORS answers a preflight itself: with observability
    inside it (an ``add_middleware`` layer), a preflight was not logged, counted or given an
    ``X-Request-ID``. From outside, it also sees that 500 and gives it a request id."""

    cors_policy: CorsPolicy | None = None
    metrics: ApiMetrics | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.cors_policy is not None:
            stack = CorsHeaders(stack, self.cors_policy)
        return stack if self.metrics is None else ObservabilityMiddleware(stack, self.metrics)


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: sessionmaker[Session] | None = None,
    store: ObjectStore | None = None,
    dispatcher: Dispatcher | None = None,
    rate_limiter: RateLimiter | None = None,
    event_feed: EventFeed | None = None,
    validator: Validator | None = None,
) -> FastAPI:
    """Build the API. Missing dependencies are built from ``settings`` (default: the
    environment; invalid ones stop the process with one line). The database schema must already
    exist (``python -m persistence.migrate``): with its own session factory, the app refuses to
    start against a database whose schema is missing or behind.
    ``event_feed`` wakes the live event streams (default: the one ``EVENT_NOTIFY`` picks)."""
    settings = settings or settings_or_exit()
    configure_logging(settings.log_format, settings.log_level)
    factory = session_factory or session_factory_from_settings(settings)
    if session_factory is None:
        # Its own database: refuse to serve one that was never migrated or is behind.
        refuse_outdated_schema(factory.kw["bind"])
    queue = dispatcher or CeleryDispatcher(settings)
    limiter = rate_limiter or rate_limiter_for(settings.broker_url)
    feed = event_feed or build_event_feed(settings, factory)
    # The events the API writes itself (job created, cancel requested) are announced like the
    # workers' ones; Postgres' trigger needs nothing.
    publisher: EventPublisher | None = (
        LocalPublisher(feed) if notify_mode(settings) == "poll" else build_publisher(settings))
    if publisher is not None:
        install_publisher(factory, publisher)
    # A cancel the API commits may owe webhook messages: their delivery task leaves after it.
    install_delivery_dispatch(factory, queue.enqueue_webhook)

    try:
        checks = validator or Validator(settings)
    except ValueError as exc:  # VALIDATION_SOCKET's folder: one line, as for every setting
        raise SystemExit(f"rift: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await feed.start()
        if settings.validation_warm_start:
            # In the background: the API answers (and /readyz says "starting") meanwhile.
            checks.start()
        yield
        await feed.stop()
        if publisher is not None:
            publisher.close()
        queue.close()
        limiter.close()
        if validator is None:
            checks.close()
        engine = factory.kw.get("bind")
        if engine is not None and session_factory is None:
            engine.dispose()

    app = ServiceApp(
        title="RiFT service",
        version="0.1.0",
        description=(
            "Robust Critical Fine-Tuning as a service: upload an adversarially trained checkpoint, "
            "start a job, follow it, download the tuned weights and the evidence (MRC table, "
            "fine-tuning and interpolation curves)."
        ),
        lifespan=lifespan,
        # The documentation pages are installed below, with their assets served locally.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Starlette would answer "/v1/jobs/" with a 307 to "/v1/jobs", its Location built from
        # the request's Host (wrong behind a proxy that does not forward it) and followed by few
        # clients for a DELETE or POST; the 404 names the path without the slash instead.
        redirect_slashes=False,
        # Readable, stable operation ids for generated clients (api.openapi_document).
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.store = store or settings.build_object_store()
    app.state.dispatcher = queue
    app.state.rate_limiter = limiter
    app.state.stream_slots = StreamSlots()
    app.state.validation_shares = ValidationShares()
    app.state.event_feed = feed
    app.state.validator = checks
    app.state.stored_tensors = StoredTensorsCache()
    app.state.metrics = ApiMetrics(settings.prometheus_multiproc_dir)
    install_error_handlers(app)
    # Innermost: when FastAPI first reads a JSON body, the key is checked before anything of
    # the body is (the decoding's size checks included), as every other route checks it first.
    app.add_middleware(KeyBeforeBody)
    # Inside everything else, so that a route's reads see decoded bytes and its errors reach
    # the handlers.
    app.add_middleware(RequestDecoding, max_json_bytes=MAX_FIELD_BYTES,
                       max_streamed_bytes=max(settings.max_checkpoint_bytes,
                                              settings.max_dataset_bytes) + 2 * MAX_FIELD_BYTES)
    # Inside HEAD's conversion, so that a HEAD gets the GET's ETag and 304.
    app.add_middleware(JsonValidators)
    # Inside the observability middleware, so that logs and metrics still say HEAD.
    app.add_middleware(HeadAsGet)
    # Outside HEAD's conversion (an OPTIONS is never one), inside the observability middleware,
    # so that an OPTIONS is logged and counted as every request is.
    app.add_middleware(RouteOptions)
    app.add_middleware(ServerWideRequests)
    app.metrics = app.state.metrics  # outermost, around CORS: see ServiceApp
    app.cors_policy = CorsPolicy.from_setting(settings.cors_allow_origins)
    install_offline_docs(app)
    document_models(app, JobCreate, JobSpec)
    install_document_completion(app)

    # Every route of this router needs a key; the routes name CallerDep too, which FastAPI
    # resolves once per request, so the router's dependency is a guard a new route cannot miss.
    # The input rules (JSON bodies, path parameters) are such a guard too, and so is the
    # refusal of an Accept that rules out what a JSON route answers with (406).
    v1 = APIRouter(prefix=API_PREFIX,
                   dependencies=[Depends(get_caller), Depends(check_accept),
                                 Depends(check_request_input)])
    for module in (checkpoints, datasets, jobs, job_events, job_results, job_report, materialize,
                   mlflow_export, webhooks, usage, audit, admin):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router, prefix=API_PREFIX)
    # Probes at the root too, where orchestrators look for them.
    app.include_router(health.router, include_in_schema=False)
    app.include_router(metrics.router)
    return app
