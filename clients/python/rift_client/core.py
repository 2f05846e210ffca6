"""Every call of the RiFT clients, written once as a flow (:mod:`rift_client.flows`): which
requests it sends, how it retries, how it reads the answers and which errors it raises.
:class:`~rift_client.client.RiftClient` runs these flows with blocking I/O and
:class:`~rift_client.async_client.AsyncRiftClient` with asyncio; neither holds any logic of its
own beyond performing the effects. The public methods' documentation is on ``RiftClient``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from rift_client import partfile
from rift_client.arguments import (
    Sendable,
    UploadSource,
    checked_id,
    finite_number,
    item_limit,
    json_document,
    plain_scalar,
    save_target,
    sendable,
    wait_times,
)
from rift_client.arguments import path_segment as _seg
from rift_client.errors import (
    ChecksumMismatchError,
    ConflictError,
    NotFoundError,
    RiftAPIError,
    RiftClientError,
    RiftConnectionError,
    RiftUsageError,
    UnexpectedResponseError,
    UntrustedCertificateError,
    WaitTimeoutError,
    api_error_from_response,
)
from rift_client.flows import (
    END,
    Blocking,
    Chunks,
    Close,
    Emit,
    FileBody,
    Flow,
    Lines,
    Next,
    ProgressCallback,
    ReadBody,
    Send,
    Sleep,
    next_item,
)
from rift_client.models import (
    PROJECT_LIMITS,
    SUCCEEDED,
    ApiKey,
    Artifact,
    AuditEventPage,
    Checkpoint,
    CheckpointPage,
    CreatedApiKey,
    CreatedWebhook,
    Curves,
    Dataset,
    DatasetPage,
    Event,
    EventPage,
    Job,
    JobPage,
    JobSpec,
    Materialization,
    MlflowExport,
    MlflowExportOutcome,
    MRCTable,
    Project,
    Usage,
    Webhook,
    WebhookDelivery,
    Worker,
    _Resource,
)
from rift_client.proxies import shown_url
from rift_client.retry import (
    GATEWAY_STATUSES,
    Outage,
    RetryPolicy,
    is_outage,
    sent_nothing,
    untrusted_certificate,
)
from rift_client.sse import SSEDecoder

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: The service sends an SSE keep-alive every 15 s, so a stream silent for this long is dead.
STREAM_READ_TIMEOUT_S = 60.0
#: Wait before reconnecting an event stream when the server did not say (its 'retry:' field).
DEFAULT_RECONNECT_DELAY_S = 2.0
#: ``wait`` gives up on a stream silent this long (past one 15 s keep-alive: a proxy holds it
#: back) and polls instead.
WAIT_STREAM_READ_TIMEOUT_S = 20.0
#: Events per page when looking for a job's latest event.
EVENTS_PAGE_LIMIT = 500
#: Seconds an upload may wait for the service's answer once the file is sent. The service
#: answers only after checking the file: up to 120 s waiting for a validation slot
#: (VALIDATION_QUEUE_TIMEOUT_SECONDS) plus up to 600 s of validation
#: (VALIDATION_TIMEOUT_SECONDS), then storing it. The general 60 s read timeout cut that wait
#: short, so a big file was sent again, up to 4 times, and then failed.
DEFAULT_UPLOAD_TIMEOUT_S = 900.0

#: What the API key and an Idempotency-Key may hold: visible ASCII, as the service's keys and
#: its Idempotency-Key rule do. Anything else cannot go into a header as given: httpx refuses
#: a non-ASCII character outright, and a space or the newline a key file ends with is an
#: illegal header value, which used to surface as a connection error after every retry.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")
#: What a multipart ``filename="..."`` carries as it is; the exact name goes in ``filename*``.
_PLAIN_FILENAME = re.compile(r"[^\x20-\x7e]|[\"\\]")

Model = TypeVar("Model", bound=BaseModel)
Upload = TypeVar("Upload", Checkpoint, Dataset)
Item = TypeVar("Item", covariant=True)


class _Page(Protocol[Item]):
    """A page of a cursor-paged list (jobs, checkpoints, datasets)."""

    @property
    def items(self) -> Sequence[Item]: ...

    @property
    def next_cursor(self) -> str | None: ...


def _every_item(fetch: Callable[[str | None], Flow[_Page[Any]]], limit: int | None) -> Flow[None]:
    """Emits the items of ``fetch(cursor)``'s pages, the first fetched with no cursor and each
    next one with the previous page's ``next_cursor``, as they are asked for; at most ``limit``."""
    cursor: str | None = None
    count = 0
    while True:
        page = yield from fetch(cursor)
        for item in page.items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield Emit(item)
        if not page.next_cursor:
            return
        cursor = page.next_cursor


#: The most items the service puts in one page (``limit`` above it is a 422).
_MAX_PAGE_SIZE = 100


def _page_params(page_size: int, cursor: str | None, **filters: Any) -> dict[str, Any]:
    """The query of one page: ``limit``, ``cursor`` when given, and the filters that are set."""
    params: dict[str, Any] = {"limit": page_size}
    params.update((name, value) for name, value in filters.items() if value)
    if cursor:
        params["cursor"] = cursor
    return params


def _listed(value: str | Sequence[str] | None) -> list[str]:
    """A query parameter given as one value or several, as the list sent (repeated)."""
    return [value] if isinstance(value, str) else list(value or [])


def _string_list(what: str, values: Sequence[str], items: str) -> list[str]:
    """``values`` (event types, scopes) as the JSON list sent; a lone string, which would be
    sent as its letters, is a :class:`RiftUsageError` naming ``what``, a list of ``items``."""
    if isinstance(values, str):
        raise RiftUsageError(f"{what} must be a list of {items}, not the string "
                             f"{values[:100]!r}", field=what)
    return list(values)


def _if_match_headers(if_match: str | None) -> dict[str, str] | None:
    """The headers of a write made only if the resource is unchanged (``if_match``: its
    ``.etag`` or ``*``); None for an unconditional one."""
    if if_match is None:
        return None
    if not if_match.strip():
        raise RiftUsageError("if_match must be an ETag (a resource's .etag) or '*', not "
                             "an empty string", field="if_match")
    return {"If-Match": if_match}


def _project_limits(limits: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """``limits`` as the body's fields; a name that is not a limit is a
    :class:`RiftUsageError` naming the known ones (the service would refuse it as well)."""
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise RiftUsageError(f"limits must be a mapping of limit names to values, not "
                             f"{limits!r:.100}", field="limits")
    unknown = sorted(set(limits) - set(PROJECT_LIMITS))
    if unknown:
        raise RiftUsageError(f"limits: {', '.join(map(str, unknown))} is not a project limit "
                             f"(known: {', '.join(PROJECT_LIMITS)})", field="limits")
    return {name: plain_scalar(value) for name, value in limits.items()}  # type: ignore[misc]


def header_token(what: str, value: str, *, field: str, secret: bool = False) -> str:
    """``value`` if it can be sent as a header value as it is; else :class:`RiftUsageError`
    naming ``what`` and the first character at fault (a secret is never quoted), its ``field``
    the argument that gave it."""
    if _HEADER_TOKEN.fullmatch(value):
        return value
    if not value:
        raise RiftUsageError(f"{what} is empty", field=field)
    position, bad = next((i, ch) for i, ch in enumerate(value) if not _HEADER_TOKEN.match(ch))
    quoted = "" if secret else f" {value[:100]!r}"
    raise RiftUsageError(
        f"{what}{quoted} holds {bad!r} at position {position}; it may hold visible ASCII "
        "characters only (no spaces, line breaks or non-ASCII letters)", field=field)


def _job_spec_field(exc: ValidationError) -> str:
    """The argument at fault in a spec that is not a JobSpec: ``spec`` and the first error's
    key path (``spec.config``, ``spec.labels``)."""
    loc = exc.errors()[0]["loc"] if exc.errors() else ()
    return ".".join(["spec", *(str(part) for part in loc)])


def _job_spec_error(exc: ValidationError, spec: object) -> str:
    """One line for a spec that is not a JobSpec (pydantic's report spans lines and links),
    with the usual cause named: the RiftConfig itself passed where ``{"config": ...}`` goes."""
    words = {"extra_forbidden": "unknown key", "missing": "required"}
    parts = [f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: "
             f"{words.get(error['type'], error['msg'])}" for error in exc.errors()]
    text = "the job spec is not a JobSpec: " + "; ".join(parts)
    if isinstance(spec, Mapping) and "config" not in spec and {"architecture", "dataset"} & set(spec):
        text += " (this looks like the RiftConfig itself: pass {'config': <it>})"
    return text


def _idempotency_key(given: str | None) -> str:
    """``given`` checked as a header value, else a fresh random key (one per call, so that every
    retry of the call sends the same one)."""
    return header_token("the Idempotency-Key", given, field="idempotency_key") if given else \
        f"rift-client-{uuid.uuid4().hex}"


def checked_base_url(raw: str) -> str:
    """The service's base URL without a trailing slash, or :class:`RiftUsageError` when it is
    not ``http(s)://host[:port][/prefix]`` (httpx would raise its own ``InvalidURL`` when the
    client is made, or fail every request as a connection error after all the retries)."""
    shown = shown_url(raw)[:200] if isinstance(raw, str) else raw
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise RiftUsageError(f"the base URL {shown!r} is not a valid URL: {exc}",
                             field="base_url") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise RiftUsageError(f"the base URL {shown!r} must look like "
                             "http(s)://host[:port][/prefix]", field="base_url")
    if url.userinfo:
        # httpx sends a URL's user:password as Basic auth, which replaced the Bearer key on
        # every request (each one a 401 that blamed the Authorization header), and every
        # connection error printed the password with the URL.
        raise RiftUsageError(
            f"the base URL {shown!r} holds a user name or password (before '@'): httpx would "
            "send them in place of the API key, which the service refuses; give the URL "
            "without them and the key as api_key= or RIFT_API_KEY", field="base_url")
    return raw.rstrip("/")


def _job_spec(spec: JobSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The API's JobSpec fields of ``spec`` (the optional ones only when set)."""
    try:
        job_spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    except ValidationError as exc:
        raise RiftUsageError(_job_spec_error(exc, spec), field=_job_spec_field(exc)) from exc
    body: dict[str, Any] = {"config": json_document("spec.config", job_spec.config),
                            "labels": job_spec.labels}
    if job_spec.dataset_id is not None:
        body["dataset_id"] = job_spec.dataset_id
    if job_spec.time_limit_seconds is not None:
        body["time_limit_seconds"] = job_spec.time_limit_seconds
    return body


def _multipart_job(spec: dict[str, Any], file: Sendable, progress: ProgressCallback | None
                   ) -> tuple[FileBody, str]:
    """The multipart form of ``POST /v1/jobs`` (the ``spec`` field, then the ``checkpoint``
    file, streamed from disk or from the caller's stream) and its Content-Type."""
    boundary = f"rift-{uuid.uuid4().hex}"
    # The exact name, any characters, in RFC 8187's filename* (which the service reads first);
    # a plain ASCII stand-in in filename for readers that do not.
    plain = _PLAIN_FILENAME.sub("_", file.name)
    head = (f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="spec"\r\n'
            "Content-Type: application/json\r\n\r\n").encode() + \
        json.dumps(spec).encode() + \
        (f"\r\n--{boundary}\r\n"
         f'Content-Disposition: form-data; name="checkpoint"; filename="{plain}"; '
         f"filename*=utf-8''{quote(file.name, safe='')}\r\n"
         "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = FileBody(file, progress, prefix=head,
                    suffix=f"\r\n--{boundary}--\r\n".encode())
    return body, f"multipart/form-data; boundary={boundary}"


def _within(timeout: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """``timeout`` cut to the time left before ``deadline`` (a ``time.monotonic()`` instant):
    a wait's look at a slow service ends with the wait, not ``timeout`` later."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.01)

    def cut(value: float | None) -> float:
        return left if value is None else min(value, left)

    return httpx.Timeout(connect=cut(timeout.connect), read=cut(timeout.read),
                         write=cut(timeout.write), pool=cut(timeout.pool))


#: Events read per look while waiting for an export's outcome (the service allows 1,000).
_EVENT_PAGE = 500


def _export_outcome(job_id: str, request_event_id: int,
                    event: Event) -> MlflowExportOutcome | None:
    """The export's outcome if ``event`` is the one answering request ``request_event_id``: an
    ``mlflow_exported`` event or an export ``warning`` naming it (another request's outcome, or
    the export after the job's success, names another or none)."""
    payload = event.payload
    if payload.get("request_event_id") != request_event_id:
        return None
    if event.kind == "mlflow_exported":
        return MlflowExportOutcome(
            job_id=job_id, request_event_id=request_event_id, event_id=event.id, exported=True,
            run_id=payload.get("run_id"), model=payload.get("model"),
            version=None if payload.get("version") is None else str(payload["version"]))
    if event.kind == "warning" and payload.get("stage") == "export":
        return MlflowExportOutcome(job_id=job_id, request_event_id=request_event_id,
                                   event_id=event.id, exported=False,
                                   message=str(payload.get("message", "")))
    return None


def _pause(deadline: float | None, outage: Outage, poll_interval: float,
           timed_out: Callable[[], WaitTimeoutError]) -> Flow[None]:
    """A wait's pause before its next look: ``poll_interval`` (longer during an outage), cut to
    what is left before ``deadline``; ``timed_out()`` raised once nothing is left (made only
    then: without a deadline there is no timeout to word)."""
    if deadline is None:
        yield Sleep(outage.delay(poll_interval))
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise timed_out()
    yield Sleep(min(outage.delay(poll_interval), left))


def _materialization_timeout(job_id: str, record: Materialization,
                             timeout: float | None) -> WaitTimeoutError:
    return WaitTimeoutError(
        f"materialization {record.id} (α = {record.alpha:g}) of job {job_id} was still "
        f"{record.status} after {timeout:g} s", job_id=job_id, last_status=record.status,
        materialization_id=record.id)


def _passed(deadline: float | None) -> bool:
    """Whether ``deadline`` (a ``time.monotonic()`` instant, or None: none) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def _before(deadline: float | None, delay: float) -> bool:
    """Whether a retry after ``delay`` seconds would begin before ``deadline``."""
    return deadline is None or time.monotonic() + delay < deadline


def _write_hashed(out: IO[bytes], digest: Any, chunk: bytes) -> None:
    """A downloaded chunk appended to the partial file and to its running SHA-256."""
    out.write(chunk)
    digest.update(chunk)


def _held_any(out: IO[bytes]) -> bool:
    """Whether the ``.part`` holds bytes to resume from (a write that failed on a full disk may
    have left its buffer unwritten: what reached the file is what counts)."""
    with contextlib.suppress(OSError):
        out.flush()
    return partfile.holds_any(out)


def _server_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a 5xx answer: the server (or the object store behind a presigned
    redirect) failed, not the request; the bytes already received are still the file's."""
    return isinstance(exc, RiftAPIError) and exc.status_code >= 500


def _named_write_error(exc: BaseException, target: Path) -> OSError | None:
    """A failed write of a download (a full disk, a file size limit) as an ``OSError`` naming
    ``target``; None for any other error. The write's own error names no file ("[Errno 28] No
    space left on device"), so riftctl said just that, not what it was saving, nor where."""
    if not isinstance(exc, OSError) or exc.filename is not None:
        return None
    return OSError(exc.errno, f"{exc.strerror or exc} (saving the download; nothing was "
                   "kept)", str(target))


def _restart(out: IO[bytes]) -> None:
    """The partial file emptied: a download whose range was not honoured starts again."""
    out.seek(0)
    out.truncate()


@dataclass(frozen=True)
class RiftCore:
    """The flows of one service's calls: ``base_url`` (checked), the ``retry`` policy, the
    ``timeout`` of every read and the ``upload_timeout`` of an upload's answer."""

    base_url: str
    retry: RetryPolicy
    timeout: float
    upload_timeout: float
    #: How the base URL was chosen when the caller did not give it ("RIFT_API_URL's", "the
    #: default"), for the error of a URL where nothing answers; None when given as an argument.
    url_origin: str | None = None
    #: The environment's proxy the requests go through (``rift_client.proxies``), for the
    #: error of a connection that failed: the proxy's, not the service's; None: direct.
    via_proxy: str | None = None

    # ------------------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, *, idempotent: bool,
                params: Mapping[str, Any] | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None, body: FileBody | None = None,
                timeout: httpx.Timeout | None = None,
                lost: list[str] | None = None,
                deadline: float | None = None) -> Flow[httpx.Response]:
        """Send a request, retrying as :mod:`rift_client.retry` says; an error answer raises.
        ``lost`` collects why each attempt that the service may have acted on (the connection
        lost after sending, a proxy's 502/504) was sent again. ``deadline`` (a
        ``time.monotonic()`` instant, a wait's end): no attempt outlasts it, and no retry is
        made that would begin after it (the last error is raised)."""
        retry = 0
        while True:
            try:
                response = yield Send(method, path,
                                      _within(timeout or httpx.Timeout(self.timeout), deadline),
                                      params=params, json=json, headers=headers, body=body)
            except httpx.TransportError as exc:
                pause = self.retry.backoff(retry)
                if (idempotent or sent_nothing(exc)) and retry < self.retry.max_retries \
                        and _before(deadline, pause) and not untrusted_certificate(exc):
                    if lost is not None and not sent_nothing(exc):
                        lost.append(repr(exc))
                    yield Sleep(pause)
                    retry += 1
                    continue
                raise self._connection_error(method, path, exc) from exc
            except httpx.HTTPError as exc:  # an answer httpx cannot decode, say
                raise self._unreadable(method, path, exc) from exc
            if response.status_code < 400:
                return response
            delay = self.retry.delay_for(response, retry, idempotent=idempotent)
            if delay is None or not _before(deadline, delay):
                raise api_error_from_response(response)
            if lost is not None and response.status_code in GATEWAY_STATUSES:
                lost.append(f"HTTP {response.status_code}")
            yield Sleep(delay)
            retry += 1

    def open_stream(self, path: str, *, headers: Mapping[str, str] | None = None,
                    params: Mapping[str, Any] | None = None, follow_redirects: bool = False,
                    read_timeout: float | None = None,
                    retry_answers: bool = True,
                    deadline: float | None = None) -> Flow[httpx.Response]:
        """A streamed GET (retried like :meth:`request` until the answer's headers arrive;
        with ``retry_answers=False`` a 429 or 503 is raised at once instead of waited out;
        ``deadline`` as for :meth:`request`): the open answer, its body left to the caller."""
        timeout = httpx.Timeout(self.timeout, read=read_timeout or self.timeout)
        retry = 0
        while True:
            try:
                response = yield Send("GET", path, _within(timeout, deadline), params=params,
                                      headers=headers, stream=True,
                                      follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                pause = self.retry.backoff(retry)
                if retry < self.retry.max_retries and _before(deadline, pause) \
                        and not untrusted_certificate(exc):
                    yield Sleep(pause)
                    retry += 1
                    continue
                raise self._connection_error("GET", path, exc) from exc
            except httpx.HTTPError as exc:
                raise self._unreadable("GET", path, exc) from exc
            if response.status_code < 400:
                return response
            yield ReadBody(response)
            yield Close(response)
            delay = self.retry.delay_for(response, retry) if retry_answers else None
            if delay is None or not _before(deadline, delay):
                raise api_error_from_response(response)
            yield Sleep(delay)
            retry += 1

    def _connection_error(self, method: str, path: str,
                          exc: httpx.TransportError) -> RiftConnectionError:
        """The error for a request that got no answer. One that could not even connect says
        where the URL came from (a wrong or unset RIFT_API_URL is the usual cause)."""
        elsewhere = path.startswith(("http://", "https://"))  # a presigned store URL
        url = path if elsewhere else self.base_url + path
        certificate = untrusted_certificate(exc)
        if certificate is not None:
            reason = certificate.verify_message or str(certificate)
            return UntrustedCertificateError(
                f"{method} {url}: the server's TLS certificate is not trusted here ({reason}); "
                "give the CA bundle (PEM) that signed it in SSL_CERT_FILE (httpx trusts "
                "certifi's list, not the system's), or transport=httpx.HTTPTransport("
                "verify=ssl.create_default_context(cafile=...))", reason=reason)
        text = f"{method} {url}: {exc!r}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not elsewhere \
                and self.via_proxy:
            # Before: "no service answers at <url>: check ... that the service is running",
            # about a service that was running; the connection that failed was the proxy's.
            host = httpx.URL(self.base_url).host
            return RiftConnectionError(
                f"{text}; the requests go through the proxy {self.via_proxy}, which did not "
                f"answer: set NO_PROXY={host} to reach the service directly, or check the proxy")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not elsewhere:
            origin = f" (the URL is {self.url_origin})" if self.url_origin else ""
            text += (f"; no service answers at {self.base_url}{origin}: check the URL and that "
                     "the service is running")
            return RiftConnectionError(text, unreachable_url=self.base_url)
        return RiftConnectionError(text)

    def _unreadable(self, method: str, path: str, exc: Exception) -> UnexpectedResponseError:
        return UnexpectedResponseError(
            f"{method} {self.base_url}{path}: the answer could not be read ({exc!r}); is "
            f"{self.base_url} the RiFT service's URL?", status_code=None, method=method,
            path=path)

    def _unexpected(self, response: httpx.Response, expected: str,
                    problem: object) -> UnexpectedResponseError:
        request = response.request
        content_type = response.headers.get("content-type", "no content type")
        return UnexpectedResponseError(
            f"{request.method} {request.url.path} answered {response.status_code} "
            f"({content_type}) with a body that is not the API's {expected} ({str(problem)[:300]}); "
            f"is {self.base_url} the RiFT service's URL?", status_code=response.status_code,
            method=request.method, path=request.url.path)

    def _parse(self, response: httpx.Response, model: type[Model]) -> Model:
        """The answer's JSON as ``model``; :class:`UnexpectedResponseError` when it is not."""
        try:
            return model.model_validate(response.json())
        except ValueError as exc:  # not JSON, or JSON of another shape (pydantic's error)
            raise self._unexpected(response, model.__name__, exc) from exc

    def _parse_items(self, response: httpx.Response, model: type[Model]) -> list[Model]:
        """The answer's ``{"items": [...]}`` as a list of ``model``."""
        try:
            body = response.json()
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ValueError("no 'items' list")
            return [model.model_validate(item) for item in items]
        except ValueError as exc:
            raise self._unexpected(response, f"list of {model.__name__}", exc) from exc

    def _get(self, path: str, model: type[Model], *, deadline: float | None = None,
             **params: Any) -> Flow[Model]:
        response = yield from self.request("GET", path, idempotent=True, params=params or None,
                                           deadline=deadline)
        parsed = self._parse(response, model)
        if isinstance(parsed, _Resource):
            # Kept for if_match= (the resource's .etag), outside the model's value.
            parsed._etag = response.headers.get("etag")
        return parsed

    def _get_items(self, path: str, model: type[Model],
                   **params: Any) -> Flow[list[Model]]:
        response = yield from self.request("GET", path, idempotent=True, params=params or None)
        return self._parse_items(response, model)

    def _every_page_items(self, path: str, model: type[Model]) -> Flow[list[Model]]:
        """Every item of a paged list, following ``next_cursor`` from page to page (a service
        from before these lists were paged answers one page without it)."""
        items: list[Model] = []
        cursor: str | None = None
        while True:
            response = yield from self.request("GET", path, idempotent=True,
                                               params={"cursor": cursor} if cursor else None)
            items.extend(self._parse_items(response, model))
            cursor = response.json().get("next_cursor")
            if not isinstance(cursor, str) or not cursor:
                return items

    def _delete(self, path: str, if_match: str | None = None,
                params: Mapping[str, Any] | None = None) -> Flow[None]:
        """DELETE ``path``; with ``if_match`` (an ETag: a resource's ``.etag``) only if it is
        unchanged since read, else :class:`PreconditionFailedError` (412)."""
        yield from self.request("DELETE", path, idempotent=True, params=params,
                                headers=_if_match_headers(if_match))

    # ------------------------------------------------------------------------------- service

    def ready(self, deadline: float | None = None) -> Flow[bool]:
        try:
            response = yield Send("GET", "/readyz",
                                  _within(httpx.Timeout(self.timeout), deadline))
        except httpx.TransportError as exc:
            # Not ready yet, unless the certificate check failed: no later look would pass it
            # (before, wait_until_ready looked until its timeout, then said "not ready").
            if untrusted_certificate(exc) is not None:
                raise self._connection_error("GET", "/readyz", exc) from exc
            return False
        return bool(response.status_code == 200)

    def wait_until_ready(self, timeout: float, poll_interval: float) -> Flow[None]:
        given, poll_interval = wait_times(timeout, poll_interval)
        timeout = timeout if given is None else given
        deadline = time.monotonic() + timeout
        # Each look ends with the wait: before, a /readyz that hung (a service starting, its
        # database not yet answering) was waited on for the client's whole timeout (60 s),
        # past the time given, and a late 200 was taken as ready.
        while not (yield from self.ready(deadline)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RiftConnectionError(f"{self.base_url} was not ready within {timeout:g} s")
            yield Sleep(min(poll_interval, left))

    # --------------------------------------------------------------------------------- files

    def _send_file(self, route: str, model: type[Model], body: FileBody, *, content_type: str,
                   idempotency_key: str | None, params: Mapping[str, Any] | None = None
                   ) -> Flow[Model]:
        # Under a key a retry after a lost answer returns what was stored the first time instead
        # of storing it twice, so the request is retried like a read (the body is sent again
        # from the start, under the same key: drawn once, here, not per attempt).
        key = _idempotency_key(idempotency_key)
        response = yield from self.request(
            "POST", route, idempotent=True, body=body, params=params,
            headers={"Content-Type": content_type, "Content-Length": str(body.length),
                     "Idempotency-Key": key},
            timeout=httpx.Timeout(self.timeout, read=self.upload_timeout))
        return self._parse(response, model)

    def _compare(self, file: Sendable, stored: str | None, body: FileBody) -> None:
        local = body.sha256.hexdigest()
        if stored != local:
            raise ChecksumMismatchError(
                f"the service stored {file.name} with SHA-256 {stored}, but the file "
                f"sent has {local}", expected=local, actual=str(stored))

    def upload(self, route: str, model: type[Upload], path: UploadSource,
               filename: str | None, progress: ProgressCallback | None,
               idempotency_key: str | None) -> Flow[Upload]:
        file = sendable("path", path, filename)
        body = FileBody(file, progress)
        record = yield from self._send_file(route, model, body,
                                            content_type="application/octet-stream",
                                            idempotency_key=idempotency_key,
                                            params={"filename": file.name})
        self._compare(file, record.sha256, body)
        return record

    def list_checkpoints_page(self, format: str | None, page_size: int,
                              cursor: str | None) -> Flow[CheckpointPage]:
        return self._get("/v1/checkpoints", CheckpointPage,
                         **_page_params(page_size, cursor, format=format))

    def list_checkpoints(self, format: str | None, page_size: int,
                         limit: int | None) -> Flow[None]:
        limit = item_limit(limit)
        return _every_item(lambda cursor: self.list_checkpoints_page(format, page_size, cursor),
                           limit)

    def get_checkpoint(self, checkpoint_id: str) -> Flow[Checkpoint]:
        return self._get(f"/v1/checkpoints/{_seg('checkpoint_id', checkpoint_id)}", Checkpoint)

    def delete_checkpoint(self, checkpoint_id: str, if_match: str | None = None) -> Flow[None]:
        return self._delete(f"/v1/checkpoints/{_seg('checkpoint_id', checkpoint_id)}", if_match)

    def list_audit_events_page(self, action: str | None, resource_id: str | None,
                               page_size: int, cursor: str | None) -> Flow[AuditEventPage]:
        return self._get("/v1/audit-events", AuditEventPage, **_page_params(
            page_size, cursor, action=action, resource_id=resource_id))

    def list_audit_events(self, action: str | None, resource_id: str | None, page_size: int,
                          limit: int | None) -> Flow[None]:
        limit = item_limit(limit)
        return _every_item(lambda cursor: self.list_audit_events_page(
            action, resource_id, page_size, cursor), limit)

    def list_datasets_page(self, kind: str | None, page_size: int,
                           cursor: str | None) -> Flow[DatasetPage]:
        return self._get("/v1/datasets", DatasetPage, **_page_params(page_size, cursor, kind=kind))

    def list_datasets(self, kind: str | None, page_size: int, limit: int | None) -> Flow[None]:
        limit = item_limit(limit)
        return _every_item(lambda cursor: self.list_datasets_page(kind, page_size, cursor), limit)

    def get_dataset(self, dataset_id: str) -> Flow[Dataset]:
        return self._get(f"/v1/datasets/{_seg('dataset_id', dataset_id)}", Dataset)

    def delete_dataset(self, dataset_id: str, if_match: str | None = None) -> Flow[None]:
        return self._delete(f"/v1/datasets/{_seg('dataset_id', dataset_id)}", if_match)

    def usage(self) -> Flow[Usage]:
        return self._get("/v1/usage", Usage)

    # ---------------------------------------------------------------------------------- jobs

    def create_job(self, spec: JobSpec | Mapping[str, Any], checkpoint_id: str | None,
                   checkpoint_file: UploadSource | None,
                   idempotency_key: str | None, progress: ProgressCallback | None) -> Flow[Job]:
        if (checkpoint_id is None) == (checkpoint_file is None):
            raise RiftUsageError("give either checkpoint_id (an uploaded checkpoint) or "
                                 "checkpoint_file (a local file sent with the job), not "
                                 f"{'both' if checkpoint_id is not None else 'neither'}",
                                 field="checkpoint_id")
        fields = _job_spec(spec)
        key = _idempotency_key(idempotency_key)
        if checkpoint_file is not None:
            file = sendable("checkpoint_file", checkpoint_file)
            return self._create_job_with_file(fields, file, key, progress)
        # Sent in the body as given (the service names it if it is not an id's pattern), once
        # it is a string.
        return self._create_job(fields, checked_id("checkpoint_id", cast(str, checkpoint_id)),
                                key)

    def _create_job(self, fields: dict[str, Any], checkpoint_id: str, key: str) -> Flow[Job]:
        response = yield from self.request(
            "POST", "/v1/jobs", idempotent=True, json={"checkpoint_id": checkpoint_id, **fields},
            headers={"Idempotency-Key": key})
        return self._parse(response, Job)

    def _create_job_with_file(self, fields: dict[str, Any], file: Sendable, key: str,
                              progress: ProgressCallback | None) -> Flow[Job]:
        body, content_type = _multipart_job(fields, file, progress)
        job = yield from self._send_file("/v1/jobs", Job, body, content_type=content_type,
                                         idempotency_key=key)
        # The job names the checkpoint stored from the file: its hash is the service's.
        checkpoint = yield from self.get_checkpoint(job.checkpoint_id)
        self._compare(file, checkpoint.sha256, body)
        return job

    def get_job(self, job_id: str, deadline: float | None = None) -> Flow[Job]:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}", Job, deadline=deadline)

    def delete_job(self, job_id: str, if_match: str | None = None) -> Flow[None]:
        return self._delete(f"/v1/jobs/{_seg('job_id', job_id)}", if_match)

    def list_jobs_page(self, status: str | Sequence[str] | None,
                       labels: Mapping[str, str] | None, page_size: int,
                       cursor: str | None, expand: str | Sequence[str] | None = None,
                       ) -> Flow[JobPage]:
        return self._get("/v1/jobs", JobPage, **_page_params(
            page_size, cursor, status=_listed(status),
            label=[f"{k}:{v}" for k, v in (labels or {}).items()], expand=_listed(expand)))

    def list_jobs(self, status: str | Sequence[str] | None, labels: Mapping[str, str] | None,
                  page_size: int, limit: int | None,
                  expand: str | Sequence[str] | None = None) -> Flow[None]:
        limit = item_limit(limit)
        return _every_item(
            lambda cursor: self.list_jobs_page(status, labels, page_size, cursor, expand), limit)

    def cancel(self, job_id: str) -> Flow[Job]:
        # Idempotent: asking again only asks again (the job ends once), so an answer lost with
        # its connection is asked again like a read; before, it raised RiftConnectionError
        # though the job was cancelled.
        lost: list[str] = []
        try:
            response = yield from self.request(
                "POST", f"/v1/jobs/{_seg('job_id', job_id)}/cancel", idempotent=True, lost=lost)
        except ConflictError as exc:
            # The lost attempt (its answer cut, or a proxy's 502/504) cancelled a job that could
            # end at once (a queued one), so the service answers this one 409 job_finished:
            # that is the cancel's success.
            # Without a lost attempt, the 409 is the caller's (the job had ended before).
            if not (lost and exc.code == "job_finished"
                    and exc.details.get("status") == "cancelled"):
                raise
            return (yield from self.get_job(job_id))
        return self._parse(response, Job)

    def wait(self, job_id: str, timeout: float | None, poll_interval: float,
             on_update: Callable[[Job], None] | None, follow_events: bool,
             on_outage: Callable[[RiftClientError | None], None] | None = None) -> Flow[Job]:
        timeout, poll_interval = wait_times(timeout, poll_interval)
        _seg("job_id", job_id)
        return self._wait(job_id, timeout, poll_interval, on_update, follow_events, on_outage)

    def _wait(self, job_id: str, timeout: float | None, poll_interval: float,
              on_update: Callable[[Job], None] | None, follow_events: bool,
              on_outage: Callable[[RiftClientError | None], None] | None) -> Flow[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        # Once the job has been read, the service down for longer than a request's retries (a
        # restart, a deploy: the job runs on) does not end the wait: it looks again every
        # poll_interval until the service answers, the outage has lasted the policy's
        # max_outage_s, or the deadline has passed. Before, a restart of more than a few seconds
        # ended `riftctl jobs wait` with exit 3 while the job ran on.
        outage = Outage(self.retry.max_outage_s, on_outage)

        def read(last: Job | None) -> Flow[Job]:
            """The job read again; ``last`` when the look failed within a tolerated outage
            (None: the first look, whose failure is raised: a wrong URL or id says so at once)."""
            try:
                # The first look is made as any call is (it says whether the job exists, and a
                # short timeout must not turn a slow answer into an error); every later one
                # ends with the wait.
                job = yield from self.get_job(job_id, None if last is None else deadline)
            except RiftClientError as exc:
                if last is None:
                    raise
                if outage.tolerate(exc, deadline):
                    return last
                if _passed(deadline):
                    # The time given ran out during the look (a slow or hung service): the
                    # wait's own error, not the look's.
                    raise WaitTimeoutError(
                        f"job {job_id} was still {last.status} after {timeout:g} s (the last "
                        f"look got no answer in time: {exc})", job_id=job_id,
                        last_status=last.status) from exc
                raise
            outage.over()
            if on_update is not None:
                on_update(job)
            return job

        job = yield from read(None)
        if job.finished:
            return job
        if follow_events:
            job = yield from self._wait_on_events(job_id, job, deadline, poll_interval, read,
                                                  outage)
            if job.finished:
                return job
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(
                        f"job {job_id} was still {job.status} after {timeout:g} s",
                        job_id=job_id, last_status=job.status)
                yield Sleep(min(outage.delay(poll_interval), left))
            else:
                yield Sleep(outage.delay(poll_interval))
            job = yield from read(job)
            if job.finished:
                return job

    def _wait_on_events(self, job_id: str, job: Job, deadline: float | None,
                        poll_interval: float, read: Callable[[Job], Flow[Job]],
                        outage: Outage) -> Flow[Job]:
        """Follow the job's event stream until it ends (the job finished, or the time is up),
        reading the job at most every ``poll_interval`` s while events arrive: the job last
        read. A stream that cannot be opened or drops (the key's stream limit, a busy or
        restarting service) hands over to polling: the job as last read is returned."""
        last_read = time.monotonic()
        try:
            # Only new events matter here: start after the latest one instead of replaying all.
            latest = yield from self._latest_event_id(job_id, deadline)
        except RiftClientError as exc:
            # The time given ran out during the look: the polling loop raises WaitTimeoutError.
            if not (outage.tolerate(exc, deadline) or _passed(deadline)):
                raise
            return job
        events = self._events(job_id, after=latest, max_reconnects=0,
                              read_timeout=WAIT_STREAM_READ_TIMEOUT_S,
                              timeout=None if deadline is None
                              else max(deadline - time.monotonic(), 0.0),
                              retry_answers=False)
        try:
            while True:
                try:
                    event = yield from next_item(events)
                except RiftClientError as exc:
                    if not is_outage(exc):
                        raise
                    return job  # the stream dropped, or was refused: poll instead
                if event is END:
                    # The stream ended: the job has finished, or the time is up.
                    return (yield from read(job))
                if time.monotonic() - last_read >= poll_interval:
                    job, last_read = (yield from read(job)), time.monotonic()
                    if job.finished:
                        return job
        finally:
            events.close()

    def _latest_event_id(self, job_id: str, deadline: float | None) -> Flow[int]:
        """The id of the job's latest event so far (0 when it has none), paging through them."""
        latest = 0
        while True:
            page = yield from self.list_events(job_id, after=latest, limit=EVENTS_PAGE_LIMIT,
                                               deadline=deadline)
            if not page.items:
                return latest
            latest = page.items[-1].id
            if len(page.items) < EVENTS_PAGE_LIMIT:
                return latest

    # -------------------------------------------------------------------------------- events

    def list_events(self, job_id: str, after: int, limit: int,
                    deadline: float | None = None) -> Flow[EventPage]:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/events", EventPage, after=after,
                         limit=limit, deadline=deadline)

    def stream_events(self, job_id: str, after: int, max_reconnects: int, read_timeout: float,
                      timeout: float | None) -> Flow[None]:
        timeout, read_timeout = wait_times(timeout, read_timeout, interval_name="read_timeout")
        _seg("job_id", job_id)
        return self._events(job_id, after=after, max_reconnects=max_reconnects,
                            read_timeout=read_timeout, timeout=timeout, retry_answers=True,
                            outage=Outage(self.retry.max_outage_s))

    def _events(self, job_id: str, *, after: int, max_reconnects: int, read_timeout: float,
                timeout: float | None, retry_answers: bool,
                outage: Outage | None = None) -> Flow[None]:
        """Emits the job's events from the first with id > ``after`` (see ``stream_events``).
        With an ``outage``, a reopening that fails once the stream has been open (the service
        restarting) is tried again every reconnect delay while the outage may last; without,
        it is raised (``wait`` polls instead)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        opened = False

        def time_left() -> float:
            return float("inf") if deadline is None else deadline - time.monotonic()

        last = after
        failures = 0
        delay = DEFAULT_RECONNECT_DELAY_S
        path = f"/v1/jobs/{_seg('job_id', job_id)}/events"
        while time_left() > 0:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last:
                headers["Last-Event-ID"] = str(last)
            problem = "the stream ended before the job did"
            try:
                response = yield from self.open_stream(
                    path, headers=headers, params={"after": last},
                    read_timeout=min(read_timeout, time_left()), retry_answers=retry_answers,
                    deadline=deadline)
            except RiftClientError as exc:
                # Before, one reopening that failed its retries ended the stream (riftctl jobs
                # events, exit 3) when the service took more than a few seconds to restart. A
                # first opening that fails is raised: a wrong URL or job says so at once.
                if outage is None or not opened or not outage.tolerate(exc, deadline):
                    raise
                yield Sleep(min(outage.delay(delay), max(time_left(), 0.0)))
                continue
            opened = True
            if outage is not None:
                outage.over()
            ended = False  # the job's end, or the time given: no reconnecting
            try:
                lines = yield Lines(response)
                decoder = SSEDecoder()
                while (line := (yield Next(lines))) is not END:
                    message = decoder.feed(line)
                    if decoder.retry_ms is not None:
                        delay = decoder.retry_ms / 1000
                    if time_left() <= 0 or (message is not None and message.event == "end"):
                        ended = True
                        break
                    if message is None:
                        continue
                    try:
                        event = Event.model_validate_json(message.data)
                    except ValueError as exc:
                        raise self._unexpected(response, "Event", exc) from exc
                    if event.id <= last:
                        continue
                    last, failures = event.id, 0
                    yield Emit(event)
            except httpx.TransportError as exc:
                ended = time_left() <= 0
                problem = repr(exc)
            except httpx.HTTPError as exc:  # a stream httpx cannot decode
                raise self._unreadable("GET", path, exc) from exc
            yield Close(response)
            if ended:
                return
            failures += 1
            if failures > max_reconnects:
                raise RiftConnectionError(
                    f"the event stream of job {job_id} dropped {failures} times in a row without "
                    f"a new event (last: {problem}); last event id {last}")
            yield Sleep(min(delay, max(time_left(), 0.0)))

    # ------------------------------------------------------------------------------- results

    def get_mrc(self, job_id: str) -> Flow[MRCTable]:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/mrc", MRCTable)

    def get_curves(self, job_id: str) -> Flow[Curves]:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/curves", Curves)

    def list_artifacts(self, job_id: str) -> Flow[list[Artifact]]:
        return self._get_items(f"/v1/jobs/{_seg('job_id', job_id)}/artifacts", Artifact)

    def get_artifact(self, job_id: str, name: str) -> Flow[Artifact]:
        artifacts = yield from self.list_artifacts(job_id)
        for artifact in artifacts:
            if artifact.name == name:
                return artifact
        # Ask for the file itself (one byte at most, never a redirect), so the error says why it
        # is missing, as the API words it: too early, a failed job, or no such name.
        yield from self.request(
            "GET", f"/v1/jobs/{_seg('job_id', job_id)}/artifacts/{_seg('name', name)}",
            idempotent=True, params={"redirect": "false"},
            headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        for artifact in (yield from self.list_artifacts(job_id)):  # made in between the looks
            if artifact.name == name:
                return artifact
        raise NotFoundError(
            f"job {job_id} has no artifact {name!r} (available: "
            f"{', '.join(a.name for a in artifacts) or 'none yet'})",
            status_code=404, code="artifact_not_found", field="name", method="GET",
            path=f"/v1/jobs/{job_id}/artifacts")

    # ----------------------------------------------------------------------- materializations

    def materialize(self, job_id: str, alpha: float, evaluate: bool) -> Flow[Materialization]:
        body = {"alpha": finite_number("alpha", alpha), "evaluate": evaluate}
        path = f"/v1/jobs/{_seg('job_id', job_id)}/materialize"
        return self._materialize(path, body)

    def _materialize(self, path: str, body: dict[str, Any]) -> Flow[Materialization]:
        response = yield from self.request("POST", path, idempotent=True, json=body)
        return self._parse(response, Materialization)

    def export_to_mlflow(self, job_id: str) -> Flow[MlflowExport]:
        path = f"/v1/jobs/{_seg('job_id', job_id)}/mlflow-export"
        # Retried like a read: the export finds the run a first attempt made.
        response = yield from self.request("POST", path, idempotent=True)
        return self._parse(response, MlflowExport)

    def wait_mlflow_export(self, job_id: str, request_event_id: int, timeout: float | None,
                           poll_interval: float) -> Flow[MlflowExportOutcome]:
        timeout, poll_interval = wait_times(timeout, poll_interval)
        _seg("job_id", job_id)
        if isinstance(request_event_id, bool) or not isinstance(request_event_id, int):
            raise RiftUsageError("request_event_id must be the event_id export_to_mlflow "
                                 f"answered, not {request_event_id!r}", field="request_event_id")
        return self._wait_mlflow_export(job_id, request_event_id, timeout, poll_interval)

    def _wait_mlflow_export(self, job_id: str, request_event_id: int, timeout: float | None,
                            poll_interval: float) -> Flow[MlflowExportOutcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        outage = Outage(self.retry.max_outage_s)  # lived through as a job's wait does
        after, looked = request_event_id, False
        while True:
            try:
                # The first look as any call (see _wait); later ones end with the wait.
                page = yield from self.list_events(job_id, after, _EVENT_PAGE,
                                                   deadline if looked else None)
            except RiftClientError as exc:
                if not looked or not (outage.tolerate(exc, deadline) or _passed(deadline)):
                    raise
            else:
                looked = True
                outage.over()
                for event in page.items:
                    outcome = _export_outcome(job_id, request_event_id, event)
                    if outcome is not None:
                        return outcome
                after = max(after, page.next_after)
                if len(page.items) == _EVENT_PAGE:
                    continue  # more events already there: read them before pausing
            yield from _pause(deadline, outage, poll_interval, lambda: WaitTimeoutError(
                f"the MLflow export of job {job_id} asked for by event {request_event_id} had "
                f"no outcome after {timeout:g} s (is a worker running?)", job_id=job_id,
                last_status=SUCCEEDED))  # only a succeeded job's export is queued

    def get_materialization(self, job_id: str, materialization_id: str,
                            deadline: float | None = None) -> Flow[Materialization]:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/materializations/"
                         f"{_seg('materialization_id', materialization_id)}", Materialization,
                         deadline=deadline)

    def list_materializations(self, job_id: str) -> Flow[list[Materialization]]:
        return self._list_materializations(job_id)

    def _list_materializations(self, job_id: str) -> Flow[list[Materialization]]:
        # The service pages them newest first; the clients promise α order.
        items = yield from self._every_page_items(
            f"/v1/jobs/{_seg('job_id', job_id)}/materializations", Materialization)
        return sorted(items, key=lambda item: item.alpha)

    def wait_materialization(self, job_id: str, materialization_id: str, timeout: float | None,
                             poll_interval: float,
                             on_update: Callable[[Materialization], None] | None
                             ) -> Flow[Materialization]:
        timeout, poll_interval = wait_times(timeout, poll_interval)
        return self._wait_materialization(job_id, materialization_id, timeout, poll_interval,
                                          on_update)

    def _wait_materialization(self, job_id: str, materialization_id: str,
                              timeout: float | None, poll_interval: float,
                              on_update: Callable[[Materialization], None] | None
                              ) -> Flow[Materialization]:
        deadline = None if timeout is None else time.monotonic() + timeout
        outage = Outage(self.retry.max_outage_s)  # lived through as a job's wait does
        record: Materialization | None = None
        while True:
            try:
                # The first look as any call (see _wait); later ones end with the wait.
                record = yield from self.get_materialization(
                    job_id, materialization_id, None if record is None else deadline)
            except RiftClientError as exc:
                # A look that got no answer before the time given ran out ends in the wait's
                # own WaitTimeoutError below, as the job's wait does.
                if record is None or not (outage.tolerate(exc, deadline) or _passed(deadline)):
                    raise
            else:
                outage.over()
                if on_update is not None:
                    on_update(record)
                if record.finished:
                    return record
            yield from _pause(deadline, outage, poll_interval, functools.partial(
                _materialization_timeout, job_id, record, timeout))

    def download(self, job_id: str, name: str, path: str | os.PathLike[str],
                 progress: ProgressCallback | None, resume_attempts: int) -> Flow[Path]:
        # Checked first: else, after the request, "No such file or directory: '<path>.part'",
        # a file the caller never named.
        _seg("name", name)  # an empty name is refused before the folder is looked at
        target = save_target(path, name)
        return self._download(job_id, name, target, progress, resume_attempts)

    def _download(self, job_id: str, name: str, target: Path,
                  progress: ProgressCallback | None, resume_attempts: int) -> Flow[Path]:
        artifact = yield from self.get_artifact(job_id, name)
        digest = hashlib.sha256()
        # <target>.part, held by this call alone (partfile.py: two calls at once wrote into one
        # .part, and the first to finish renamed both's bytes to the target as a success).
        out = yield Blocking(functools.partial(partfile.claim, target))
        failures = 0
        try:
            # What an earlier call left in it when it was interrupted (Ctrl-C, a cancelled
            # task, the connection lost for good): resumed from its end, its bytes hashed
            # first. Bytes of another file under the same name show as a checksum mismatch at
            # the end, after which the file is fetched once more from its start.
            received = yield Blocking(functools.partial(partfile.hash_held, out, artifact.size,
                                                        digest))
            from_earlier_call = received > 0
            while True:
                if received < artifact.size:
                    received, failures, digest = yield from self._receive(
                        job_id, name, artifact, out, digest, received, failures, progress,
                        resume_attempts)
                actual = digest.hexdigest()
                if received == artifact.size and actual == artifact.sha256:
                    break
                if from_earlier_call:  # the old .part held other bytes: start again
                    from_earlier_call = False
                    yield Blocking(functools.partial(_restart, out))
                    digest, received = hashlib.sha256(), 0
                    continue
                raise ChecksumMismatchError(
                    f"{name}: received {received} bytes with SHA-256 {actual}; the service "
                    f"reported {artifact.size} bytes with {artifact.sha256}",
                    expected=artifact.sha256, actual=actual)
            out.flush()
            partfile.finish(out, target)
        except BaseException as exc:
            # Interrupted (Ctrl-C, a cancelled asyncio task) or cut off for good (no connection,
            # a resume answered 429 or any 5xx past its retries: a busy store, a restart, an
            # object store's 500 InternalError): what arrived is kept under the .part name
            # (never the target's) for the next call to resume; before, such an answer deleted
            # it, gigabytes fetched again. Anything else (a checksum mismatch, a 4xx such as
            # the artifact gone, a full disk) leaves nothing; a file that changed on the service
            # is not one of these: its resume is answered whole (If-Range) and started again.
            # An interrupt that lands in the I/O the runner performs reaches this flow as
            # GeneratorExit (the runner passes on Exceptions only, and the flow is closed).
            interrupted = isinstance(exc, KeyboardInterrupt | asyncio.CancelledError
                                     | GeneratorExit) or is_outage(exc) or _server_error(exc)
            if not (interrupted and _held_any(out)):
                partfile.part_path(target).unlink(missing_ok=True)  # still held: ours
            named = _named_write_error(exc, target)
            if named is not None:
                raise named from exc
            raise
        finally:
            # Flushed above on success; on a failed write (a full disk) what is left in the
            # buffer must not replace the error being raised.
            with contextlib.suppress(OSError):
                out.close()
        return target

    def _receive(self, job_id: str, name: str, artifact: Artifact, out: IO[bytes], digest: Any,
                 received: int, failures: int, progress: ProgressCallback | None,
                 resume_attempts: int) -> Flow[tuple[int, int, Any]]:
        """Fetch the artifact's bytes from ``received`` on into ``out`` and ``digest`` (resuming
        with Range after a dropped connection, up to ``resume_attempts`` times in a row without
        a new byte): ``(received, failures, digest)``, the digest a new one when the file came
        again whole."""
        while True:
            before = received
            # identity: the bytes on the wire are the file's, so a Range can resume it.
            headers = {"Accept-Encoding": "identity"}
            if received:
                headers["Range"] = f"bytes={received}-"
                headers["If-Range"] = f'"{artifact.sha256}"'
            response = yield from self.open_stream(artifact.url, headers=headers,
                                                   follow_redirects=True)
            try:
                if received and response.status_code != 206:
                    # The range was not honoured: the whole file comes again.
                    yield Blocking(functools.partial(_restart, out))
                    digest, received = hashlib.sha256(), 0
                # Chunks as they arrive (not re-chunked), so that what was received before a
                # dropped connection is kept; each written (and hashed) off the async client's
                # event loop.
                chunks = yield Chunks(response)
                while (chunk := (yield Next(chunks))) is not END:
                    yield Blocking(functools.partial(_write_hashed, out, digest, chunk))
                    received += len(chunk)
                    if progress is not None:
                        progress(received, artifact.size)
                yield Close(response)
                return received, failures, digest
            except httpx.TransportError as exc:
                if received >= artifact.size:
                    return received, failures, digest  # everything arrived; the checks decide
                # Counted in a row: a connection that brought bytes before it dropped starts the
                # count again. Before, every drop counted, so a large file through a link (or a
                # proxy) that cuts long connections failed after resume_attempts drops, each of
                # them resumed fine.
                failures = failures + 1 if received == before else 1
                if failures > resume_attempts:
                    raise RiftConnectionError(
                        f"downloading {name} of job {job_id} failed {failures} times in a row "
                        f"(last: {exc!r}) after {received} bytes; {received} bytes are kept "
                        "in its .part file, which the next download resumes") from exc
            yield Close(response)
            yield Sleep(self.retry.backoff(failures - 1))

    def download_report(self, job_id: str, path: str | os.PathLike[str]) -> Flow[Path]:
        # The folder is checked before the request, and the page written next to the target then
        # renamed: a failed write never leaves half a page under the caller's name.
        _seg("job_id", job_id)
        target = save_target(path, f"{job_id}.html")
        return self._download_report(job_id, target)

    def _download_report(self, job_id: str, target: Path) -> Flow[Path]:
        response = yield from self.request("GET", f"/v1/jobs/{_seg('job_id', job_id)}/report",
                                           idempotent=True, headers={"Accept": "text/html"})
        partial = target.with_name(target.name + ".part")
        try:
            partial.write_bytes(response.content)
            partial.replace(target)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            named = _named_write_error(exc, target)
            if named is not None:
                raise named from exc
            raise
        return target

    # ------------------------------------------------------------------------------ webhooks

    def create_webhook(self, url: str, events: Sequence[str] | None, description: str | None,
                       idempotency_key: str | None) -> Flow[CreatedWebhook]:
        body: dict[str, Any] = {"url": url}
        if events is not None:
            body["events"] = _string_list("events", events, "event types")
        if description is not None:
            body["description"] = description
        return self._create_webhook(body, _idempotency_key(idempotency_key))

    def _create_webhook(self, body: dict[str, Any], key: str) -> Flow[CreatedWebhook]:
        response = yield from self.request("POST", "/v1/webhooks", idempotent=True, json=body,
                                           headers={"Idempotency-Key": key})
        return self._parse(response, CreatedWebhook)

    def list_webhooks(self) -> Flow[list[Webhook]]:
        return self._list_webhooks()

    def _list_webhooks(self) -> Flow[list[Webhook]]:
        # The service pages them newest first; the clients promise oldest first.
        items = yield from self._every_page_items("/v1/webhooks", Webhook)
        return sorted(items, key=lambda item: (item.created_at, item.id))

    def get_webhook(self, webhook_id: str) -> Flow[Webhook]:
        return self._get(f"/v1/webhooks/{_seg('webhook_id', webhook_id)}", Webhook)

    def delete_webhook(self, webhook_id: str, if_match: str | None = None) -> Flow[None]:
        return self._delete(f"/v1/webhooks/{_seg('webhook_id', webhook_id)}", if_match)

    def webhook_deliveries(self, webhook_id: str, limit: int) -> Flow[list[WebhookDelivery]]:
        """The newest ``limit`` messages, following ``next_cursor`` while more are wanted (a
        page holds at most 100; a service from before the log was paged sends no cursor)."""
        if limit < 1:
            raise RiftUsageError(f"limit must be at least 1, got {limit}", field="limit")
        path = f"/v1/webhooks/{_seg('webhook_id', webhook_id)}/deliveries"
        items: list[WebhookDelivery] = []
        cursor: str | None = None
        while len(items) < limit:
            response = yield from self.request(
                "GET", path, idempotent=True,
                params=_page_params(min(_MAX_PAGE_SIZE, limit - len(items)), cursor))
            items.extend(self._parse_items(response, WebhookDelivery))
            cursor = response.json().get("next_cursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return items[:limit]

    # --------------------------------------------------------------------------------- admin
    # The /v1/admin routes: an operator's key (the admin scope) manages every project.

    def _project_path(self, name: str) -> str:
        return f"/v1/admin/projects/{_seg('name', name)}"

    def _key_path(self, project: str, key_id: str) -> str:
        return f"{self._project_path(project)}/keys/{_seg('key_id', key_id)}"

    def list_projects(self) -> Flow[list[Project]]:
        return self._get_items("/v1/admin/projects", Project)

    def create_project(self, name: str,
                       limits: Mapping[str, int | None] | None) -> Flow[Project]:
        body = {"name": name, **_project_limits(limits)}
        return self._create_project(body)

    def _create_project(self, body: dict[str, Any]) -> Flow[Project]:
        # Not retried once sent: a second POST after a lost answer would be 409 project_exists
        # for the project the first one made.
        response = yield from self.request("POST", "/v1/admin/projects", idempotent=False,
                                           json=body)
        return self._parse(response, Project)

    def get_project(self, name: str) -> Flow[Project]:
        return self._get(self._project_path(name), Project)

    def set_project_limits(self, name: str, limits: Mapping[str, int | None],
                           if_match: str | None) -> Flow[Project]:
        path, body = self._project_path(name), _project_limits(limits)
        return self._set_project_limits(path, body, _if_match_headers(if_match))

    def _set_project_limits(self, path: str, body: dict[str, Any],
                            headers: dict[str, str] | None) -> Flow[Project]:
        # Idempotent: the same values set twice are set once.
        response = yield from self.request("PATCH", path, idempotent=True, json=body,
                                           headers=headers)
        return self._parse(response, Project)

    def delete_project(self, name: str, force: bool, if_match: str | None) -> Flow[None]:
        return self._delete(self._project_path(name), if_match,
                            params={"force": "true"} if force else None)

    def project_usage(self, name: str) -> Flow[Usage]:
        return self._get(f"{self._project_path(name)}/usage", Usage)

    def list_keys(self, project: str) -> Flow[list[ApiKey]]:
        return self._get_items(f"{self._project_path(project)}/keys", ApiKey)

    def create_key(self, project: str, scopes: Sequence[str] | None,
                   name: str | None) -> Flow[CreatedApiKey]:
        body: dict[str, Any] = {}
        if scopes is not None:
            body["scopes"] = _string_list("scopes", scopes, "scopes")
        if name is not None:
            body["name"] = name
        return self._create_key(f"{self._project_path(project)}/keys", body)

    def _create_key(self, path: str, body: dict[str, Any]) -> Flow[CreatedApiKey]:
        # Not retried once sent: a retry after a lost answer would make a second key.
        response = yield from self.request("POST", path, idempotent=False, json=body)
        return self._parse(response, CreatedApiKey)

    def get_key(self, project: str, key_id: str) -> Flow[ApiKey]:
        return self._get(self._key_path(project, key_id), ApiKey)

    def revoke_key(self, project: str, key_id: str, if_match: str | None) -> Flow[ApiKey]:
        return self._revoke_key(self._key_path(project, key_id), if_match)

    def _revoke_key(self, path: str, if_match: str | None) -> Flow[ApiKey]:
        # Idempotent: revoking twice revokes once (the answer is the key's record).
        response = yield from self.request("DELETE", path, idempotent=True,
                                           headers=_if_match_headers(if_match))
        return self._parse(response, ApiKey)

    def list_workers(self) -> Flow[list[Worker]]:
        return self._get_items("/v1/admin/workers", Worker)
