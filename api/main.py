"""The FastAPI application factory.

``uvicorn --factory api.main:create_app`` builds the app from the environment (one ``Settings``);
tests call ``create_app(settings)`` and may inject their own session factory, object store or
dispatcher. Everything a request needs hangs on ``app.state``; there are no module-level globals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import CeleryDispatcher, Dispatcher
from api.docs import install_offline_docs
from api.errors import install_error_handlers
from api.routes import checkpoints, datasets, health, job_events, job_results, jobs
from persistence.db import session_factory_from_settings
from persistence.settings import Settings
from persistence.storage import ObjectStore

API_PREFIX = "/v1"


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: sessionmaker[Session] | None = None,
    store: ObjectStore | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """Build the API. Missing dependencies are built from ``settings`` (default: the
    environment). The database schema must already exist (``python -m persistence.migrate``)."""
    settings = settings or Settings()
    factory = session_factory or session_factory_from_settings(settings)
    queue = dispatcher or CeleryDispatcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()
        engine = factory.kw.get("bind")
        if engine is not None and session_factory is None:
            engine.dispose()

    app = FastAPI(
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
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.store = store or settings.build_object_store()
    app.state.dispatcher = queue
    install_error_handlers(app)
    install_offline_docs(app)

    v1 = APIRouter(prefix=API_PREFIX)
    for module in (checkpoints, datasets, jobs, job_events, job_results, health):
        v1.include_router(module.router)
    app.include_router(v1)
    # Probes at the root too, where orchestrators look for them.
    app.include_router(health.router, include_in_schema=False)
    return app
