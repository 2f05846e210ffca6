"""The client's exceptions. Every error answer of the API becomes a :class:`RiftAPIError` subclass
chosen by its HTTP status, carrying the API's ``code``, ``message`` and ``field`` (the request field
at fault) and any extra keys of the error body in ``details``."""

from __future__ import annotations

import errno
from typing import Any

import httpx


def _rebuilt(cls: type[RiftClientError], args: tuple[Any, ...]) -> RiftClientError:
    """An exception of ``cls`` holding ``args``, made without calling its ``__init__`` (its
    attributes are restored from the pickled state next)."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class RiftClientError(Exception):
    """Base class of everything this package raises. Every one can be pickled with its
    attributes (a worker process, a Celery task or a ``concurrent.futures`` pool re-raises it in
    the caller's process)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickling calls cls(*self.args), the message alone: the keyword-only
        # arguments of these classes (status_code, code, job_id, ...) made unpickling raise
        # TypeError, so a pool's worker failed with that instead of the error it raised.
        return _rebuilt, (type(self), self.args), self.__dict__


class RiftConnectionError(RiftClientError):
    """The service could not be reached (after the retries allowed). ``unreachable_url`` is the
    base URL when nothing answered there at all (connection refused, no such host): most often
    a wrong URL, which ``riftctl`` then says where it read; None for other failures."""

    def __init__(self, message: str, *, unreachable_url: str | None = None) -> None:
        super().__init__(message)
        self.unreachable_url = unreachable_url


class UntrustedCertificateError(RiftConnectionError):
    """The service answered over TLS with a certificate this machine does not trust (a company
    CA, a self-signed one): ``reason`` is the check's own words. Not retried and not an outage
    (a wait ends at once): trying again cannot change it. httpx trusts ``certifi``'s list, not
    the system's; ``SSL_CERT_FILE`` (a PEM bundle) adds a CA for the clients and ``riftctl``.
    Before, it read "no service answers at <url>: check ... that the service is running",
    after 4 retries (and a wait looked again for up to 5 minutes)."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class RiftUsageError(RiftClientError, ValueError):
    """An argument the client cannot use, found before anything is sent: a base URL that is not
    ``http(s)://host[:port][/prefix]``, an API key or Idempotency-Key with characters an HTTP
    header cannot carry (non-ASCII, spaces, a trailing newline from a file), a job spec that is
    not a :class:`~rift_client.models.JobSpec`. A ``ValueError`` too, as Python callers expect
    of a bad argument. ``field`` names the argument at fault as the call spells it
    (``timeout``, ``poll_interval``, ``checkpoint_file``, ``spec.config``, a ``RetryPolicy``'s
    ``backoff_s``, ...), as :attr:`RiftAPIError.field` names the request field the service
    refused; None for a misuse of the client itself (closed, another event loop, both or
    neither checkpoint)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnexpectedResponseError(RiftClientError):
    """A success answer that is not what the API sends: not JSON, JSON of another shape, or a
    body that cannot be decoded. Most often the base URL names another server (a web page, a
    proxy's login page) or a wrong path prefix. ``status_code`` is None when not even the
    answer's headers could be read as HTTP."""

    def __init__(self, message: str, *, status_code: int | None, method: str, path: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.method = method
        self.path = path


class ChecksumMismatchError(RiftClientError):
    """A file's SHA-256 (or size) differs from the one the service reported."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class FileChangedError(RiftClientError, OSError):
    """A file that changed while it was being uploaded (it grew, shrank, or was written to): the
    bytes sent would be no one version of it, so the request is cut off before its last byte and
    the service stores nothing. Upload it again once whatever writes it has finished. An
    ``OSError`` too (``filename`` names the file), as every problem of a local file is."""

    def __init__(self, path: str, change: str) -> None:
        message = (f"{path} {change} while it was being uploaded; nothing was stored: upload it "
                   "again once it is complete")
        super().__init__(message)
        self.message = message
        self.change = change
        self.filename = path
        self.strerror = f"the file {change} while it was being uploaded"

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError keeps filename and strerror outside __dict__: made again from the arguments.
        return type(self), (self.filename, self.change)

    def __str__(self) -> str:
        # OSError's own str() would be "[Errno None] ...": the message says it all.
        return self.message


class DownloadInProgressError(RiftClientError, BlockingIOError):
    """Another download (another thread, process or ``riftctl``) is writing the same
    destination's ``.part`` now; it was left alone. An ``OSError`` (``EAGAIN``, ``filename``
    the destination), as every problem of a local file is: wait for that download to finish,
    or save to another path."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(errno.EAGAIN, reason, target)

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError keeps filename and strerror outside __dict__: made again from the arguments.
        return type(self), (self.filename, self.strerror)


class WaitTimeoutError(RiftClientError):
    """A job did not finish within the time given to :meth:`RiftClient.wait` (or a
    materialization within that given to :meth:`RiftClient.wait_materialization`: then
    ``materialization_id`` names it)."""

    def __init__(self, message: str, *, job_id: str, last_status: str,
                 materialization_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.last_status = last_status
        self.materialization_id = materialization_id


class WebhookVerificationError(RiftClientError):
    """A webhook request that must not be trusted (:func:`rift_client.verify_webhook`):
    ``reason`` is ``missing_header``, ``invalid_timestamp``, ``timestamp_out_of_tolerance``,
    ``invalid_signature`` or ``invalid_body`` (signed, but not a RiFT message). Answer such a
    request with 4xx and do not act on it."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RiftAPIError(RiftClientError):
    """An error answer of the API: ``status_code``, the stable ``code`` clients branch on, the
    ``message``, the ``field`` at fault (dotted, e.g. ``config.attack.eps``, or None) and the
    other keys of the error body in ``details`` (e.g. ``missing``/``mismatched`` keys)."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: httpx.Headers | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.field = field
        self.details = details or {}
        self.headers = headers or httpx.Headers()
        self.method = method
        self.path = path

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        # The status and code a caller branches on, not only the message (Exception's repr).
        return (f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r}, "
                f"field={self.field!r}, message={self.message!r})")

    def summary(self) -> str:
        """The answer in one line: method, path, status, code, message and field."""
        where = f"{self.method} {self.path} " if self.method else ""
        field = f" (field: {self.field})" if self.field else ""
        return f"{where}{self.status_code} {self.code}: {self.message}{field}"


class BadRequestError(RiftAPIError):
    """400."""


#: Said by a 401 to a request that carried no key: the service's words ("missing API key")
#: do not say where this client reads one.
NO_KEY_HINT = "no API key was sent: pass api_key= to the client or set RIFT_API_KEY"


class AuthenticationError(RiftAPIError):
    """401: no API key, or one the service does not know. ``key_sent`` is False when the
    request carried no ``Authorization`` header; ``str()`` then says how to give a key
    (``summary()`` is the answer alone, for a caller with its own word on it, as riftctl)."""

    key_sent: bool = True

    def __str__(self) -> str:
        return self.summary() if self.key_sent else f"{self.summary()}; {NO_KEY_HINT}"


class PermissionDeniedError(RiftAPIError):
    """403: the key lacks the scope the route needs."""


class NotFoundError(RiftAPIError):
    """404 (another project's resource answers 404 too)."""


class ConflictError(RiftAPIError):
    """409: e.g. an Idempotency-Key reused with another request, or a finished job cancelled."""


class PayloadTooLargeError(RiftAPIError):
    """413: the upload is over the service's limit (``details['limit_bytes']``)."""


class PreconditionFailedError(RiftAPIError):
    """412: an ``if_match=`` that no longer names the resource's ETag (it changed since it was
    read, or a download's file was replaced); nothing was changed. ``current_etag`` is the
    ETag the resource has now (read it again before deciding to retry)."""

    @property
    def current_etag(self) -> str | None:
        etag = self.details.get("etag")
        return str(etag) if isinstance(etag, str) else self.headers.get("etag")


class UnprocessableEntityError(RiftAPIError):
    """422: a well-formed request with invalid content; ``field`` names it."""


class RateLimitError(RiftAPIError):
    """429: too many requests or over a quota (raised once the retries are spent)."""


class ServerError(RiftAPIError):
    """5xx other than 503."""


class ServiceUnavailableError(ServerError):
    """503: the database, broker or store is down (raised once the retries are spent)."""


_BY_STATUS: dict[int, type[RiftAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status_code: int) -> type[RiftAPIError]:
    """The exception class for an HTTP error status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else RiftAPIError


def api_error_from_response(response: httpx.Response) -> RiftAPIError:
    """The exception for an error response (its body already read). A body in the API's envelope
    ``{"error": {"code", "message", "field", ...}}`` gives the code, message and field; any other
    body (a proxy's HTML page, say) gives ``http_<status>`` and the start of the text."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message") or code)
        field = error.get("field") if isinstance(error.get("field"), str) else None
        details = {k: v for k, v in error.items() if k not in ("code", "message", "field")}
    else:
        code = f"http_{response.status_code}"
        message = response.text.strip()[:500] or response.reason_phrase or code
        field, details = None, {}
    request = response.request
    raised = error_class(response.status_code)(
        message, status_code=response.status_code, code=code, field=field, details=details,
        headers=response.headers, method=request.method, path=request.url.path)
    if isinstance(raised, AuthenticationError):
        raised.key_sent = "authorization" in request.headers
    return raised
