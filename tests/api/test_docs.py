"""``/docs`` and ``/redoc`` work offline: every script, style and icon they reference is served by
the service itself (``/static``), none comes from another host, and each is served whole."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from api.docs import STATIC_DIR
from persistence.settings import Settings
from tests.api.helpers import Api, RecordingDispatcher
from tests.service_fixtures import settings_from_env

pytestmark = pytest.mark.service

_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*['"]([^'"]+)['"]""")
_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
def docs_api(sqlite_url: str, tmp_path: Path, start_api: Callable[..., Api]) -> Api:
    settings: Settings = settings_from_env({
        "DATABASE_URL": sqlite_url, "BROKER_URL": "memory://", "STORE_KIND": "local",
        "STORE_ROOT": str(tmp_path / "objects"), "WORK_DIR": str(tmp_path / "work")})
    return start_api(settings, dispatcher=RecordingDispatcher())


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_local_assets(docs_api: Api, page: str) -> None:
    response = docs_api.client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    references = {a or b for a, b in _REFERENCE.findall(html)}
    assets = {r for r in references if r.startswith("/static/")}
    # The page's script, its icon and (Swagger UI) its stylesheet, plus the OpenAPI document.
    assert len(assets) == (3 if page == "/docs" else 2), references
    assert "/openapi.json" in references
    assert references - assets == {"/openapi.json"}, references
    for asset in assets:
        served = docs_api.client.get(asset)
        assert served.status_code == 200, asset
        local = STATIC_DIR / asset.removeprefix("/static/")
        assert served.content == local.read_bytes(), asset
        assert _TYPES[local.suffix] in served.headers["content-type"], asset
    assert docs_api.client.get("/openapi.json").json()["info"]["title"] == "RiFT service"


def test_vendored_assets_keep_their_licences() -> None:
    for folder in ("swagger-ui", "redoc"):
        assert (STATIC_DIR / folder / "LICENSE").stat().st_size > 500, folder
    readme = (STATIC_DIR / "README.md").read_text()
    assert "swagger-ui-dist" in readme and "redoc" in readme


def test_static_refuses_paths_outside_its_folder(docs_api: Api) -> None:
    for path in ("/static/../main.py", "/static/%2e%2e/main.py", "/static/nothing.js"):
        assert docs_api.client.get(path).status_code == 404, path
