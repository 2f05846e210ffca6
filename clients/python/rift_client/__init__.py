"""Python client of the RiFT service's REST API, and the ``riftctl`` command line.

See :class:`rift_client.client.RiftClient`; the models are in :mod:`rift_client.models`, the
exceptions in :mod:`rift_client.errors`. This package needs no torch: only httpx and pydantic
(typer and rich for the command line).
"""

from __future__ import annotations

__version__ = "0.1.0"

from rift_client.client import RiftClient
from rift_client.errors import (
    AuthenticationError,
    BadRequestError,
    ChecksumMismatchError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
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
)
from rift_client.models import (
    TERMINAL_STATUSES,
    Artifact,
    CandidateCurve,
    Checkpoint,
    Curves,
    Dataset,
    Event,
    Job,
    JobSpec,
    Materialization,
    MRCTable,
)
from rift_client.retry import RetryPolicy

__all__ = [
    "TERMINAL_STATUSES",
    "Artifact",
    "AuthenticationError",
    "BadRequestError",
    "CandidateCurve",
    "Checkpoint",
    "ChecksumMismatchError",
    "ConflictError",
    "Curves",
    "Dataset",
    "Event",
    "Job",
    "JobSpec",
    "MRCTable",
    "Materialization",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
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
    "WaitTimeoutError",
    "__version__",
]
