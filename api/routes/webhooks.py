"""``/v1/webhooks``: the project's signed webhook endpoints and their delivery log."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep, ProjectIdDep, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound
from api.idempotency import IdempotencyKey, RequestKey
from api.paging import DEFAULT_PAGE_SIZE, PageCursor, PageLimit
from api.schemas import is_resource_id
from api.webhook_schemas import (
    WebhookAttemptOut,
    WebhookCreate,
    WebhookCreatedOut,
    WebhookDeliveryListOut,
    WebhookDeliveryOut,
    WebhookListOut,
    WebhookOut,
)
from api.write_conditions import WriteConditionsDep, require_unchanged
from persistence import webhooks
from persistence.models import WebhookEndpoint
from persistence.outbound import AllowList, TargetRefused, check_target

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def webhook_out(endpoint: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(id=endpoint.id, url=endpoint.url, events=endpoint.event_types,
                      description=endpoint.description, created_at=endpoint.created_at)


def _checked_id(webhook_id: str) -> str:
    if not is_resource_id(webhook_id):
        raise NotFound(f"no webhook with id '{webhook_id[:40]}'", field="webhook_id",
                       code="webhook_not_found")
    return webhook_id


@router.post(
    "", status_code=201, response_model=WebhookCreatedOut, summary="Register a webhook",
    description="Events job.succeeded, job.failed, job.cancelled are POSTed to the URL, signed "
    "as the Standard Webhooks spec says (webhook-id, webhook-timestamp, webhook-signature "
    "'v1,<base64 HMAC-SHA256 of \"{id}.{timestamp}.{body}\">'), with retries and backoff. The "
    "secret is in this answer only (and in an idempotent replay's: the same Idempotency-Key "
    "with the same registration answers 200 with the endpoint registered first, so a retry "
    "after a lost answer still learns its secret; another registration under the key is 409). "
    "The URL must be http(s) and resolve to public addresses only (422 naming 'url' otherwise).",
    responses={200: {"description": "Idempotent replay: the endpoint registered before",
                     "model": WebhookCreatedOut},
               409: {"description": "The project has WEBHOOK_MAX_ENDPOINTS webhooks or one "
                     "for this URL (webhook_url_registered, naming its webhook_id; compared "
                     "as one target: scheme and host in any case, default port, empty path, "
                     "IDN and fragment make no difference), or the "
                     "Idempotency-Key was used for another registration"},
               422: {"description": "Invalid or forbidden URL"}},
)
async def create_webhook(body: WebhookCreate, response: Response, session: SessionDep,
                         settings: SettingsDep, project_id: ProjectIdDep, caller: CallerDep,
                         idempotency_key: IdempotencyKey = None) -> WebhookCreatedOut:
    key = _registration_key(project_id, idempotency_key, body)
    replay = await run_in_threadpool(_replayed, session, key)
    if replay is not None:
        response.status_code = 200
        return _located(response, _created_out(replay))
    allow = AllowList.parse(settings.webhook_allow_list)
    try:
        # Resolving the host blocks: off the event loop.
        await run_in_threadpool(check_target, body.url, allow)
    except TargetRefused as exc:
        raise InvalidInput(exc.message, field="url", code="webhook_target_forbidden") from None
    try:
        endpoint = await run_in_threadpool(
            webhooks.create_endpoint, session, project_id=project_id, url=body.url,
            event_types=body.events, description=body.description,
            max_endpoints=settings.webhook_max_endpoints,
            idempotency_key=key.stored if key else None,
            request_hash=key.request_hash if key else None, actor=caller.actor)
    except (webhooks.IdempotencyKeyTaken, IntegrityError):
        # A concurrent registration under the same key recorded first: answer with it.
        session.rollback()
        replay = await run_in_threadpool(_replayed, session, key)
        if replay is None:
            raise
        response.status_code = 200
        return _located(response, _created_out(replay))
    return _located(response, _created_out(endpoint))


def _located(response: Response, created: WebhookCreatedOut) -> WebhookCreatedOut:
    """``created`` with the ``Location`` of its endpoint, as the other creating routes answer
    (a generic client follows a 201's ``Location``; this route sent none)."""
    response.headers["Location"] = f"/v1/webhooks/{created.id}"
    return created


def _registration_key(project_id: str, key: str | None,
                      body: WebhookCreate) -> RequestKey | None:
    """A registration's key: the request it stands for is the URL, the events in any order and
    the description."""
    return RequestKey.of(project_id, key, json.dumps(
        {"url": body.url, "events": sorted(set(body.events)), "description": body.description},
        sort_keys=True))


def _replayed(session: Session, key: RequestKey | None) -> WebhookEndpoint | None:
    """The endpoint an earlier registration under ``key`` made, or None; 409 if the key was
    used for another registration."""
    if key is None:
        return None
    return key.replay(webhooks.endpoint_by_idempotency_key(session, key.stored), "webhook")


def _created_out(endpoint: WebhookEndpoint) -> WebhookCreatedOut:
    return WebhookCreatedOut(**webhook_out(endpoint).model_dump(), secret=endpoint.secret)


@router.get("", response_model=WebhookListOut,
            summary="The project's webhooks, newest first, paged like GET /v1/jobs")
def list_webhooks(session: SessionDep, project_id: ProjectIdDep,
                  limit: PageLimit = DEFAULT_PAGE_SIZE,
                  cursor: PageCursor = None) -> WebhookListOut:
    page = webhooks.page_endpoints(session, project_id, limit=limit, cursor=cursor)
    return WebhookListOut(items=[webhook_out(e) for e in page.items],
                          next_cursor=page.next_cursor)


@router.get("/{webhook_id}", response_model=WebhookOut, summary="A webhook")
def read_webhook(webhook_id: str, session: SessionDep, project_id: ProjectIdDep) -> WebhookOut:
    return webhook_out(webhooks.get_endpoint(session, project_id, _checked_id(webhook_id)))


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               summary="Delete a webhook (and its delivery log)",
               description="If-Match: only if the webhook is unchanged since its GET (else 412).",
               responses={412: {"description": "If-Match names another ETag"}})
def delete_webhook(webhook_id: str, session: SessionDep, project_id: ProjectIdDep,
                   conditions: WriteConditionsDep, caller: CallerDep) -> Response:
    webhooks.delete_endpoint(
        session, project_id, _checked_id(webhook_id),
        check=lambda endpoint: require_unchanged(conditions, webhook_out(endpoint)),
        actor=caller.actor)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=WebhookDeliveryListOut,
            summary="The webhook's messages and each HTTP attempt, newest first")
def list_deliveries(
    webhook_id: str, session: SessionDep, project_id: ProjectIdDep,
    limit: PageLimit = DEFAULT_PAGE_SIZE, cursor: PageCursor = None,
) -> WebhookDeliveryListOut:
    endpoint = webhooks.get_endpoint(session, project_id, _checked_id(webhook_id))
    page = webhooks.list_deliveries(session, endpoint.id, limit=limit, cursor=cursor)
    items = []
    for delivery, attempts in page.items:
        items.append(WebhookDeliveryOut(
            id=delivery.id, event_type=delivery.event_type, job_id=delivery.job_id,
            status=delivery.status,  # type: ignore[arg-type]
            attempts=delivery.attempts, last_status_code=delivery.last_status_code,
            last_error=delivery.last_error, next_attempt_at=delivery.next_attempt_at,
            created_at=delivery.created_at, updated_at=delivery.updated_at,
            attempt_log=[WebhookAttemptOut.model_validate(a, from_attributes=True)
                         for a in attempts]))
    return WebhookDeliveryListOut(items=items, next_cursor=page.next_cursor)


