"""``AsyncRiftClient``: the same public methods, arguments and documentation as ``RiftClient``
(both run the flows of ``rift_client.core``), then driven against the real API (SQLite, jobs left
queued) and a scripted server: uploads, job creation (with the checkpoint file in the same
request too, for both clients), pages, event streams, waits, cancelling, deleting, the API's
errors as typed exceptions, retries with one Idempotency-Key, arguments refused before any
request. Each test runs its coroutine with ``asyncio.run`` (no pytest plugin needed); the live
job's async calls are in ``test_client_live.py``."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rift_client import (
    AsyncClient,
    AsyncRiftClient,
    ChecksumMismatchError,
    ConflictError,
    JobSpec,
    NotFoundError,
    RateLimitError,
    RiftClient,
    RiftUsageError,
    WaitTimeoutError,
    async_client,
    client,
)
from tests.api.helpers import digits_config
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import ScriptedReply, ScriptedServer
from tests.client.test_retry import JOB, RATE_LIMITED

pytestmark = pytest.mark.service

T = TypeVar("T")


def _public(cls: type) -> dict[str, Any]:
    return {name: member for name, member in vars(cls).items()
            if not name.startswith("_") and callable(member)}


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Each parameter's name, kind and default (annotations differ: an async transport)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_async_client_has_the_sync_clients_methods_arguments_and_docs() -> None:
    sync, asynchronous = _public(RiftClient), _public(AsyncRiftClient)
    assert AsyncClient is AsyncRiftClient
    assert sorted(asynchronous) == sorted(sync)
    assert _parameters(AsyncRiftClient.__init__) == _parameters(RiftClient.__init__)
    for name, method in sync.items():
        twin = asynchronous[name]
        assert _parameters(twin) == _parameters(method), name
        assert twin.__doc__ == method.__doc__, name
        returns = inspect.signature(method).return_annotation
        if str(returns).startswith("Iterator["):
            # An iterating call returns an async iterator of the same items, not a coroutine.
            assert not inspect.iscoroutinefunction(twin), name
            assert inspect.signature(twin).return_annotation == f"Async{returns}", name
        else:
            assert inspect.iscoroutinefunction(twin), name
            assert inspect.signature(twin).return_annotation == returns, name


def _core_calls(module: Any, class_name: str) -> dict[str, str]:
    """For each public method of the class: the ``self._core`` flow it runs, as source, found
    as the one statement of its body (after a docstring)."""
    tree = ast.parse(inspect.getsource(module))
    cls = next(node for node in tree.body
               if isinstance(node, ast.ClassDef) and node.name == class_name)
    calls: dict[str, str] = {}
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or \
                node.name.startswith("_") or node.name == "close":
            continue
        body = [s for s in node.body if not (isinstance(s, ast.Expr)
                                             and isinstance(s.value, ast.Constant))]
        assert len(body) == 1 and isinstance(body[0], ast.Return), node.name
        value = body[0].value
        if isinstance(value, ast.Await):
            value = value.value
        assert isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
        assert value.func.attr in ("_run", "_steps"), node.name
        (flow,) = value.args
        assert ast.unparse(flow).startswith("self._core."), node.name
        calls[node.name] = ast.unparse(flow)
    return calls


def test_both_clients_run_the_same_core_flow_with_the_same_arguments() -> None:
    """The clients hold no logic of their own: each method only runs one flow of the shared
    core, the same one in both, so that a fix in one cannot miss the other."""
    sync = _core_calls(client, "RiftClient")
    assert _core_calls(async_client, "AsyncRiftClient") == sync
    assert len(sync) == len(_public(RiftClient)) - 1  # all but close


def _run(scenario: Callable[[AsyncRiftClient], Awaitable[T]], url: str,
         api_key: str | None = None) -> T:
    async def main() -> T:
        async with AsyncRiftClient(url, api_key=api_key, retry=FAST_RETRY, timeout=30) as rift:
            return await scenario(rift)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid small_cnn safetensors file for 1-channel digits (random weights)."""
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path_factory.mktemp("async-checkpoints") / "small cnn é.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def test_uploads_jobs_pages_and_errors_through_the_async_client(
        queued_api: RunningApi, api_key: str | None, checkpoint_file: Path,
        tmp_path: Path) -> None:
    size = checkpoint_file.stat().st_size
    local_sha = hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()
    out = tmp_path / "downloads"  # tmp_path holds the API's database too
    out.mkdir()

    async def scenario(rift: AsyncRiftClient) -> None:
        # Ready once the validator the API started with itself serves (seconds at most).
        await rift.wait_until_ready(120, poll_interval=0.1)
        assert await rift.ready()
        progress: list[tuple[int, int]] = []
        checkpoint = await rift.upload_checkpoint(
            checkpoint_file, progress=lambda done, total: progress.append((done, total)))
        assert checkpoint.sha256 == local_sha and checkpoint.filename == checkpoint_file.name
        assert progress[-1] == (size, size)
        assert await rift.get_checkpoint(checkpoint.id) == checkpoint

        spec = JobSpec(config=digits_config(), labels={"via": "async"})
        job = await rift.create_job(spec, checkpoint_id=checkpoint.id, idempotency_key="a-1")
        assert job.status == "queued" and job.labels == {"via": "async"}
        assert (await rift.create_job(spec, checkpoint_id=checkpoint.id,
                                      idempotency_key="a-1")).id == job.id
        with pytest.raises(ConflictError) as conflict:
            await rift.create_job({"config": digits_config(seed=7)},
                                  checkpoint_id=checkpoint.id, idempotency_key="a-1")
        assert conflict.value.code == "idempotency_conflict"
        others = [await rift.create_job(spec, checkpoint_id=checkpoint.id) for _ in range(2)]

        # Pages walked with async for, newest first; limit stops early.
        listed = [j.id async for j in rift.list_jobs(labels={"via": "async"}, page_size=2)]
        assert listed == [others[1].id, others[0].id, job.id]
        assert [j.id async for j in rift.list_jobs(page_size=1, limit=2)] == listed[:2]
        assert [c.id async for c in rift.list_checkpoints()] == [checkpoint.id]
        assert (await rift.list_jobs_page(page_size=2)).next_cursor

        # A queued job: the wait times out (with its last status), the stream ends at the time
        # given with the events so far, the cancel ends the job, and the wait then returns.
        seen: list[str] = []
        with pytest.raises(WaitTimeoutError) as timeout:
            await rift.wait(job.id, timeout=0.3, poll_interval=0.1,
                            on_update=lambda j: seen.append(j.status))
        assert timeout.value.last_status == "queued" and set(seen) == {"queued"}
        logged = (await rift.list_events(job.id)).items
        streamed = [e async for e in rift.stream_events(job.id, timeout=0.5)]
        assert [e.id for e in streamed] == [e.id for e in logged] and logged
        assert (await rift.cancel(job.id)).status == "cancelled"
        assert (await rift.wait(job.id, timeout=5)).status == "cancelled"
        streamed = [e async for e in rift.stream_events(job.id)]  # ends with the job
        assert streamed[-1].kind == (await rift.list_events(job.id)).items[-1].kind

        # The API's errors, as the blocking client raises them.
        with pytest.raises(ConflictError) as finished:
            await rift.cancel(job.id)
        assert (finished.value.code, finished.value.field) == ("job_finished", "job_id")
        with pytest.raises(ConflictError) as early:
            await rift.download(others[0].id, "tuned.safetensors", out)
        assert early.value.code == "job_not_succeeded"
        assert list(out.iterdir()) == []
        await rift.delete_job(job.id)
        with pytest.raises(NotFoundError) as gone:
            await rift.get_job(job.id)
        assert gone.value.field == "job_id"
        usage = await rift.usage()
        assert usage.active_jobs.used == 2

    _run(scenario, queued_api.url, api_key)


def test_a_job_created_with_its_checkpoint_file_in_one_request(
        queued_api: RunningApi, api_key: str | None, checkpoint_file: Path) -> None:
    size = checkpoint_file.stat().st_size
    spec = {"config": digits_config(), "labels": {"via": "multipart"}}

    async def scenario(rift: AsyncRiftClient) -> tuple[str, str]:
        progress: list[tuple[int, int]] = []
        job = await rift.create_job(spec, checkpoint_file=checkpoint_file, idempotency_key="mp-1",
                                    progress=lambda done, total: progress.append((done, total)))
        assert progress[-1] == (size, size)
        again = await rift.create_job(spec, checkpoint_file=checkpoint_file,
                                      idempotency_key="mp-1")
        assert again.id == job.id and again.checkpoint_id == job.checkpoint_id
        return job.id, job.checkpoint_id

    job_id, checkpoint_id = _run(scenario, queued_api.url, api_key)
    with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as rift:
        checkpoint = rift.get_checkpoint(checkpoint_id)
        # The name (spaces and a non-ASCII letter) and the bytes arrived as they are on disk.
        assert checkpoint.filename == checkpoint_file.name and checkpoint.size == size
        assert checkpoint.sha256 == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()
        job = rift.create_job(spec, checkpoint_file=checkpoint_file)  # the blocking client too
        assert job.id != job_id and job.labels == {"via": "multipart"}
        assert [c.id for c in rift.list_checkpoints()] == [job.checkpoint_id, checkpoint_id]
        with pytest.raises(RiftUsageError, match="not both"):
            rift.create_job(spec, checkpoint_id=checkpoint_id, checkpoint_file=checkpoint_file)
        with pytest.raises(RiftUsageError, match="not neither"):
            rift.create_job(spec)
    assert queued_api.dispatcher is not None and len(queued_api.dispatcher.enqueued) == 2


def test_a_download_writes_its_chunks_off_the_event_loop(
        scripted: list[ScriptedServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from rift_client import core

    payload = bytes(range(256)) * 4096 * 3  # 3 MiB: several chunks
    artifact = {"name": "tuned.safetensors", "size": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
                "content_type": "application/octet-stream",
                "created_at": "2026-01-01T00:00:00Z",
                "url": "/v1/jobs/job_1/artifacts/tuned.safetensors"}
    server = ScriptedServer([ScriptedReply(200, {"items": [artifact]}),
                             ScriptedReply(200, raw=payload,
                                           content_type="application/octet-stream")])
    scripted.append(server)
    writers: list[int] = []
    write = core._write_hashed

    def recorded(*args: Any) -> None:
        writers.append(threading.get_ident())
        write(*args)

    monkeypatch.setattr(core, "_write_hashed", recorded)

    async def scenario(rift: AsyncRiftClient) -> tuple[Path, int]:
        path = await rift.download("job_1", "tuned.safetensors", tmp_path)
        return path, threading.get_ident()

    path, loop_thread = _run(scenario, server.url)
    assert path.read_bytes() == payload
    # Every chunk was written, none of them on the event loop's thread.
    assert len(writers) >= 2 and loop_thread not in writers
    # The blocking client runs the same flow and writes in its own thread.
    writers.clear()
    with RiftClient(server.url, retry=FAST_RETRY) as blocking:
        server.seen.clear()
        assert blocking.download("job_1", "tuned.safetensors", tmp_path / "again").read_bytes() \
            == payload
    assert set(writers) == {threading.get_ident()}


def test_a_multipart_job_whose_stored_checkpoint_differs_is_refused(
        scripted: list[ScriptedServer], checkpoint_file: Path) -> None:
    other = dict(JOB, checkpoint_id="ck_9")
    stored = {"id": "ck_9", "filename": "x", "size": 1, "sha256": "0" * 64,
              "format": "safetensors", "num_tensors": 1, "num_parameters": 1,
              "created_at": "2026-01-01T00:00:00Z", "links": {}}
    server = ScriptedServer([ScriptedReply(201, other), ScriptedReply(200, stored)])
    scripted.append(server)

    async def scenario(rift: AsyncRiftClient) -> None:
        with pytest.raises(ChecksumMismatchError):
            await rift.create_job({"config": {}}, checkpoint_file=checkpoint_file)

    _run(scenario, server.url)
    post, get = server.seen
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(post.headers["content-length"]) == len(post.body)
    assert checkpoint_file.read_bytes() in post.body and b'name="spec"' in post.body
    assert get.path == "/v1/checkpoints/ck_9"


def test_async_retries_keep_the_idempotency_key_then_raise_the_typed_error(
        scripted: list[ScriptedServer]) -> None:
    server = ScriptedServer([ScriptedReply(503, None, {"Retry-After": "0"}),
                             ScriptedReply(201, JOB)])
    limited = ScriptedServer([ScriptedReply(429, RATE_LIMITED.body, {"Retry-After": "0"})])
    scripted += [server, limited]

    async def create(rift: AsyncRiftClient) -> str:
        return (await rift.create_job({"config": {"seed": 1}}, checkpoint_id="ck_1")).id

    assert _run(create, server.url) == "job_1"
    keys = [r.headers["idempotency-key"] for r in server.seen]
    assert len(keys) == 2 and keys[0] == keys[1]

    async def read(rift: AsyncRiftClient) -> None:
        await rift.get_job("job_1")

    with pytest.raises(RateLimitError) as limit:
        _run(read, limited.url)
    assert limit.value.code == "rate_limited"
    assert len(limited.seen) == FAST_RETRY.max_retries + 1


def test_async_arguments_that_cannot_be_used_are_refused_before_any_request(
        scripted: list[ScriptedServer], tmp_path: Path) -> None:
    server = ScriptedServer([ScriptedReply(200, JOB)])
    scripted.append(server)

    async def scenario(rift: AsyncRiftClient) -> None:
        with pytest.raises(RiftUsageError, match="job_id"):
            await rift.get_job("")
        with pytest.raises(RiftUsageError, match="poll_interval"):
            await rift.wait("job_1", poll_interval=0)
        with pytest.raises(RiftUsageError, match="read_timeout"):
            rift.stream_events("job_1", read_timeout=0)
        with pytest.raises(RiftUsageError, match="limit"):
            rift.list_jobs(limit=-1)
        with pytest.raises(RiftUsageError, match="alpha"):
            await rift.materialize("job_1", float("nan"))
        with pytest.raises(FileNotFoundError, match="missing"):
            await rift.download("job_1", "tuned.safetensors", tmp_path / "missing" / "x")

    _run(scenario, server.url)
    assert server.seen == []
    with pytest.raises(RiftUsageError, match="API key"):
        AsyncRiftClient(server.url, api_key="rift_key\n")


def test_a_cancelled_task_closes_its_stream(queued_api: RunningApi, api_key: str | None,
                                            checkpoint_file: Path) -> None:
    """A task following a stream is cancelled (an orchestrator's timeout): the cancellation
    propagates at once and the stream's connection is given back."""
    with RiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY) as rift:
        job = rift.create_job({"config": digits_config()}, checkpoint_file=checkpoint_file)

    async def scenario(client: AsyncRiftClient) -> int:
        started = asyncio.Event()

        async def follow() -> None:
            async for _ in client.stream_events(job.id):
                started.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        return sum(1 for c in pool.connections if not c.is_idle())

    assert _run(scenario, queued_api.url, api_key) == 0
