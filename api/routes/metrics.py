"""``GET /metrics``: the API's Prometheus metrics (text exposition format), at the root beside
``/v1`` where scrapers look. Open unless ``METRICS_TOKEN`` is set; then it needs
``Authorization: Bearer <METRICS_TOKEN>`` (401 otherwise)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import SettingsDep
from api.errors import ApiError
from api.observability import ApiMetrics

router = APIRouter(tags=["metrics"])


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


@router.get("/metrics", summary="Prometheus metrics of the API", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                       401: {"description": "METRICS_TOKEN is set and the bearer token is wrong"}})
def read_metrics(settings: SettingsDep, metrics: MetricsDep,
                 authorization: Annotated[str | None, Header()] = None) -> Response:
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        if authorization is None or not hmac.compare_digest(authorization.encode(),
                                                            expected.encode()):
            raise ApiError("GET /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'",
                           field="Authorization", code="unauthorized", status_code=401,
                           headers={"WWW-Authenticate": "Bearer"})
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
