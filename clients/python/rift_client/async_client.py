"""``AsyncRiftClient``: the RiFT service's REST API as coroutines, for asyncio programs (async web
services, orchestrators' deferrable tasks).

    from rift_client import AsyncRiftClient

    async with AsyncRiftClient("http://127.0.0.1:8000", api_key="rift_...") as rift:
        job = await rift.create_job({"config": config}, checkpoint_file="model.safetensors")
        async for event in rift.stream_events(job.id):
            print(event.kind, event.payload)
        job = await rift.wait(job.id, timeout=3600)
        await rift.download(job.id, "tuned.safetensors", "out/")

The same methods, arguments, results, errors and retries as
:class:`~rift_client.client.RiftClient` (whose documentation each method carries): both run the
flows of :mod:`rift_client.core`; this class performs their I/O with ``httpx.AsyncClient`` and
``asyncio.sleep``. A call returning a list iterator there returns an async iterator here
(``async for``); every other call is a coroutine. Callbacks (``progress``, ``on_update``) are
plain functions, called on the event loop. An upload reads its file in a worker thread; a
download writes (and hashes) each chunk as it arrives, like the blocking client, but in a
worker thread (``asyncio.to_thread``): one chunk at a time, in order, so a resumed download
continues from exactly the bytes written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from rift_client.arguments import UploadSource
from rift_client.client import RiftClient, client_pickle, client_settings, closed_message
from rift_client.core import DEFAULT_UPLOAD_TIMEOUT_S, STREAM_READ_TIMEOUT_S
from rift_client.errors import RiftClientError, RiftUsageError
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
from rift_client.retry import RetryPolicy

T = TypeVar("T")


async def _file_chunks(body: FileBody) -> AsyncIterator[bytes]:
    """``body`` as an async request body: the file read in a worker thread, chunk by chunk, so
    that a slow disk does not hold up the event loop."""
    handle = await asyncio.to_thread(body.open_pass)
    try:
        if body.prefix:
            yield body.prefix
        sent = 0
        while sent < body.size:
            chunk = await asyncio.to_thread(body.read_chunk, handle, sent)
            sent += len(chunk)
            yield chunk
            body.sent(sent)
        if body.suffix:
            yield body.suffix
    finally:
        body.end_pass(handle)


class AsyncRiftClient:
    """An asyncio client of one RiFT service: the arguments of :class:`RiftClient`, with an
    ``httpx.AsyncBaseTransport`` as ``transport``. Use it as ``async with``, or ``await
    close()``, within one event loop: its connections belong to the loop of its first call, so
    a call (or ``close()``) from another loop is a :class:`RiftUsageError`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(**self._http_options)
        #: The event loop of the first call: the pooled connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The process the connections were opened in, and a forked child's inherited pool.
        self._pid = os.getpid()
        self._inherited: list[httpx.AsyncClient] = []

    # ----------------------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        # Closed from another loop than its calls': RiftUsageError (the connections can be
        # closed only in theirs).
        if not self._http.is_closed:
            self._usable()
        await self._http.aclose()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return client_pickle(self)

    async def __aenter__(self) -> AsyncRiftClient:
        self._usable()
        return self

    def _usable(self) -> None:
        """:class:`RiftUsageError` unless the client may send from the running event loop: it
        is open, and this is the loop of its first call. Its pooled connections belong to that
        loop; another loop (each ``asyncio.run`` makes a new one) that reused one failed with
        "RuntimeError: Event loop is closed", or hung, and only once a connection was pooled."""
        if self._http.is_closed:
            raise RiftUsageError(closed_message(type(self).__name__))
        if os.getpid() != self._pid:
            # A forked child: the pool and its loop are the parent's (see RiftClient._usable).
            # The child opens its own; the inherited one is kept, unused and unclosed (closing
            # it needs the parent's loop), so that its sockets are not collected with warnings.
            self._inherited.append(self._http)
            self._http = httpx.AsyncClient(**self._http_options)
            self._loop, self._pid = None, os.getpid()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RiftUsageError(
                f"this {type(self).__name__} was first used in another event loop, which its "
                "connections belong to (each asyncio.run() makes a new loop): make, use and close "
                "one client per event loop, e.g. with 'async with' inside the coroutine "
                "asyncio.run runs")

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                              tb: TracebackType | None) -> None:
        await self.close()

    # --------------------------------------------------------------------------- the effects

    async def _perform(self, effect: Any, opened: list[httpx.Response]) -> Any:
        """Do one effect of a flow (:mod:`rift_client.flows`) with asyncio."""
        if isinstance(effect, Send):
            request = self._http.build_request(
                effect.method, effect.url, params=effect.params, json=effect.json,
                headers=effect.headers,
                content=None if effect.body is None else _file_chunks(effect.body),
                timeout=effect.timeout)
            response = await self._http.send(request, stream=effect.stream,
                                             follow_redirects=effect.follow_redirects)
            if effect.stream:
                opened.append(response)
            return response
        if isinstance(effect, Next):
            return await anext(effect.iterator, END)
        if isinstance(effect, Lines):
            return effect.response.aiter_lines()
        if isinstance(effect, Chunks):
            return effect.response.aiter_bytes()
        if isinstance(effect, ReadBody):
            return await effect.response.aread()
        if isinstance(effect, Close):
            return await effect.response.aclose()
        if isinstance(effect, Sleep):
            return await asyncio.sleep(effect.seconds)
        if isinstance(effect, Blocking):
            return await asyncio.to_thread(effect.call)
        raise TypeError(f"not an effect: {effect!r}")

    async def _steps(self, flow: Flow[Any]) -> AsyncGenerator[Any, None]:
        """Run ``flow``, yielding what it emits; the streamed answers it opened are closed
        when it ends, however it ends (an abandoned iteration, a cancelled task)."""
        self._usable()
        opened: list[httpx.Response] = []
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                done, effect = advance(flow, value, error)
                if done:
                    if effect is not None:  # an async generator cannot return a value
                        raise TypeError(f"a flow that emits returned {effect!r}")
                    return
                value, error = None, None
                if isinstance(effect, Emit):
                    yield effect.item
                    continue
                try:
                    value = await self._perform(effect, opened)
                except Exception as exc:  # the flow decides what a failure means
                    error = exc
        finally:
            flow.close()
            for response in opened:
                await response.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        """Run a flow that emits nothing; its result."""
        self._usable()
        opened: list[httpx.Response] = []
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                done, effect = advance(flow, value, error)
                if done:
                    return effect  # type: ignore[no-any-return]
                if isinstance(effect, Emit):
                    raise TypeError(f"a call that returns emitted {effect.item!r}")
                value, error = None, None
                try:
                    value = await self._perform(effect, opened)
                except Exception as exc:  # the flow decides what a failure means
                    error = exc
        finally:
            flow.close()
            for response in opened:
                await response.aclose()

    # ------------------------------------------------------------------------------- service

    async def ready(self) -> bool:
        return await self._run(self._core.ready())

    async def wait_until_ready(self, timeout: float = 60.0, *, poll_interval: float = 0.5) -> None:
        return await self._run(self._core.wait_until_ready(timeout, poll_interval))

    # --------------------------------------------------------------------------------- files

    async def upload_checkpoint(self, path: UploadSource, *, filename: str | None = None,
                                progress: ProgressCallback | None = None,
                                idempotency_key: str | None = None) -> Checkpoint:
        return await self._run(self._core.upload("/v1/checkpoints", Checkpoint, path, filename, progress,
                                                 idempotency_key))

    async def list_checkpoints_page(self, *, format: str | None = None, page_size: int = 20,
                                    cursor: str | None = None) -> CheckpointPage:
        return await self._run(self._core.list_checkpoints_page(format=format, page_size=page_size,
                                                                cursor=cursor))

    def list_checkpoints(self, *, format: str | None = None, page_size: int = 20,
                         limit: int | None = None) -> AsyncIterator[Checkpoint]:
        return self._steps(self._core.list_checkpoints(format=format, page_size=page_size, limit=limit))

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        return await self._run(self._core.get_checkpoint(checkpoint_id=checkpoint_id))

    async def delete_checkpoint(self, checkpoint_id: str, *, if_match: str | None = None) -> None:
        """Delete the checkpoint; ``if_match`` (its ``.etag`` from ``get_checkpoint``, or
        ``*``): only if unchanged since read, else :class:`PreconditionFailedError` (412)."""
        return await self._run(self._core.delete_checkpoint(checkpoint_id=checkpoint_id,
                                           if_match=if_match))

    async def upload_dataset(self, path: UploadSource, *, filename: str | None = None,
                             progress: ProgressCallback | None = None,
                             idempotency_key: str | None = None) -> Dataset:
        return await self._run(self._core.upload("/v1/datasets", Dataset, path, filename, progress,
                                                 idempotency_key))

    async def list_audit_events_page(self, *, action: str | None = None,
                                     resource_id: str | None = None, page_size: int = 20,
                                     cursor: str | None = None) -> AuditEventPage:
        return await self._run(self._core.list_audit_events_page(
            action=action, resource_id=resource_id, page_size=page_size, cursor=cursor))

    def list_audit_events(self, *, action: str | None = None, resource_id: str | None = None,
                          page_size: int = 20, limit: int | None = None
                          ) -> AsyncIterator[AuditEvent]:
        return self._steps(self._core.list_audit_events(
            action=action, resource_id=resource_id, page_size=page_size, limit=limit))

    async def list_datasets_page(self, *, kind: str | None = None, page_size: int = 20,
                                 cursor: str | None = None) -> DatasetPage:
        return await self._run(self._core.list_datasets_page(kind=kind, page_size=page_size, cursor=cursor))

    def list_datasets(self, *, kind: str | None = None, page_size: int = 20,
                      limit: int | None = None) -> AsyncIterator[Dataset]:
        return self._steps(self._core.list_datasets(kind=kind, page_size=page_size, limit=limit))

    async def get_dataset(self, dataset_id: str) -> Dataset:
        return await self._run(self._core.get_dataset(dataset_id=dataset_id))

    async def delete_dataset(self, dataset_id: str, *, if_match: str | None = None) -> None:
        """Delete the dataset; ``if_match`` (its ``.etag`` from ``get_dataset``, or
        ``*``): only if unchanged since read, else :class:`PreconditionFailedError` (412)."""
        return await self._run(self._core.delete_dataset(dataset_id=dataset_id,
                                           if_match=if_match))

    # --------------------------------------------------------------------------------- usage

    async def usage(self) -> Usage:
        return await self._run(self._core.usage())

    # ---------------------------------------------------------------------------------- jobs

    async def create_job(self, spec: JobSpec | Mapping[str, Any], *,
                               checkpoint_id: str | None = None,
                               checkpoint_file: UploadSource | None = None,
                               idempotency_key: str | None = None,
                               progress: ProgressCallback | None = None) -> Job:
        return await self._run(self._core.create_job(spec, checkpoint_id, checkpoint_file,
                                                     idempotency_key, progress))

    async def get_job(self, job_id: str) -> Job:
        return await self._run(self._core.get_job(job_id=job_id))

    async def delete_job(self, job_id: str, *, if_match: str | None = None) -> None:
        """Delete a finished job with its records and artifacts (a queued or running one is a
        :class:`ConflictError`, code ``job_active``: cancel it first). A checkpoint or dataset
        used by finished jobs can be deleted once those jobs are. ``if_match``: see
        :meth:`delete_checkpoint` (the job's ``.etag`` from ``get_job``)."""
        return await self._run(self._core.delete_job(job_id=job_id, if_match=if_match))

    async def list_jobs_page(self, *, status: str | Sequence[str] | None = None,
                             labels: Mapping[str, str] | None = None, page_size: int = 20,
                             cursor: str | None = None,
                             expand: str | Sequence[str] | None = None) -> JobPage:
        return await self._run(self._core.list_jobs_page(status=status, labels=labels, page_size=page_size,
                                                         cursor=cursor, expand=expand))

    def list_jobs(self, *, status: str | Sequence[str] | None = None,
                  labels: Mapping[str, str] | None = None, page_size: int = 20,
                  limit: int | None = None,
                  expand: str | Sequence[str] | None = None) -> AsyncIterator[Job]:
        return self._steps(self._core.list_jobs(status=status, labels=labels, page_size=page_size,
                                                limit=limit, expand=expand))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(self._core.cancel(job_id=job_id))

    async def wait(self, job_id: str, timeout: float | None = None, *, poll_interval: float = 1.0,
                   on_update: Callable[[Job], None] | None = None, follow_events: bool = True,
                   on_outage: Callable[[RiftClientError | None], None] | None = None) -> Job:
        return await self._run(self._core.wait(job_id=job_id, timeout=timeout, poll_interval=poll_interval,
                                               on_update=on_update, follow_events=follow_events,
                                               on_outage=on_outage))

    # -------------------------------------------------------------------------------- events

    async def list_events(self, job_id: str, *, after: int = 0, limit: int = 100) -> EventPage:
        return await self._run(self._core.list_events(job_id=job_id, after=after, limit=limit))

    def stream_events(self, job_id: str, *, after: int = 0, max_reconnects: int = 5,
                      read_timeout: float = STREAM_READ_TIMEOUT_S,
                      timeout: float | None = None) -> AsyncIterator[Event]:
        return self._steps(self._core.stream_events(job_id=job_id, after=after, max_reconnects=max_reconnects,
                                                    read_timeout=read_timeout, timeout=timeout))

    # ------------------------------------------------------------------------------- results

    async def get_mrc(self, job_id: str) -> MRCTable:
        return await self._run(self._core.get_mrc(job_id=job_id))

    async def get_curves(self, job_id: str) -> Curves:
        return await self._run(self._core.get_curves(job_id=job_id))

    async def list_artifacts(self, job_id: str) -> list[Artifact]:
        return await self._run(self._core.list_artifacts(job_id=job_id))

    async def get_artifact(self, job_id: str, name: str) -> Artifact:
        return await self._run(self._core.get_artifact(job_id=job_id, name=name))

    # ----------------------------------------------------------------------- materializations

    async def materialize(self, job_id: str, alpha: float, *, evaluate: bool = False) -> Materialization:
        return await self._run(self._core.materialize(job_id=job_id, alpha=alpha, evaluate=evaluate))

    async def export_to_mlflow(self, job_id: str) -> MlflowExport:
        return await self._run(self._core.export_to_mlflow(job_id=job_id))

    async def wait_mlflow_export(self, job_id: str, request_event_id: int,
                                 timeout: float | None = None, *,
                                 poll_interval: float = 1.0) -> MlflowExportOutcome:
        return await self._run(self._core.wait_mlflow_export(
            job_id=job_id, request_event_id=request_event_id, timeout=timeout,
            poll_interval=poll_interval))

    async def get_materialization(self, job_id: str, materialization_id: str) -> Materialization:
        return await self._run(self._core.get_materialization(job_id=job_id,
                                                              materialization_id=materialization_id))

    async def list_materializations(self, job_id: str) -> list[Materialization]:
        return await self._run(self._core.list_materializations(job_id=job_id))

    async def wait_materialization(self, job_id: str, materialization_id: str,
                                   timeout: float | None = None, *, poll_interval: float = 1.0,
                                   on_update: Callable[[Materialization], None] | None = None
                                   ) -> Materialization:
        return await self._run(self._core.wait_materialization(job_id=job_id,
                                                               materialization_id=materialization_id,
                                                               timeout=timeout, poll_interval=poll_interval,
                                                               on_update=on_update))

    async def download(self, job_id: str, name: str, path: str | os.PathLike[str], *,
                       progress: ProgressCallback | None = None, resume_attempts: int = 3) -> Path:
        return await self._run(self._core.download(job_id=job_id, name=name, path=path, progress=progress,
                                                   resume_attempts=resume_attempts))

    async def download_report(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        return await self._run(self._core.download_report(job_id=job_id, path=path))

    # ------------------------------------------------------------------------------ webhooks

    async def create_webhook(self, url: str, *, events: Sequence[str] | None = None,
                             description: str | None = None,
                             idempotency_key: str | None = None) -> CreatedWebhook:
        return await self._run(self._core.create_webhook(url=url, events=events, description=description,
                                                         idempotency_key=idempotency_key))

    async def list_webhooks(self) -> list[Webhook]:
        return await self._run(self._core.list_webhooks())

    async def get_webhook(self, webhook_id: str) -> Webhook:
        return await self._run(self._core.get_webhook(webhook_id=webhook_id))

    async def delete_webhook(self, webhook_id: str, *, if_match: str | None = None) -> None:
        """Delete a webhook with its delivery log; messages not yet sent are dropped.
        ``if_match``: see :meth:`delete_checkpoint` (its ``.etag`` from ``get_webhook``)."""
        return await self._run(self._core.delete_webhook(webhook_id=webhook_id, if_match=if_match))

    async def webhook_deliveries(self, webhook_id: str, *, limit: int = 20) -> list[WebhookDelivery]:
        return await self._run(self._core.webhook_deliveries(webhook_id=webhook_id, limit=limit))

    # --------------------------------------------------------------------------------- admin

    async def list_projects(self) -> list[Project]:
        return await self._run(self._core.list_projects())

    async def create_project(self, name: str, *,
                             limits: Mapping[str, int | None] | None = None) -> Project:
        return await self._run(self._core.create_project(name=name, limits=limits))

    async def get_project(self, name: str) -> Project:
        return await self._run(self._core.get_project(name=name))

    async def set_project_limits(self, name: str, limits: Mapping[str, int | None], *,
                                 if_match: str | None = None) -> Project:
        return await self._run(self._core.set_project_limits(name=name, limits=limits,
                                                             if_match=if_match))

    async def delete_project(self, name: str, *, force: bool = False,
                             if_match: str | None = None) -> None:
        return await self._run(self._core.delete_project(name=name, force=force,
                                                         if_match=if_match))

    async def project_usage(self, name: str) -> Usage:
        return await self._run(self._core.project_usage(name=name))

    async def list_keys(self, project: str) -> list[ApiKey]:
        return await self._run(self._core.list_keys(project=project))

    async def create_key(self, project: str, *, scopes: Sequence[str] | None = None,
                         name: str | None = None) -> CreatedApiKey:
        return await self._run(self._core.create_key(project=project, scopes=scopes, name=name))

    async def get_key(self, project: str, key_id: str) -> ApiKey:
        return await self._run(self._core.get_key(project=project, key_id=key_id))

    async def revoke_key(self, project: str, key_id: str, *,
                         if_match: str | None = None) -> ApiKey:
        return await self._run(self._core.revoke_key(project=project, key_id=key_id,
                                                     if_match=if_match))

    async def list_workers(self) -> list[Worker]:
        return await self._run(self._core.list_workers())


def _share_docs(cls: type, like: type) -> None:
    """Give ``cls``'s public methods the documentation of ``like``'s namesakes (written once)."""
    for name, method in vars(cls).items():
        if not name.startswith("_") and callable(method) and method.__doc__ is None:
            method.__doc__ = getattr(like, name).__doc__


_share_docs(AsyncRiftClient, RiftClient)

#: The name asyncio users look for first.
AsyncClient = AsyncRiftClient
