"""``RiftClient``: the RiFT service's REST API as Python calls.

    from rift_client import RiftClient

    with RiftClient("http://127.0.0.1:8000", api_key="rift_...") as rift:
        checkpoint = rift.upload_checkpoint("model.safetensors")
        job = rift.create_job({"config": config}, checkpoint_id=checkpoint.id)
        for event in rift.stream_events(job.id):
            print(event.kind, event.payload)
        job = rift.wait(job.id, timeout=3600)
        rift.download(job.id, "tuned.safetensors", "out/")

The base URL defaults to ``RIFT_API_URL`` and the key to ``RIFT_API_KEY``; the key is sent as
``Authorization: Bearer <key>`` on every request (and dropped by httpx when a download is
redirected to another host, such as a presigned S3 URL). Error answers raise
:class:`~rift_client.errors.RiftAPIError` subclasses; 429 and 503 are retried first (see
:mod:`rift_client.retry`). Uploads wait up to ``upload_timeout`` (15 min) for their answer, which
comes once the service has checked the file; every other read, up to ``timeout``. Webhooks are
registered here (``create_webhook``) and checked by their receiver with
:func:`rift_client.webhooks.verify_webhook`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rift_client import __version__
from rift_client.arguments import finite_number, item_limit, save_target, wait_times
from rift_client.arguments import path_segment as _seg
from rift_client.errors import (
    ChecksumMismatchError,
    NotFoundError,
    RateLimitError,
    RiftConnectionError,
    RiftUsageError,
    ServiceUnavailableError,
    UnexpectedResponseError,
    WaitTimeoutError,
    api_error_from_response,
)
from rift_client.models import (
    Artifact,
    Checkpoint,
    CheckpointPage,
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
    MRCTable,
    Usage,
    Webhook,
    WebhookDelivery,
)
from rift_client.retry import RetryPolicy, sent_nothing
from rift_client.sse import SSEDecoder

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
#: Bytes read from a file (or the network) at a time: large enough for throughput, small enough
#: for progress bars that move.
CHUNK_BYTES = 1 << 20
#: The service sends an SSE keep-alive every 15 s, so a stream silent for this long is dead.
STREAM_READ_TIMEOUT_S = 60.0
#: Wait before reconnecting an event stream when the server did not say (its 'retry:' field).
DEFAULT_RECONNECT_DELAY_S = 2.0
#: :meth:`RiftClient.wait` gives up on a stream silent this long (past one 15 s keep-alive: a
#: proxy holds it back) and polls instead.
WAIT_STREAM_READ_TIMEOUT_S = 20.0
#: Events per page when looking for a job's latest event.
EVENTS_PAGE_LIMIT = 500
#: Seconds an upload may wait for the service's answer once the file is sent. The service
#: answers only after checking the file: up to 120 s waiting for a validation slot
#: (VALIDATION_QUEUE_TIMEOUT_SECONDS) plus up to 600 s of validation
#: (VALIDATION_TIMEOUT_SECONDS), then storing it. The general 60 s read timeout cut that wait
#: short, so a big file was sent again, up to 4 times, and then failed.
DEFAULT_UPLOAD_TIMEOUT_S = 900.0

#: ``progress(done_bytes, total_bytes)`` called as an upload or a download advances.
ProgressCallback = Callable[[int, int], None]

#: What the API key and an Idempotency-Key may hold: visible ASCII, as the service's keys and
#: its Idempotency-Key rule do. Anything else cannot go into a header as given: httpx refuses
#: a non-ASCII character outright, and a space or the newline a key file ends with is an
#: illegal header value, which used to surface as a connection error after every retry.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")

Model = TypeVar("Model", bound=BaseModel)
Upload = TypeVar("Upload", Checkpoint, Dataset)
Item = TypeVar("Item", covariant=True)


class _Page(Protocol[Item]):
    """A page of a cursor-paged list (jobs, checkpoints, datasets)."""

    @property
    def items(self) -> Sequence[Item]: ...

    @property
    def next_cursor(self) -> str | None: ...


def _every_item(fetch: Callable[[str | None], _Page[Item]], limit: int | None) -> Iterator[Item]:
    """The items of ``fetch(cursor)``'s pages, the first fetched with no cursor and each next
    one with the previous page's ``next_cursor``, as they are iterated; at most ``limit``."""
    item_limit(limit)
    cursor: str | None = None
    count = 0
    while True:
        page = fetch(cursor)
        for item in page.items:
            if limit is not None and count >= limit:
                return
            count += 1
            yield item
        if not page.next_cursor:
            return
        cursor = page.next_cursor


def _page_params(page_size: int, cursor: str | None, **filters: Any) -> dict[str, Any]:
    """The query of one page: ``limit``, ``cursor`` when given, and the filters that are set."""
    params: dict[str, Any] = {"limit": page_size}
    params.update((name, value) for name, value in filters.items() if value)
    if cursor:
        params["cursor"] = cursor
    return params


def _header_token(what: str, value: str, *, secret: bool = False) -> str:
    """``value`` if it can be sent as a header value as it is; else :class:`RiftUsageError`
    naming ``what`` and the first character at fault (a secret is never quoted)."""
    if _HEADER_TOKEN.fullmatch(value):
        return value
    if not value:
        raise RiftUsageError(f"{what} is empty")
    position, bad = next((i, ch) for i, ch in enumerate(value) if not _HEADER_TOKEN.match(ch))
    quoted = "" if secret else f" {value[:100]!r}"
    raise RiftUsageError(
        f"{what}{quoted} holds {bad!r} at position {position}; it may hold visible ASCII "
        "characters only (no spaces, line breaks or non-ASCII letters)")


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
    return _header_token("the Idempotency-Key", given) if given else \
        f"rift-client-{uuid.uuid4().hex}"


def _checked_base_url(raw: str) -> str:
    """The service's base URL without a trailing slash, or :class:`RiftUsageError` when it is
    not ``http(s)://host[:port][/prefix]`` (httpx would raise its own ``InvalidURL`` when the
    client is made, or fail every request as a connection error after all the retries)."""
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise RiftUsageError(f"the base URL {raw[:200]!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise RiftUsageError(f"the base URL {raw[:200]!r} must look like "
                             "http(s)://host[:port][/prefix]")
    return raw.rstrip("/")


class _HashingFileBody:
    """A file as a request body read in chunks: hashes what it sends and reports progress. Each
    iteration starts from the beginning (a retried request sends the file again) and sends at most
    the ``size`` bytes announced in Content-Length."""

    def __init__(self, path: Path, size: int, progress: ProgressCallback | None) -> None:
        self.path = path
        self.size = size
        self.progress = progress
        self.sha256 = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        self.sha256 = hashlib.sha256()
        sent = 0
        with self.path.open("rb") as handle:
            while sent < self.size:
                chunk = handle.read(min(CHUNK_BYTES, self.size - sent))
                if not chunk:
                    raise RiftConnectionError(f"{self.path} shrank while it was being uploaded")
                self.sha256.update(chunk)
                sent += len(chunk)
                yield chunk
                if self.progress is not None:
                    self.progress(sent, self.size)


class RiftClient:
    """A client of one RiFT service.

    Args:
        base_url: The service's URL (default: ``RIFT_API_URL``, else ``http://127.0.0.1:8000``).
        api_key: The API key (default: ``RIFT_API_KEY``); sent as a Bearer token when set.
        timeout: Seconds allowed to connect, and between two reads or writes of a request.
        upload_timeout: Seconds an upload may wait for its answer after the file is sent (the
            service checks the file before it answers); default ``DEFAULT_UPLOAD_TIMEOUT_S``
            (15 min). Connecting and sending use ``timeout``.
        retry: When and how long to retry (default :class:`RetryPolicy()`: 4 retries).
        transport: An httpx transport (for tests or custom TLS); default: httpx's own.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _checked_base_url(
            base_url or os.environ.get("RIFT_API_URL") or DEFAULT_BASE_URL)
        key = api_key if api_key is not None else os.environ.get("RIFT_API_KEY")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        headers = {"User-Agent": f"rift-client/{__version__}", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {_header_token('the API key', key, secret=True)}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                  transport=transport)

    # ----------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RiftClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, *, idempotent: bool,
                 **kwargs: Any) -> httpx.Response:
        """Send a request, retrying as :mod:`rift_client.retry` says; an error answer raises."""
        retry = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if (idempotent or sent_nothing(exc)) and retry < self.retry.max_retries:
                    time.sleep(self.retry.backoff(retry))
                    retry += 1
                    continue
                raise self._connection_error(method, path, exc) from exc
            except httpx.HTTPError as exc:  # an answer httpx cannot decode, say
                raise self._unreadable(method, path, exc) from exc
            if response.status_code < 400:
                return response
            delay = self.retry.delay_for(response, retry)
            if delay is None:
                raise api_error_from_response(response)
            time.sleep(delay)
            retry += 1

    @contextlib.contextmanager
    def _stream(self, path: str, *, headers: Mapping[str, str] | None = None,
                params: Mapping[str, Any] | None = None, follow_redirects: bool = False,
                read_timeout: float | None = None,
                retry_answers: bool = True) -> Iterator[httpx.Response]:
        """A streamed GET (retried like :meth:`_request` until the answer's headers arrive;
        with ``retry_answers=False`` a 429 or 503 is raised at once instead of waited out);
        the body is left to the caller, the response closed afterwards."""
        timeout = httpx.Timeout(self.timeout, read=read_timeout or self.timeout)
        retry = 0
        while True:
            request = self._http.build_request("GET", path, headers=headers, params=params,
                                               timeout=timeout)
            try:
                response = self._http.send(request, stream=True, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                if retry < self.retry.max_retries:
                    time.sleep(self.retry.backoff(retry))
                    retry += 1
                    continue
                raise self._connection_error("GET", path, exc) from exc
            except httpx.HTTPError as exc:
                raise self._unreadable("GET", path, exc) from exc
            if response.status_code >= 400:
                response.read()
                response.close()
                delay = self.retry.delay_for(response, retry) if retry_answers else None
                if delay is None:
                    raise api_error_from_response(response)
                time.sleep(delay)
                retry += 1
                continue
            try:
                yield response
            finally:
                response.close()
            return

    def _connection_error(self, method: str, path: str,
                          exc: httpx.TransportError) -> RiftConnectionError:
        """The error for a request that got no answer. One that could not even connect says
        where the URL came from (a wrong or unset RIFT_API_URL is the usual cause)."""
        elsewhere = path.startswith(("http://", "https://"))  # a presigned store URL
        text = f"{method} {path if elsewhere else self.base_url + path}: {exc!r}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and not elsewhere:
            text += (f"; no service answers at {self.base_url}: check the URL (riftctl --url, "
                     "RIFT_API_URL or the config file's api_url) and that the service is running")
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

    def _every_page_items(self, path: str, model: type[Model]) -> list[Model]:
        """Every item of a paged list, following ``next_cursor`` from page to page (a service
        from before these lists were paged answers one page without it)."""
        items: list[Model] = []
        cursor: str | None = None
        while True:
            response = self._request("GET", path, idempotent=True,
                                     params={"cursor": cursor} if cursor else None)
            items.extend(self._parse_items(response, model))
            body = response.json()
            cursor = body.get("next_cursor")
            if not isinstance(cursor, str) or not cursor:
                return items

    def _get(self, path: str, model: type[Model], **params: Any) -> Model:
        return self._parse(self._request("GET", path, idempotent=True, params=params or None),
                           model)

    # ------------------------------------------------------------------------------- service

    def ready(self) -> bool:
        """Whether the service answers ``/readyz`` with 200 (database, broker and store up)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_ready(self, timeout: float = 60.0, *, poll_interval: float = 0.5) -> None:
        """Block until :meth:`ready`; raises :class:`RiftConnectionError` after ``timeout`` s."""
        wait_times(timeout, poll_interval)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                raise RiftConnectionError(f"{self.base_url} was not ready within {timeout:g} s")
            time.sleep(poll_interval)

    # --------------------------------------------------------------------------------- files

    def _upload(self, route: str, model: type[Upload], path: str | os.PathLike[str],
                filename: str | None, progress: ProgressCallback | None,
                idempotency_key: str | None) -> Upload:
        file = Path(path)
        size = file.stat().st_size
        body = _HashingFileBody(file, size, progress)
        # Under a key a retry after a lost answer returns the stored file instead of storing it
        # twice, so the upload is retried like a read (the body is sent again from the start,
        # under the same key: drawn once, here, not per attempt).
        key = _idempotency_key(idempotency_key)
        response = self._request(
            "POST", route, idempotent=True, content=body,
            params={"filename": filename or file.name},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size),
                     "Idempotency-Key": key},
            timeout=httpx.Timeout(self.timeout, read=self.upload_timeout))
        record = self._parse(response, model)
        local = body.sha256.hexdigest()
        if record.sha256 != local:
            raise ChecksumMismatchError(
                f"the service stored {file.name} with SHA-256 {record.sha256}, but the file "
                f"sent has {local}", expected=local, actual=str(record.sha256))
        return record

    def upload_checkpoint(self, path: str | os.PathLike[str], *, filename: str | None = None,
                          progress: ProgressCallback | None = None,
                          idempotency_key: str | None = None) -> Checkpoint:
        """Upload a safetensors or PyTorch checkpoint, streamed from disk. The SHA-256 computed
        while sending is compared with the service's (:class:`ChecksumMismatchError` if they
        differ). ``progress(sent_bytes, total_bytes)`` is called after each chunk.

        The request carries an Idempotency-Key (a random one unless given), so a retry after a
        lost answer returns the checkpoint stored the first time; pass your own key to make a
        script's upload safely re-runnable (the same file again: the same checkpoint)."""
        return self._upload("/v1/checkpoints", Checkpoint, path, filename, progress,
                            idempotency_key)

    def list_checkpoints_page(self, *, format: str | None = None, page_size: int = 20,
                              cursor: str | None = None) -> CheckpointPage:
        """One page of the project's checkpoints, newest first (``format``: ``safetensors`` or
        ``torch`` keeps one); pass its ``next_cursor`` as ``cursor`` for the next."""
        return self._get("/v1/checkpoints", CheckpointPage,
                         **_page_params(page_size, cursor, format=format))

    def list_checkpoints(self, *, format: str | None = None, page_size: int = 20,
                         limit: int | None = None) -> Iterator[Checkpoint]:
        """All the project's checkpoints (of one ``format`` when given), newest first, fetched
        page by page as iterated (at most ``limit`` of them when given)."""
        return _every_item(lambda cursor: self.list_checkpoints_page(
            format=format, page_size=page_size, cursor=cursor), limit)

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        return self._get(f"/v1/checkpoints/{_seg('checkpoint_id', checkpoint_id)}", Checkpoint)

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self._request("DELETE", f"/v1/checkpoints/{_seg('checkpoint_id', checkpoint_id)}", idempotent=True)

    def upload_dataset(self, path: str | os.PathLike[str], *, filename: str | None = None,
                       progress: ProgressCallback | None = None,
                       idempotency_key: str | None = None) -> Dataset:
        """Upload an .npz or an ImageFolder tar, like :meth:`upload_checkpoint`."""
        return self._upload("/v1/datasets", Dataset, path, filename, progress, idempotency_key)

    def list_datasets_page(self, *, kind: str | None = None, page_size: int = 20,
                           cursor: str | None = None) -> DatasetPage:
        """One page of the project's uploaded datasets, newest first (``kind``: ``npz`` or
        ``imagefolder`` keeps one; built-in datasets are not uploads and are not listed); pass
        its ``next_cursor`` as ``cursor`` for the next."""
        return self._get("/v1/datasets", DatasetPage,
                         **_page_params(page_size, cursor, kind=kind))

    def list_datasets(self, *, kind: str | None = None, page_size: int = 20,
                      limit: int | None = None) -> Iterator[Dataset]:
        """All the project's uploaded datasets (of one ``kind`` when given), newest first,
        fetched page by page as iterated (at most ``limit`` of them when given)."""
        return _every_item(lambda cursor: self.list_datasets_page(
            kind=kind, page_size=page_size, cursor=cursor), limit)

    def get_dataset(self, dataset_id: str) -> Dataset:
        """An uploaded dataset, or a built-in one by name (``cifar10``, ``digits``, ...)."""
        return self._get(f"/v1/datasets/{_seg('dataset_id', dataset_id)}", Dataset)

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{_seg('dataset_id', dataset_id)}", idempotent=True)

    # --------------------------------------------------------------------------------- usage

    def usage(self) -> Usage:
        """The project's stored bytes, active jobs and limits, counted as the service's quota
        checks count them (any key with the read scope)."""
        return self._get("/v1/usage", Usage)

    # ---------------------------------------------------------------------------------- jobs

    def create_job(self, spec: JobSpec | Mapping[str, Any], *, checkpoint_id: str,
                   idempotency_key: str | None = None) -> Job:
        """Start a job on an uploaded checkpoint. ``spec`` is a :class:`JobSpec` or its dict
        (``{"config": {...}, "dataset_id": ..., "labels": {...}, "time_limit_seconds": ...}``).

        The request always carries an Idempotency-Key (a random one unless given), so that a
        retry after a lost answer returns the job created the first time instead of a second
        job; pass your own key to make a whole script safely re-runnable.
        """
        try:
            job_spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        except ValidationError as exc:
            raise RiftUsageError(_job_spec_error(exc, spec)) from exc
        body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "config": job_spec.config,
                                "labels": job_spec.labels}
        if job_spec.dataset_id is not None:
            body["dataset_id"] = job_spec.dataset_id
        if job_spec.time_limit_seconds is not None:
            body["time_limit_seconds"] = job_spec.time_limit_seconds
        key = _idempotency_key(idempotency_key)
        response = self._request("POST", "/v1/jobs", idempotent=True, json=body,
                                 headers={"Idempotency-Key": key})
        return self._parse(response, Job)

    def get_job(self, job_id: str) -> Job:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}", Job)

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its records and artifacts (a queued or running one is a
        :class:`ConflictError`, code ``job_active``: cancel it first). A checkpoint or dataset
        used by finished jobs can be deleted once those jobs are."""
        self._request("DELETE", f"/v1/jobs/{_seg('job_id', job_id)}", idempotent=True)

    def list_jobs_page(self, *, status: str | Sequence[str] | None = None,
                       labels: Mapping[str, str] | None = None, page_size: int = 20,
                       cursor: str | None = None) -> JobPage:
        """One page of jobs, newest first; pass its ``next_cursor`` as ``cursor`` for the next."""
        return self._get("/v1/jobs", JobPage, **_page_params(
            page_size, cursor,
            status=[status] if isinstance(status, str) else list(status or []),
            label=[f"{k}:{v}" for k, v in (labels or {}).items()]))

    def list_jobs(self, *, status: str | Sequence[str] | None = None,
                  labels: Mapping[str, str] | None = None, page_size: int = 20,
                  limit: int | None = None) -> Iterator[Job]:
        """All jobs matching the filters, newest first, fetched page by page as iterated
        (at most ``limit`` of them when given)."""
        return _every_item(lambda cursor: self.list_jobs_page(
            status=status, labels=labels, page_size=page_size, cursor=cursor), limit)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next batch; a finished one
        raises :class:`ConflictError`."""
        response = self._request("POST", f"/v1/jobs/{_seg('job_id', job_id)}/cancel", idempotent=False)
        return self._parse(response, Job)

    def wait(self, job_id: str, timeout: float | None = None, *, poll_interval: float = 1.0,
             on_update: Callable[[Job], None] | None = None, follow_events: bool = True) -> Job:
        """Wait until the job has finished and return it (whatever its final status).

        With ``follow_events`` (the default) it follows the job's event stream, so the end is
        seen as it happens instead of up to ``poll_interval`` s later, and reads the job again
        at the end and, while events arrive, at most every ``poll_interval`` s; a stream that
        cannot be followed (dropped, or held back by a buffering proxy for
        ``WAIT_STREAM_READ_TIMEOUT_S``) hands over to polling every ``poll_interval`` s, which is
        all ``follow_events=False`` does. ``on_update(job)`` sees every state read. Raises
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first (None: wait as long as it
        takes).
        """
        wait_times(timeout, poll_interval)
        deadline = None if timeout is None else time.monotonic() + timeout

        def read() -> Job:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            return job

        job = read()
        if job.finished:
            return job
        if follow_events:
            last_read = time.monotonic()
            # Only new events matter here: start after the latest one instead of replaying all.
            # A stream that drops, or that is refused (the key's stream limit, a busy
            # service): poll instead.
            with contextlib.suppress(RiftConnectionError, RateLimitError,
                                     ServiceUnavailableError):
                for _ in self._events(job_id, after=self._latest_event_id(job_id),
                                      max_reconnects=0, read_timeout=WAIT_STREAM_READ_TIMEOUT_S,
                                      timeout=None if deadline is None
                                      else max(deadline - time.monotonic(), 0.0),
                                      retry_answers=False):
                    if time.monotonic() - last_read >= poll_interval:
                        job, last_read = read(), time.monotonic()
                        if job.finished:
                            return job
                # The stream ended: the job has finished, or the time is up.
                job = read()
                if job.finished:
                    return job
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(
                        f"job {job_id} was still {job.status} after {timeout:g} s",
                        job_id=job_id, last_status=job.status)
                time.sleep(min(poll_interval, left))
            else:
                time.sleep(poll_interval)
            job = read()
            if job.finished:
                return job

    def _latest_event_id(self, job_id: str) -> int:
        """The id of the job's latest event so far (0 when it has none), paging through them."""
        latest = 0
        while True:
            page = self.list_events(job_id, after=latest, limit=EVENTS_PAGE_LIMIT)
            if not page.items:
                return latest
            latest = page.items[-1].id
            if len(page.items) < EVENTS_PAGE_LIMIT:
                return latest

    # -------------------------------------------------------------------------------- events

    def list_events(self, job_id: str, *, after: int = 0, limit: int = 100) -> EventPage:
        """One page of the job's events with id > ``after``, oldest first."""
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/events", EventPage, after=after,
                         limit=limit)

    def stream_events(self, job_id: str, *, after: int = 0, max_reconnects: int = 5,
                      read_timeout: float = STREAM_READ_TIMEOUT_S,
                      timeout: float | None = None) -> Iterator[Event]:
        """The job's events as they happen (Server-Sent Events), from the first with id >
        ``after``, until the job has finished, or until ``timeout`` seconds have passed (None:
        no limit; the iteration then simply ends).

        A dropped connection (or one silent for ``read_timeout`` s) is reopened with
        ``Last-Event-ID`` set to the last event received, so no event is lost or repeated;
        after ``max_reconnects`` reopenings in a row that brought no new event,
        :class:`RiftConnectionError` is raised.
        """
        wait_times(timeout, read_timeout, interval_name="read_timeout")
        return self._events(job_id, after=after, max_reconnects=max_reconnects,
                            read_timeout=read_timeout, timeout=timeout, retry_answers=True)

    def _events(self, job_id: str, *, after: int, max_reconnects: int, read_timeout: float,
                timeout: float | None, retry_answers: bool) -> Iterator[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout

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
                with self._stream(path, headers=headers, params={"after": last},
                                  read_timeout=min(read_timeout, time_left()),
                                  retry_answers=retry_answers) as response:
                    decoder = SSEDecoder()
                    for line in response.iter_lines():
                        message = decoder.feed(line)
                        if decoder.retry_ms is not None:
                            delay = decoder.retry_ms / 1000
                        if time_left() <= 0:
                            return
                        if message is None:
                            continue
                        if message.event == "end":
                            return
                        try:
                            event = Event.model_validate_json(message.data)
                        except ValueError as exc:
                            raise self._unexpected(response, "Event", exc) from exc
                        if event.id <= last:
                            continue
                        last, failures = event.id, 0
                        yield event
            except httpx.TransportError as exc:
                if time_left() <= 0:
                    return
                problem = repr(exc)
            except httpx.HTTPError as exc:  # a stream httpx cannot decode
                raise self._unreadable("GET", path, exc) from exc
            failures += 1
            if failures > max_reconnects:
                raise RiftConnectionError(
                    f"the event stream of job {job_id} dropped {failures} times in a row without "
                    f"a new event (last: {problem}); last event id {last}")
            time.sleep(min(delay, max(time_left(), 0.0)))

    # ------------------------------------------------------------------------------- results

    def get_mrc(self, job_id: str) -> MRCTable:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/mrc", MRCTable)

    def get_curves(self, job_id: str) -> Curves:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/curves", Curves)

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        response = self._request("GET", f"/v1/jobs/{_seg('job_id', job_id)}/artifacts", idempotent=True)
        return self._parse_items(response, Artifact)

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """The record (size, SHA-256, URL) of one artifact. Absent: the service's own answer,
        :class:`NotFoundError` (``artifact_not_found``) once the job succeeded, else
        :class:`ConflictError` (``job_not_succeeded``, the job's status in ``details``)."""
        artifacts = self.list_artifacts(job_id)
        for artifact in artifacts:
            if artifact.name == name:
                return artifact
        # Ask for the file itself (one byte at most, never a redirect), so the error says why it
        # is missing, as the API words it: too early, a failed job, or no such name.
        self._request("GET", f"/v1/jobs/{_seg('job_id', job_id)}/artifacts/{_seg('name', name)}",
                      idempotent=True, params={"redirect": "false"},
                      headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        for artifact in self.list_artifacts(job_id):  # made in between the two looks
            if artifact.name == name:
                return artifact
        raise NotFoundError(
            f"job {job_id} has no artifact {name!r} (available: "
            f"{', '.join(a.name for a in artifacts) or 'none yet'})",
            status_code=404, code="artifact_not_found", field="name", method="GET",
            path=f"/v1/jobs/{job_id}/artifacts")

    # ----------------------------------------------------------------------- materializations

    def materialize(self, job_id: str, alpha: float, *, evaluate: bool = False) -> Materialization:
        """Ask for the weights θ_α = (1 − α) θ_AT + α θ_FT of a succeeded job (α in [0, 1]; 0 is
        θ_AT, 1 is θ_FT, bit for bit), made by a worker as the artifact ``tuned@<α>.safetensors``;
        with ``evaluate``, also their clean and robust accuracy on the test split.

        Returns the request's record at once (``queued`` when new; the existing record when that
        α was asked for before): follow it with :meth:`wait_materialization`, then
        :meth:`download` its ``artifact``. A job that has not succeeded raises
        :class:`ConflictError` (code ``job_not_succeeded``). Asking twice for one α makes it
        once, so the request is retried like a read.
        """
        response = self._request("POST", f"/v1/jobs/{_seg('job_id', job_id)}/materialize",
                                 idempotent=True, json={"alpha": finite_number("alpha", alpha),
                                                        "evaluate": evaluate})
        return self._parse(response, Materialization)

    def get_materialization(self, job_id: str, materialization_id: str) -> Materialization:
        return self._get(f"/v1/jobs/{_seg('job_id', job_id)}/materializations/"
                         f"{_seg('materialization_id', materialization_id)}", Materialization)

    def list_materializations(self, job_id: str) -> list[Materialization]:
        """The job's materializations, in α order (every page of the service's list)."""
        items = self._every_page_items(f"/v1/jobs/{_seg('job_id', job_id)}/materializations",
                                       Materialization)
        return sorted(items, key=lambda item: item.alpha)

    def wait_materialization(self, job_id: str, materialization_id: str,
                             timeout: float | None = None, *, poll_interval: float = 1.0,
                             on_update: Callable[[Materialization], None] | None = None
                             ) -> Materialization:
        """Poll a materialization until it has succeeded or failed and return it (whatever its
        final status). Raises :class:`WaitTimeoutError` (with ``materialization_id`` set) when
        ``timeout`` seconds pass first (None: wait as long as it takes)."""
        wait_times(timeout, poll_interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get_materialization(job_id, materialization_id)
            if on_update is not None:
                on_update(record)
            if record.finished:
                return record
            if deadline is None:
                time.sleep(poll_interval)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(
                    f"materialization {materialization_id} (α = {record.alpha:g}) of job {job_id} "
                    f"was still {record.status} after {timeout:g} s", job_id=job_id,
                    last_status=record.status, materialization_id=materialization_id)
            time.sleep(min(poll_interval, left))

    def download(self, job_id: str, name: str, path: str | os.PathLike[str], *,
                 progress: ProgressCallback | None = None, resume_attempts: int = 3) -> Path:
        """Download artifact ``name`` of the job to ``path`` (a file, or an existing folder to
        put it in); returns the file's path.

        The file is written as ``<path>.part`` and renamed only once its size and SHA-256 match
        the service's record (:class:`ChecksumMismatchError` otherwise, the partial file
        removed). A connection lost mid-way is resumed with a Range request, at most
        ``resume_attempts`` times. Presigned-URL redirects (S3) are followed.
        """
        # Checked first: else, after the request, "No such file or directory: '<path>.part'",
        # a file the caller never named.
        _seg("name", name)  # an empty name is refused before the folder is looked at
        target = save_target(Path(path), name)
        artifact = self.get_artifact(job_id, name)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        received = 0
        failures = 0
        try:
            with partial.open("wb") as out:
                while True:
                    # identity: the bytes on the wire are the file's, so a Range can resume it.
                    headers = {"Accept-Encoding": "identity"}
                    if received:
                        headers["Range"] = f"bytes={received}-"
                        headers["If-Range"] = f'"{artifact.sha256}"'
                    try:
                        with self._stream(artifact.url, headers=headers,
                                          follow_redirects=True) as response:
                            if received and response.status_code != 206:
                                # The range was not honoured: the whole file comes again.
                                out.seek(0)
                                out.truncate()
                                digest, received = hashlib.sha256(), 0
                            # Chunks as they arrive (not re-chunked), so that what was
                            # received before a dropped connection is kept.
                            for chunk in response.iter_bytes():
                                out.write(chunk)
                                digest.update(chunk)
                                received += len(chunk)
                                if progress is not None:
                                    progress(received, artifact.size)
                        break
                    except httpx.TransportError as exc:
                        if received >= artifact.size:
                            break  # everything arrived; the checks below decide
                        failures += 1
                        if failures > resume_attempts:
                            raise RiftConnectionError(
                                f"downloading {name} of job {job_id} failed {failures} times "
                                f"(last: {exc!r}) after {received} bytes") from exc
                        time.sleep(self.retry.backoff(failures - 1))
            actual = digest.hexdigest()
            if received != artifact.size or actual != artifact.sha256:
                raise ChecksumMismatchError(
                    f"{name}: received {received} bytes with SHA-256 {actual}; the service "
                    f"reported {artifact.size} bytes with {artifact.sha256}",
                    expected=artifact.sha256, actual=actual)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    def download_report(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Save the job's HTML report page (``GET /v1/jobs/{id}/report``) to ``path`` (a file, or
        an existing folder to put ``<job id>.html`` in); returns the file's path."""
        # The folder is checked before the request, and the page written next to the target then
        # renamed: a failed write never leaves half a page under the caller's name.
        _seg("job_id", job_id)
        target = save_target(Path(path), f"{job_id}.html")
        response = self._request("GET", f"/v1/jobs/{_seg('job_id', job_id)}/report",
                                 idempotent=True, headers={"Accept": "text/html"})
        partial = target.with_name(target.name + ".part")
        try:
            partial.write_bytes(response.content)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target

    # ------------------------------------------------------------------------------ webhooks

    def create_webhook(self, url: str, *, events: Sequence[str] | None = None,
                       description: str | None = None,
                       idempotency_key: str | None = None) -> CreatedWebhook:
        """Register an endpoint that the service POSTs the project's job ends to, signed
        (check them with :func:`rift_client.verify_webhook`).

        ``events``: of ``job.succeeded``, ``job.failed``, ``job.cancelled`` (None: all three).
        The answer carries the signing ``secret``, shown this once: keep it. The request always
        carries an Idempotency-Key (a random one unless given), so a retry after a lost answer
        returns the endpoint registered the first time, secret included, instead of a second
        one; the same key with another registration is a :class:`ConflictError`
        (``idempotency_conflict``). A URL that is not http(s) or resolves to a private address
        is an :class:`UnprocessableEntityError` (``webhook_target_forbidden`` on ``url``);
        the project's WEBHOOK_MAX_ENDPOINTS reached, a :class:`ConflictError`
        (``webhook_limit_reached``); a URL the project has an endpoint for already, a
        :class:`ConflictError` (``webhook_url_registered``, its id in ``details``).
        """
        body: dict[str, Any] = {"url": url}
        if events is not None:
            if isinstance(events, str):  # a lone "job.failed" would be sent as its letters
                raise RiftUsageError(f"events must be a list of event types, not the string "
                                     f"{events[:100]!r}")
            body["events"] = list(events)
        if description is not None:
            body["description"] = description
        response = self._request("POST", "/v1/webhooks", idempotent=True, json=body,
                                 headers={"Idempotency-Key": _idempotency_key(idempotency_key)})
        return self._parse(response, CreatedWebhook)

    def list_webhooks(self) -> list[Webhook]:
        """The project's webhooks, oldest first (without their secrets; every page of the
        service's list)."""
        items = self._every_page_items("/v1/webhooks", Webhook)
        return sorted(items, key=lambda item: (item.created_at, item.id))

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._get(f"/v1/webhooks/{_seg('webhook_id', webhook_id)}", Webhook)

    def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook with its delivery log; messages not yet sent are dropped."""
        self._request("DELETE", f"/v1/webhooks/{_seg('webhook_id', webhook_id)}", idempotent=True)

    def webhook_deliveries(self, webhook_id: str, *, limit: int = 20) -> list[WebhookDelivery]:
        """The webhook's newest ``limit`` messages (1 to 100: the API pages no further), newest
        first, each with its attempts (status code, error, duration)."""
        response = self._request("GET", f"/v1/webhooks/{_seg('webhook_id', webhook_id)}/deliveries",
                                 idempotent=True, params={"limit": limit})
        return self._parse_items(response, WebhookDelivery)
