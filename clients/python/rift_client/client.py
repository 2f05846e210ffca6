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
:class:`~rift_client.errors.RiftAPIError` subclasses; 429 and 503 are retried first, and a
proxy's 502 and 504 for idempotent calls (see :mod:`rift_client.retry`). Uploads wait up to
``upload_timeout`` (15 min) for their answer, which comes once the service has checked the
file; every other read, up to ``timeout``. Webhooks are registered here (``create_webhook``)
and checked by their receiver with :func:`rift_client.webhooks.verify_webhook`.

What each call sends, retries and parses is in :mod:`rift_client.core`, shared with
:class:`~rift_client.async_client.AsyncRiftClient`; this class performs its I/O with httpx's
blocking client (see :mod:`rift_client.flows`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from rift_client import __version__
from rift_client.arguments import UploadSource, positive_seconds
from rift_client.core import (
    DEFAULT_BASE_URL,
    DEFAULT_UPLOAD_TIMEOUT_S,
    STREAM_READ_TIMEOUT_S,
    RiftCore,
    checked_base_url,
    header_token,
)
from rift_client.errors import RiftClientError, RiftUsageError
from rift_client.flows import (
    END,
    Blocking,
    Chunks,
    Close,
    Emit,
    Flow,
    Lines,
    Next,
    ProgressCallback,
    ReadBody,
    Send,
    Sleep,
    advance,
)
from rift_client.models import (
    ApiKey,
    Artifact,
    AuditEvent,
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
)
from rift_client.proxies import environment_proxy
from rift_client.retry import RetryPolicy

if TYPE_CHECKING:
    from rift_client.async_client import AsyncRiftClient

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_UPLOAD_TIMEOUT_S", "ProgressCallback", "RiftClient",
           "client_settings"]

T = TypeVar("T")


def client_settings(base_url: str | None, api_key: str | None, timeout: float,
                    upload_timeout: float, retry: RetryPolicy | None, *,
                    environment_proxies: bool = True) -> tuple[RiftCore, dict[str, str]]:
    """The core of a client and the headers of its every request, from its arguments and the
    environment (``RIFT_API_URL``, ``RIFT_API_KEY``, and the proxy variables httpx reads unless
    the caller gave a transport: ``environment_proxies``); both clients are made with this."""
    from_env = os.environ.get("RIFT_API_URL")
    # Named in the error of a URL where nothing answers (before, it listed riftctl's places to
    # a Python caller who may have set none of them).
    origin = (None if base_url else "RIFT_API_URL's" if from_env else
              "the default: no base_url given and RIFT_API_URL unset")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise RiftUsageError(f"retry must be a RetryPolicy or None, not {retry!r:.100}", field="retry")
    checked = checked_base_url(base_url or from_env or DEFAULT_BASE_URL)
    url = httpx.URL(checked)
    core = RiftCore(checked, retry or RetryPolicy(), positive_seconds("timeout", timeout),
                    positive_seconds("upload_timeout", upload_timeout), url_origin=origin,
                    via_proxy=environment_proxy(url.scheme, url.host) if environment_proxies
                    else None)
    key = api_key if api_key is not None else os.environ.get("RIFT_API_KEY")
    headers = {"User-Agent": f"rift-client/{__version__}", "Accept": "application/json"}
    if key:
        token = header_token("the API key", key, field="api_key", secret=True)
        headers["Authorization"] = f"Bearer {token}"
    return core, headers


def client_pickle(client: RiftClient | AsyncRiftClient) -> tuple[Any, tuple[Any, ...]]:
    """How a client pickles (``__reduce__``): as its settings, rebuilt in the receiving process
    with connections of its own (joblib's workers, a spawn-started process pool, dask), as a
    requests ``Session`` pickles. Before, "TypeError: cannot pickle '_thread.RLock' object",
    naming neither the client nor what to do. The key travels with it (as it would in the
    arguments of a client made there); a caller's ``transport=`` cannot be rebuilt."""
    options = client._http_options
    if options["transport"] is not None:
        raise TypeError(f"a {type(client).__name__} made with transport= cannot be pickled: make "
                        "one in each process instead")
    # "": no key, also where the receiving process has RIFT_API_KEY set.
    key = options["headers"].get("Authorization", "").removeprefix("Bearer ")
    return _rebuilt_client, (type(client), client.base_url, key, client.timeout,
                             client.upload_timeout, client.retry)


def _rebuilt_client(kind: type[Any], base_url: str, api_key: str, timeout: float,
                    upload_timeout: float, retry: RetryPolicy) -> Any:
    return kind(base_url, api_key=api_key, timeout=timeout, upload_timeout=upload_timeout,
                retry=retry)


def closed_message(client: str) -> str:
    """The error of a call to a closed client, called ``client``."""
    return (f"this {client} is closed (close() was called, or its with block ended): make a "
            "new one")


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
        self._core, headers = client_settings(base_url, api_key, timeout, upload_timeout, retry,
                                              environment_proxies=transport is None)
        self.base_url = self._core.base_url
        self.retry = self._core.retry
        self.timeout = self._core.timeout  # a plain float, also when given np.float32
        self.upload_timeout = self._core.upload_timeout
        self._http_options: dict[str, Any] = {
            "base_url": self.base_url, "headers": headers, "timeout": self.timeout,
            "transport": transport}
        self._http = httpx.Client(**self._http_options)
        #: The process the connections were opened in (see ``_usable``).
        self._pid = os.getpid()

    # ----------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connections; closing again does nothing, and a call after raises
        :class:`RiftUsageError`."""
        self._http.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return client_pickle(self)

    def __enter__(self) -> RiftClient:
        self._usable()
        return self

    def _usable(self) -> None:
        # Before, httpx's own "RuntimeError: Cannot send a request, as the client has been
        # closed", which names neither this client nor what to do.
        if self._http.is_closed:
            raise RiftUsageError(closed_message(type(self).__name__))
        if os.getpid() != self._pid:
            # A forked child (a multiprocessing pool, a DataLoader worker, gunicorn --preload)
            # inherited the parent's pooled connections: a request sent on one was answered to
            # whichever process read first, so a child's get_job returned a sibling's job, or
            # failed with "illegal status line". The child opens its own; its copies of the
            # parent's sockets are closed, which sends nothing (the parent's stay open).
            # A caller's transport= is the caller's to make fork-safe.
            self._http.close()
            self._http = httpx.Client(**self._http_options)
            self._pid = os.getpid()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --------------------------------------------------------------------------- the effects

    def _perform(self, effect: Any, opened: list[httpx.Response]) -> Any:
        """Do one effect of a flow (:mod:`rift_client.flows`) with blocking I/O."""
        if isinstance(effect, Send):
            request = self._http.build_request(
                effect.method, effect.url, params=effect.params, json=effect.json,
                headers=effect.headers, content=effect.body, timeout=effect.timeout)
            response = self._http.send(request, stream=effect.stream,
                                       follow_redirects=effect.follow_redirects)
            if effect.stream:
                opened.append(response)
            return response
        if isinstance(effect, Next):
            return next(effect.iterator, END)
        if isinstance(effect, Lines):
            return effect.response.iter_lines()
        if isinstance(effect, Chunks):
            return effect.response.iter_bytes()
        if isinstance(effect, ReadBody):
            return effect.response.read()
        if isinstance(effect, Close):
            return effect.response.close()
        if isinstance(effect, Sleep):
            return time.sleep(effect.seconds)
        if isinstance(effect, Blocking):
            return effect.call()
        raise TypeError(f"not an effect: {effect!r}")

    def _steps(self, flow: Flow[Any]) -> Generator[Any, None, Any]:
        """Run ``flow``, yielding what it emits, and return its result; the streamed answers
        it opened are closed when it ends, however it ends (an abandoned iteration included)."""
        self._usable()
        opened: list[httpx.Response] = []
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                done, effect = advance(flow, value, error)
                if done:
                    return effect
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    value = self._perform(effect, opened)
                except Exception as exc:  # the flow decides what a failure means
                    error = exc
        finally:
            flow.close()
            for response in opened:
                response.close()

    def _run(self, flow: Flow[T]) -> T:
        """Run a flow that emits nothing; its result."""
        steps = self._steps(flow)
        try:
            item = next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        steps.close()
        raise TypeError(f"a call that returns emitted {item!r}")

    # ------------------------------------------------------------------------------- service

    def ready(self) -> bool:
        """Whether the service answers ``/readyz`` with 200 (database, broker and store up, upload
        validator started); :class:`UntrustedCertificateError` when its TLS certificate is not
        trusted here (no later look would pass)."""
        return self._run(self._core.ready())

    def wait_until_ready(self, timeout: float = 60.0, *, poll_interval: float = 0.5) -> None:
        """Block until :meth:`ready`; raises :class:`RiftConnectionError` after ``timeout`` s."""
        return self._run(self._core.wait_until_ready(timeout, poll_interval))

    # --------------------------------------------------------------------------------- files

    def upload_checkpoint(self, path: UploadSource, *, filename: str | None = None,
                          progress: ProgressCallback | None = None,
                          idempotency_key: str | None = None) -> Checkpoint:
        """Upload a safetensors or PyTorch checkpoint: ``path`` names a file, streamed from
        disk; or give the bytes, or a binary file object (an open file, ``io.BytesIO``) sent
        from its current position to its end and rewound for a retry (a text-mode file is a
        ``TypeError``; a pipe or other stream that cannot be rewound a :class:`RiftUsageError`).
        ``filename`` is the name the service keeps (default: the file's or stream's own name,
        else ``upload``). The SHA-256 computed while sending is compared with the service's
        (:class:`ChecksumMismatchError` if they differ). ``progress(sent_bytes, total_bytes)``
        is called after each chunk.

        The request carries an Idempotency-Key (a random one unless given), so a retry after a
        lost answer returns the checkpoint stored the first time; pass your own key to make a
        script's upload safely re-runnable (the same file again: the same checkpoint)."""
        return self._run(self._core.upload("/v1/checkpoints", Checkpoint, path, filename, progress,
                                           idempotency_key))

    def list_checkpoints_page(self, *, format: str | None = None, page_size: int = 20,
                              cursor: str | None = None) -> CheckpointPage:
        """One page of the project's checkpoints, newest first (``format``: ``safetensors`` or
        ``torch`` keeps one); pass its ``next_cursor`` as ``cursor`` for the next."""
        return self._run(self._core.list_checkpoints_page(format=format, page_size=page_size, cursor=cursor))

    def list_checkpoints(self, *, format: str | None = None, page_size: int = 20,
                         limit: int | None = None) -> Iterator[Checkpoint]:
        """All the project's checkpoints (of one ``format`` when given), newest first, fetched
        page by page as iterated (at most ``limit`` of them when given)."""
        return self._steps(self._core.list_checkpoints(format=format, page_size=page_size, limit=limit))

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        return self._run(self._core.get_checkpoint(checkpoint_id=checkpoint_id))

    def delete_checkpoint(self, checkpoint_id: str, *, if_match: str | None = None) -> None:
        """Delete the checkpoint; ``if_match`` (its ``.etag`` from ``get_checkpoint``, or
        ``*``): only if unchanged since read, else :class:`PreconditionFailedError` (412)."""
        return self._run(self._core.delete_checkpoint(checkpoint_id=checkpoint_id,
                                     if_match=if_match))

    def upload_dataset(self, path: UploadSource, *, filename: str | None = None,
                       progress: ProgressCallback | None = None,
                       idempotency_key: str | None = None) -> Dataset:
        """Upload an .npz or an ImageFolder tar, like :meth:`upload_checkpoint`."""
        return self._run(self._core.upload("/v1/datasets", Dataset, path, filename, progress,
                                           idempotency_key))

    def list_audit_events_page(self, *, action: str | None = None,
                               resource_id: str | None = None, page_size: int = 20,
                               cursor: str | None = None) -> AuditEventPage:
        """One page of the project's audit trail, newest first (``action``, e.g.
        ``job.deleted``, or ``resource_id`` keeps those); pass its ``next_cursor`` as
        ``cursor`` for the next."""
        return self._run(self._core.list_audit_events_page(
            action=action, resource_id=resource_id, page_size=page_size, cursor=cursor))

    def list_audit_events(self, *, action: str | None = None, resource_id: str | None = None,
                          page_size: int = 20, limit: int | None = None) -> Iterator[AuditEvent]:
        """Who changed what in the project (which key created, cancelled or deleted a job,
        ...), newest first, fetched page by page as iterated (at most ``limit``)."""
        return self._steps(self._core.list_audit_events(
            action=action, resource_id=resource_id, page_size=page_size, limit=limit))

    def list_datasets_page(self, *, kind: str | None = None, page_size: int = 20,
                           cursor: str | None = None) -> DatasetPage:
        """One page of the project's uploaded datasets, newest first (``kind``: ``npz`` or
        ``imagefolder`` keeps one; built-in datasets are not uploads and are not listed); pass
        its ``next_cursor`` as ``cursor`` for the next."""
        return self._run(self._core.list_datasets_page(kind=kind, page_size=page_size, cursor=cursor))

    def list_datasets(self, *, kind: str | None = None, page_size: int = 20,
                      limit: int | None = None) -> Iterator[Dataset]:
        """All the project's uploaded datasets (of one ``kind`` when given), newest first,
        fetched page by page as iterated (at most ``limit`` of them when given)."""
        return self._steps(self._core.list_datasets(kind=kind, page_size=page_size, limit=limit))

    def get_dataset(self, dataset_id: str) -> Dataset:
        """An uploaded dataset, or a built-in one by name (``cifar10``, ``digits``, ...)."""
        return self._run(self._core.get_dataset(dataset_id=dataset_id))

    def delete_dataset(self, dataset_id: str, *, if_match: str | None = None) -> None:
        """Delete the dataset; ``if_match`` (its ``.etag`` from ``get_dataset``, or
        ``*``): only if unchanged since read, else :class:`PreconditionFailedError` (412)."""
        return self._run(self._core.delete_dataset(dataset_id=dataset_id,
                                     if_match=if_match))

    # --------------------------------------------------------------------------------- usage

    def usage(self) -> Usage:
        """The project's stored bytes, active jobs and limits, counted as the service's quota
        checks count them (any key with the read scope)."""
        return self._run(self._core.usage())

    # ---------------------------------------------------------------------------------- jobs

    def create_job(self, spec: JobSpec | Mapping[str, Any], *, checkpoint_id: str | None = None,
                   checkpoint_file: UploadSource | None = None,
                   idempotency_key: str | None = None,
                   progress: ProgressCallback | None = None) -> Job:
        """Start a job on a checkpoint: an uploaded one (``checkpoint_id``), or a local file
        sent with the job in the same request (``checkpoint_file``: a path, bytes or a binary
        file object, as ``upload_checkpoint`` takes; a multipart form, the file streamed,
        ``progress(sent_bytes, total_bytes)`` called after each chunk, and
        its SHA-256 compared with the service's: :class:`ChecksumMismatchError`). Exactly one
        of the two. ``spec`` is a :class:`JobSpec` or its dict (``{"config": {...},
        "dataset_id": ..., "labels": {...}, "time_limit_seconds": ...}``).

        The request always carries an Idempotency-Key (a random one unless given), so that a
        retry after a lost answer returns the job created the first time instead of a second
        job (with a file: nor a second checkpoint); pass your own key to make a whole script
        safely re-runnable.
        """
        return self._run(self._core.create_job(spec, checkpoint_id, checkpoint_file,
                                               idempotency_key, progress))

    def get_job(self, job_id: str) -> Job:
        return self._run(self._core.get_job(job_id=job_id))

    def delete_job(self, job_id: str, *, if_match: str | None = None) -> None:
        """Delete a finished job with its records and artifacts (a queued or running one is a
        :class:`ConflictError`, code ``job_active``: cancel it first). A checkpoint or dataset
        used by finished jobs can be deleted once those jobs are. ``if_match``: see
        :meth:`delete_checkpoint` (the job's ``.etag`` from ``get_job``)."""
        return self._run(self._core.delete_job(job_id=job_id, if_match=if_match))

    def list_jobs_page(self, *, status: str | Sequence[str] | None = None,
                       labels: Mapping[str, str] | None = None, page_size: int = 20,
                       cursor: str | None = None,
                       expand: str | Sequence[str] | None = None) -> JobPage:
        """One page of jobs, newest first; pass its ``next_cursor`` as ``cursor`` for the next.
        ``expand`` ("config", "stages", "warnings", one or several) fills those fields of each
        item, which a list otherwise leaves None."""
        return self._run(self._core.list_jobs_page(status=status, labels=labels, page_size=page_size,
                                                   cursor=cursor, expand=expand))

    def list_jobs(self, *, status: str | Sequence[str] | None = None,
                  labels: Mapping[str, str] | None = None, page_size: int = 20,
                  limit: int | None = None,
                  expand: str | Sequence[str] | None = None) -> Iterator[Job]:
        """All jobs matching the filters, newest first, fetched page by page as iterated
        (at most ``limit`` of them when given); ``expand`` as for :meth:`list_jobs_page`."""
        return self._steps(self._core.list_jobs(status=status, labels=labels, page_size=page_size,
                                                limit=limit, expand=expand))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next batch; a finished one
        raises :class:`ConflictError`. Retried like a read when the connection is lost after
        sending (asking twice cancels once); a job that lost attempt cancelled is returned."""
        return self._run(self._core.cancel(job_id=job_id))

    def wait(self, job_id: str, timeout: float | None = None, *, poll_interval: float = 1.0,
             on_update: Callable[[Job], None] | None = None, follow_events: bool = True,
             on_outage: Callable[[RiftClientError | None], None] | None = None) -> Job:
        """Wait until the job has finished and return it (whatever its final status).

        With ``follow_events`` (the default) it follows the job's event stream, so the end is
        seen as it happens instead of up to ``poll_interval`` s later, and reads the job again
        at the end and, while events arrive, at most every ``poll_interval`` s; a stream that
        cannot be followed (dropped, or held back by a buffering proxy for
        ``WAIT_STREAM_READ_TIMEOUT_S``) hands over to polling every ``poll_interval`` s, which is
        all ``follow_events=False`` does. ``on_update(job)`` sees every state read. Raises
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first (None: wait as long as it
        takes). ``on_outage(error)`` is called when the service stops answering (a look failed
        its retries; the wait goes on up to ``RetryPolicy.max_outage_s``) and
        ``on_outage(None)`` when it answers again.
        """
        return self._run(self._core.wait(job_id=job_id, timeout=timeout, poll_interval=poll_interval,
                                         on_update=on_update, follow_events=follow_events,
                                         on_outage=on_outage))

    # -------------------------------------------------------------------------------- events

    def list_events(self, job_id: str, *, after: int = 0, limit: int = 100) -> EventPage:
        """One page of the job's events with id > ``after``, oldest first."""
        return self._run(self._core.list_events(job_id=job_id, after=after, limit=limit))

    def stream_events(self, job_id: str, *, after: int = 0, max_reconnects: int = 5,
                      read_timeout: float = STREAM_READ_TIMEOUT_S,
                      timeout: float | None = None) -> Iterator[Event]:
        """The job's events as they happen (Server-Sent Events), from the first with id >
        ``after``, until the job has finished, or until ``timeout`` seconds have passed (None:
        no limit; the iteration then simply ends).

        A dropped connection (or one silent for ``read_timeout`` s) is reopened with
        ``Last-Event-ID`` set to the last event received, so no event is lost or repeated;
        after ``max_reconnects`` reopenings in a row that brought no new event,
        :class:`RiftConnectionError` is raised. A reopening the service does not answer (no
        connection, or 429/502/503/504 past the request's retries: a restart) is tried again
        every reconnect delay for up to the retry policy's ``max_outage_s``, then raised.
        """
        return self._steps(self._core.stream_events(job_id=job_id, after=after, max_reconnects=max_reconnects,
                                                    read_timeout=read_timeout, timeout=timeout))

    # ------------------------------------------------------------------------------- results

    def get_mrc(self, job_id: str) -> MRCTable:
        return self._run(self._core.get_mrc(job_id=job_id))

    def get_curves(self, job_id: str) -> Curves:
        return self._run(self._core.get_curves(job_id=job_id))

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        return self._run(self._core.list_artifacts(job_id=job_id))

    def get_artifact(self, job_id: str, name: str) -> Artifact:
        """The record (size, SHA-256, URL) of one artifact. Absent: the service's own answer,
        :class:`NotFoundError` (``artifact_not_found``) once the job succeeded, else
        :class:`ConflictError` (``job_not_succeeded``, the job's status in ``details``)."""
        return self._run(self._core.get_artifact(job_id=job_id, name=name))

    # ----------------------------------------------------------------------- materializations

    def materialize(self, job_id: str, alpha: float, *, evaluate: bool = False) -> Materialization:
        """Ask for the weights θ_α = (1 − α) θ_AT + α θ_FT of a succeeded job (α in [0, 1]; 0 is
        θ_AT, 1 is θ_FT, bit for bit), made by a worker as the artifact ``tuned@<α>.safetensors``;
        with ``evaluate``, also their clean and robust accuracy on the test split.

        Returns the request's record at once (``queued`` when new; the existing record when that
        α was asked for before): follow it with :meth:`wait_materialization`, then
        :meth:`download` its ``artifact``. A job that has not succeeded raises
        :class:`ConflictError` (code ``job_not_succeeded``). Asking twice for one α makes it
        once, so the request is retried like a read; asking with ``evaluate`` for an α being
        made without it raises :class:`ConflictError` (``materialization_running``): ask again
        once it has finished (one whose worker died is queued again instead).
        """
        return self._run(self._core.materialize(job_id=job_id, alpha=alpha, evaluate=evaluate))

    def export_to_mlflow(self, job_id: str) -> MlflowExport:
        """Export a succeeded job to MLflow again (after a tracking server that was down, or a
        worker lost during the export that follows a job's success). A worker does it: the
        outcome is the job's next ``mlflow_exported`` event (``run_id``, ``model``, ``version``)
        or ``warning`` (stage ``export``) after the answer's ``event_id``. Exporting a job that
        was exported gives its run and version back, no second one. A job that has not
        succeeded raises :class:`ConflictError` (``job_not_succeeded``), a service without
        ``MLFLOW_TRACKING_URI`` :class:`ConflictError` (``mlflow_not_configured``)."""
        return self._run(self._core.export_to_mlflow(job_id=job_id))

    def wait_mlflow_export(self, job_id: str, request_event_id: int,
                           timeout: float | None = None, *,
                           poll_interval: float = 1.0) -> MlflowExportOutcome:
        """Wait for the outcome of the re-export :meth:`export_to_mlflow` queued (its answer's
        ``event_id``) and return it: ``exported`` with the run id, model and version, or not,
        with the warning's ``message`` (another request's outcome does not answer this one).
        Raises :class:`WaitTimeoutError` when ``timeout`` seconds pass first (None: wait as long
        as it takes; the outcome never comes when no worker runs)."""
        return self._run(self._core.wait_mlflow_export(
            job_id=job_id, request_event_id=request_event_id, timeout=timeout,
            poll_interval=poll_interval))

    def get_materialization(self, job_id: str, materialization_id: str) -> Materialization:
        return self._run(self._core.get_materialization(job_id=job_id, materialization_id=materialization_id))

    def list_materializations(self, job_id: str) -> list[Materialization]:
        """The job's materializations, in α order (every page of the service's list)."""
        return self._run(self._core.list_materializations(job_id=job_id))

    def wait_materialization(self, job_id: str, materialization_id: str,
                             timeout: float | None = None, *, poll_interval: float = 1.0,
                             on_update: Callable[[Materialization], None] | None = None
                             ) -> Materialization:
        """Poll a materialization until it has succeeded or failed and return it (whatever its
        final status). Raises :class:`WaitTimeoutError` (with ``materialization_id`` set) when
        ``timeout`` seconds pass first (None: wait as long as it takes)."""
        return self._run(self._core.wait_materialization(job_id=job_id, materialization_id=materialization_id,
                                                         timeout=timeout, poll_interval=poll_interval,
                                                         on_update=on_update))

    def download(self, job_id: str, name: str, path: str | os.PathLike[str], *,
                 progress: ProgressCallback | None = None, resume_attempts: int = 3) -> Path:
        """Download artifact ``name`` of the job to ``path`` (a file, or a folder to put it in:
        an existing one, or one written with a trailing slash, ``"weights/"``, made when
        missing); returns the file's path.

        The file is written as ``<path>.part`` and renamed only once its size and SHA-256 match
        the service's record (:class:`ChecksumMismatchError` otherwise, the partial file
        removed). A connection lost mid-way is resumed with a Range request, up to
        ``resume_attempts`` times in a row without a new byte (a connection that brought some
        starts the count again). Presigned-URL redirects (S3) are followed. An existing file at
        ``path`` is replaced, once the new one is complete and checked. One call at a time
        writes a ``.part``: a second download to the same path while one runs (another thread,
        process or riftctl) raises :class:`DownloadInProgressError` and leaves it alone.
        """
        return self._run(self._core.download(job_id=job_id, name=name, path=path, progress=progress,
                                             resume_attempts=resume_attempts))

    def download_report(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Save the job's HTML report page (``GET /v1/jobs/{id}/report``) to ``path`` (a file, or
        a folder to put ``<job id>.html`` in, as for :meth:`download`); returns the file's
        path."""
        return self._run(self._core.download_report(job_id=job_id, path=path))

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
        return self._run(self._core.create_webhook(url=url, events=events, description=description,
                                                   idempotency_key=idempotency_key))

    def list_webhooks(self) -> list[Webhook]:
        """The project's webhooks, oldest first (without their secrets; every page of the
        service's list)."""
        return self._run(self._core.list_webhooks())

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._run(self._core.get_webhook(webhook_id=webhook_id))

    def delete_webhook(self, webhook_id: str, *, if_match: str | None = None) -> None:
        """Delete a webhook with its delivery log; messages not yet sent are dropped.
        ``if_match``: see :meth:`delete_checkpoint` (its ``.etag`` from ``get_webhook``)."""
        return self._run(self._core.delete_webhook(webhook_id=webhook_id, if_match=if_match))

    def webhook_deliveries(self, webhook_id: str, *, limit: int = 20) -> list[WebhookDelivery]:
        """The webhook's newest ``limit`` messages (any number from 1: more than a page's 100
        are fetched page by page), newest first, each with its attempts (status code, error,
        duration)."""
        return self._run(self._core.webhook_deliveries(webhook_id=webhook_id, limit=limit))

    # --------------------------------------------------------------------------------- admin
    # The /v1/admin routes, for a key with the admin scope (an operator's: it manages every
    # project); any other key gets PermissionDeniedError (403).

    def list_projects(self) -> list[Project]:
        """Every project with its own limits (admin scope)."""
        return self._run(self._core.list_projects())

    def create_project(self, name: str, *,
                       limits: Mapping[str, int | None] | None = None) -> Project:
        """Create a project (admin scope; a name taken: :class:`ConflictError`
        ``project_exists``), with its own ``limits`` (names of ``models.PROJECT_LIMITS``; one
        left out or None: the service's setting). Not retried once sent: a lost answer is a
        :class:`RiftConnectionError`; ``get_project`` then says whether it was made."""
        return self._run(self._core.create_project(name=name, limits=limits))

    def get_project(self, name: str) -> Project:
        """A project and its limits (admin scope); its ``.etag`` is what
        ``set_project_limits`` and ``delete_project`` take as ``if_match``."""
        return self._run(self._core.get_project(name=name))

    def set_project_limits(self, name: str, limits: Mapping[str, int | None], *,
                           if_match: str | None = None) -> Project:
        """Change the project's limits named in ``limits`` (the others stay; None sets one
        back to the service's setting): the project as it is now. ``if_match``: see
        :meth:`delete_checkpoint` (its ``.etag`` from ``get_project``)."""
        return self._run(self._core.set_project_limits(name=name, limits=limits,
                                                       if_match=if_match))

    def delete_project(self, name: str, *, force: bool = False,
                       if_match: str | None = None) -> None:
        """Delete a project and everything it stores (its keys answer 401 at once). With
        queued or running jobs: :class:`ConflictError` ``project_has_active_jobs``, unless
        ``force``, which revokes its keys, cancels the jobs and waits for their workers (the
        service's PROJECT_DELETE_WAIT_SECONDS; ``jobs_stopping`` if they have not stopped:
        call again). ``if_match``: see :meth:`delete_checkpoint` (from ``get_project``)."""
        return self._run(self._core.delete_project(name=name, force=force, if_match=if_match))

    def project_usage(self, name: str) -> Usage:
        """A project's usage against its limits, as :meth:`usage` answers its own keys."""
        return self._run(self._core.project_usage(name=name))

    def list_keys(self, project: str) -> list[ApiKey]:
        """The project's API keys, revoked ones included (never their secrets)."""
        return self._run(self._core.list_keys(project=project))

    def create_key(self, project: str, *, scopes: Sequence[str] | None = None,
                   name: str | None = None) -> CreatedApiKey:
        """A new key of the project with ``scopes`` (of ``models.KEY_SCOPES``; default read
        and write) and an optional ``name``; its secret (``.key``) is shown this once. Not
        retried once sent (a retry would make a second key)."""
        return self._run(self._core.create_key(project=project, scopes=scopes, name=name))

    def get_key(self, project: str, key_id: str) -> ApiKey:
        """One of the project's keys (no secret); its ``.etag`` covers everything but
        ``last_used_at``, so a key in use keeps it (``revoke_key``'s ``if_match``)."""
        return self._run(self._core.get_key(project=project, key_id=key_id))

    def revoke_key(self, project: str, key_id: str, *, if_match: str | None = None) -> ApiKey:
        """Revoke the key (it answers 401 from now on; revoking again changes nothing): the
        key as it is now. ``if_match``: see :meth:`delete_checkpoint` (from ``get_key``)."""
        return self._run(self._core.revoke_key(project=project, key_id=key_id,
                                               if_match=if_match))

    def list_workers(self) -> list[Worker]:
        """The live worker processes (seen within 3 heartbeats), their queues and devices."""
        return self._run(self._core.list_workers())
