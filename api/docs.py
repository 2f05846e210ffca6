"""Interactive API documentation that works offline: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc)
load their scripts, styles and icon from ``/static`` (the files vendored in ``api/static/``, see its
README), never from a CDN, because internal networks often cannot reach one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"
SWAGGER_JS = f"{STATIC_PATH}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC_PATH}/swagger-ui/swagger-ui.css"
FAVICON = f"{STATIC_PATH}/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{STATIC_PATH}/redoc/redoc.standalone.js"


def install_offline_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``api/static`` under ``/static`` and the two documentation pages that use it.

    Build the app with ``docs_url=None, redoc_url=None`` so that FastAPI's own pages (which point
    at a CDN) are not registered too. Paths in the pages are prefixed with the ASGI ``root_path``,
    so the pages also work behind a proxy that mounts the service under a prefix.
    """
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=root + SWAGGER_JS, swagger_css_url=root + SWAGGER_CSS,
            swagger_favicon_url=root + FAVICON)

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=root + REDOC_JS, redoc_favicon_url=root + FAVICON,
            with_google_fonts=False)


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put ``models`` (and the models they use) into the OpenAPI document's
    ``components.schemas``: a route that reads its body itself (``POST /v1/jobs`` parses JSON or
    multipart) can only name its schema by ``$ref``, which FastAPI leaves dangling."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, member in schema.pop("$defs", {}).items():
                schemas.setdefault(name, member)
            schemas[model.__name__] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
