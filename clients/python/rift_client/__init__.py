"""Python client of the RiFT service's REST API, and the ``riftctl`` command line.

See :class:`rift_client.client.RiftClient`, its asyncio twin
:class:`rift_client.async_client.AsyncRiftClient` (also named ``AsyncClient``), and
:func:`rift_client.webhooks.verify_webhook` for a receiver of the service's webhooks; the
models are in :mod:`rift_client.models`, the exceptions in :mod:`rift_client.errors`. This
package needs no torch: only httpx and pydantic (typer and rich for the command line).
"""

from __future__ import annotations

__version__ = "0.1.0"

from rift_client.client import RiftClient  # noqa: I001 (after __version__, which it imports)
from rift_client.arguments import UploadSource
from rift_client.async_client import AsyncClient, AsyncRiftClient
from rift_client.errors import (
    AuthenticationError,
    BadRequestError,
    ChecksumMismatchError,
    ConflictError,
    DownloadInProgressError,
    FileChangedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PreconditionFailedError,
    RateLimitError,
    RiftAPIError,
    RiftClientError,
    RiftConnectionError,
    RiftUsageError,
    ServerError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    UnprocessableEntityError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from rift_client.models import (
    KEY_SCOPES,
    PROJECT_LIMITS,
    TERMINAL_STATUSES,
    WEBHOOK_EVENT_TYPES,
    ApiKey,
    Artifact,
    CandidateCurve,
    Checkpoint,
    CreatedApiKey,
    CreatedWebhook,
    Curves,
    Dataset,
    Event,
    Job,
    JobSpec,
    JobWarning,
    Materialization,
    MlflowExport,
    MlflowExportOutcome,
    MRCTable,
    Project,
    Usage,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookMessage,
    Worker,
)
from rift_client.retry import RetryPolicy
from rift_client.webhooks import verify_webhook

__all__ = [
    "KEY_SCOPES",
    "PROJECT_LIMITS",
    "TERMINAL_STATUSES",
    "WEBHOOK_EVENT_TYPES",
    "ApiKey",
    "Artifact",
    "AsyncClient",
    "AsyncRiftClient",
    "AuthenticationError",
    "BadRequestError",
    "CandidateCurve",
    "Checkpoint",
    "ChecksumMismatchError",
    "ConflictError",
    "CreatedApiKey",
    "CreatedWebhook",
    "Curves",
    "Dataset",
    "DownloadInProgressError",
    "Event",
    "FileChangedError",
    "Job",
    "JobSpec",
    "JobWarning",
    "MRCTable",
    "Materialization",
    "MlflowExport",
    "MlflowExportOutcome",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "Project",
    "RateLimitError",
    "RetryPolicy",
    "RiftAPIError",
    "RiftClient",
    "RiftClientError",
    "RiftConnectionError",
    "RiftUsageError",
    "ServerError",
    "ServiceUnavailableError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "UploadSource",
    "Usage",
    "WaitTimeoutError",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookMessage",
    "WebhookVerificationError",
    "Worker",
    "__version__",
    "verify_webhook",
]
