"""Request and response bodies of ``/v1/webhooks``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from persistence.outbound import MAX_URL_LENGTH

EventType = Literal["job.succeeded", "job.failed", "job.cancelled"]
ALL_EVENT_TYPES: tuple[EventType, ...] = ("job.succeeded", "job.failed", "job.cancelled")


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH,
                     description="http(s) URL on a public address (or one WEBHOOK_ALLOW_LIST "
                     "allows); redirects are not followed.")
    events: list[EventType] = Field(
        default_factory=lambda: list(ALL_EVENT_TYPES),
        min_length=1, max_length=3, description="Event types to send; default: all three.")
    description: str | None = Field(None, max_length=255)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[EventType]
    description: str | None
    created_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="whsec_<base64>: the signing key, shown only this once. "
                        "Verify webhook-signature as the Standard Webhooks spec says.")


class WebhookListOut(BaseModel):
    items: list[WebhookOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class WebhookAttemptOut(BaseModel):
    attempt: int
    status_code: int | None = Field(description="The receiver's HTTP status; None if no answer.")
    error: str | None
    started_at: datetime
    duration_ms: float | None


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="The message's webhook-id (the same on every attempt).")
    event_type: EventType
    job_id: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    attempt_log: list[WebhookAttemptOut]


class WebhookDeliveryListOut(BaseModel):
    items: list[WebhookDeliveryOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")
