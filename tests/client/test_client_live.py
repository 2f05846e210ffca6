"""``RiftClient`` against the whole service (Postgres, Redis, a real Celery worker): a job created,
followed live and waited for; its event stream resumed after a dropped connection with nothing
lost or repeated; its artifacts downloaded with their SHA-256 checked, resumed after a dropped
connection, and refused when the stored bytes are corrupted; its weights materialized at α = 0
and α = 1, equal to θ_AT and θ_FT bit for bit; the same job read, streamed, waited for,
materialized and downloaded (resumed too) through ``AsyncRiftClient``."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from persistence.db import session_factory_from_settings
from persistence.jobs import get_artifact
from rift_client import (
    AsyncRiftClient,
    ChecksumMismatchError,
    Event,
    RiftClient,
    RiftConnectionError,
)
from tests.client.conftest import FAST_RETRY, FinishedJob, RunningApi
from tests.client.helpers import CuttingProxy

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _all_events(client: RiftClient, job_id: str) -> list[Event]:
    events: list[Event] = []
    after = 0
    while True:
        page = client.list_events(job_id, after=after, limit=7)
        events += page.items
        if page.finished:
            return events
        after = page.next_after


@pytest.fixture
def live(live_service: RunningApi, live_api_key: str | None) -> Iterator[RiftClient]:
    with RiftClient(live_service.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        yield client


@pytest.fixture
def proxies() -> Iterator[list[CuttingProxy]]:
    started: list[CuttingProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def test_job_streamed_live_and_finished(finished_job: FinishedJob, live: RiftClient) -> None:
    job = finished_job.job
    assert job.finished and job.selected_module and job.chosen_alpha is not None
    assert [s.status for s in job.stages] == ["done", "done", "done"]
    logged = _all_events(live, job.id)
    # The live stream saw exactly the event log, in order.
    assert [e.id for e in finished_job.streamed] == [e.id for e in logged]
    assert finished_job.streamed == logged
    kinds = [e.kind for e in logged]
    assert kinds[-1] == "job_succeeded" and "stage_started" in kinds and "epoch" in kinds
    mrc = live.get_mrc(job.id)
    assert sum(row.selected for row in mrc.rows) == 1
    assert mrc.selected_module == job.selected_module
    curves = live.get_curves(job.id)
    assert [p.chosen for p in curves.interpolation].count(True) == 1
    assert any(j.id == job.id for j in live.list_jobs(labels={"suite": "client"}))


def test_event_stream_resumes_after_a_dropped_connection(
        finished_job: FinishedJob, live_service: RunningApi, live_api_key: str | None,
        proxies: list[CuttingProxy]) -> None:
    job_id = finished_job.job.id
    expected = finished_job.streamed
    assert len(expected) >= 6
    # Cut the first two streams a few hundred bytes in: mid-event, after some whole events.
    proxy = CuttingProxy(live_service.url, marker=b"/events", cut_after=900, times=2)
    proxies.append(proxy)
    with RiftClient(proxy.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        received = list(client.stream_events(job_id, max_reconnects=3))
    assert proxy.cuts_done == 2
    assert received == expected  # nothing lost, nothing repeated
    requests = proxy.requests_text()
    assert len(requests) == 3
    assert "last-event-id" not in requests[0].lower()
    resumed_from = [int(line.split(":", 1)[1]) for text in requests[1:]
                    for line in text.splitlines() if line.lower().startswith("last-event-id:")]
    assert len(resumed_from) == 2 and 0 < resumed_from[0] < resumed_from[1] < expected[-1].id
    # A client that starts after a known id gets only what follows it.
    with RiftClient(live_service.url, api_key=live_api_key) as client:
        tail = list(client.stream_events(job_id, after=expected[2].id))
    assert tail == expected[3:]


def test_download_verifies_and_resumes(finished_job: FinishedJob, live_service: RunningApi,
                                       live_api_key: str | None, live: RiftClient,
                                       proxies: list[CuttingProxy], tmp_path: Path) -> None:
    job_id = finished_job.job.id
    artifacts = {a.name: a for a in live.list_artifacts(job_id)}
    assert {"tuned.safetensors", "finetuned.safetensors", "mrc.csv", "result.json"} <= set(artifacts)
    tuned = artifacts["tuned.safetensors"]
    calls: list[tuple[int, int]] = []
    path = live.download(job_id, "tuned.safetensors", tmp_path,
                         progress=lambda done, total: calls.append((done, total)))
    assert path == tmp_path / "tuned.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tuned.sha256
    assert calls[-1] == (tuned.size, tuned.size)

    # A connection dropped mid-file is resumed with a Range request, not restarted.
    assert tuned.size > 4096
    proxy = CuttingProxy(live_service.url, marker=b"/artifacts/tuned.safetensors",
                         cut_after=tuned.size // 2)
    proxies.append(proxy)
    target = tmp_path / "resumed.safetensors"
    with RiftClient(proxy.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        assert client.download(job_id, "tuned.safetensors", target) == target
    assert proxy.cuts_done == 1
    assert target.read_bytes() == path.read_bytes()
    ranges = [line for text in proxy.requests_text() for line in text.splitlines()
              if line.lower().startswith("range:")]
    assert len(ranges) == 1 and ranges[0].split("=")[1].endswith("-")
    assert int(ranges[0].split("=")[1].rstrip("-")) > 0


def test_a_download_cut_again_and_again_goes_on_while_each_connection_brings_bytes(
        finished_job: FinishedJob, live_service: RunningApi, live_api_key: str | None,
        live: RiftClient, proxies: list[CuttingProxy], tmp_path: Path) -> None:
    """``resume_attempts`` counts drops in a row without a new byte. Before, it counted every
    drop, so a file cut more often than that (a link or proxy that ends long connections) failed
    though each resumed connection brought more of it."""
    job_id = finished_job.job.id
    tuned = next(a for a in live.list_artifacts(job_id) if a.name == "tuned.safetensors")
    cuts = 4
    proxy = CuttingProxy(live_service.url, marker=b"/artifacts/tuned.safetensors",
                         cut_after=tuned.size // (cuts + 2), times=cuts)
    proxies.append(proxy)
    target = tmp_path / "tuned.safetensors"
    with RiftClient(proxy.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        assert client.download(job_id, "tuned.safetensors", target, resume_attempts=1) == target
    assert proxy.cuts_done == cuts
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tuned.sha256
    starts = [int(line.split("=")[1].rstrip("-")) for text in proxy.requests_text()
              for line in text.splitlines() if line.lower().startswith("range:")]
    assert len(starts) == cuts and starts == sorted(set(starts)) and starts[0] > 0, starts


def test_download_refuses_corrupted_bytes(finished_job: FinishedJob, live_service: RunningApi,
                                          live: RiftClient, tmp_path: Path) -> None:
    job_id = finished_job.job.id
    sessions = session_factory_from_settings(live_service.settings)
    try:
        with sessions() as session:
            artifact = get_artifact(session, job_id, "mrc.csv")
            assert artifact is not None
            key = artifact.storage_key
    finally:
        sessions.kw["bind"].dispose()
    stored = Path(live_service.settings.store_root) / key
    original = stored.read_bytes()
    # The same size, one byte different: only the SHA-256 can tell.
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 0x01]))
    try:
        with pytest.raises(ChecksumMismatchError) as mismatch:
            live.download(job_id, "mrc.csv", tmp_path)
    finally:
        stored.write_bytes(original)
    assert mismatch.value.expected != mismatch.value.actual
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part is left
    assert live.download(job_id, "mrc.csv", tmp_path).read_bytes() == original


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return dict(safetensors.numpy.load_file(str(path)))


def _bit_for_bit(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a)


def test_materialize_end_points_are_theta_at_and_theta_ft(
        finished_job: FinishedJob, live: RiftClient, digits_checkpoint_path: Path,
        tmp_path: Path) -> None:
    job_id = finished_job.job.id
    theta_at = _tensors(digits_checkpoint_path)  # the checkpoint the job was created on
    theta_ft = _tensors(live.download(job_id, "finetuned.safetensors", tmp_path))
    # θ_AT and θ_FT differ (fine-tuning moved the selected module), so each check below can fail.
    assert theta_at.keys() == theta_ft.keys() and not _bit_for_bit(theta_at, theta_ft)

    made = {}
    seen: list[str] = []
    for alpha in (0.0, 1.0):
        record = live.materialize(job_id, alpha)
        assert record.job_id == job_id and record.alpha == alpha and not record.evaluate
        assert record.artifact == f"tuned@{alpha:g}.safetensors"
        seen.clear()
        done = live.wait_materialization(job_id, record.id, timeout=120, poll_interval=0.2,
                                         on_update=lambda m: seen.append(m.status))
        assert done.status == "succeeded", done.error
        assert done.finished_at is not None and done.artifact_url and seen[-1] == "succeeded"
        assert done.clean_accuracy is None and done.robust_accuracy is None
        assert live.get_materialization(job_id, record.id) == done
        # Asking again for a made α returns that record, without a second request to the worker.
        assert live.materialize(job_id, alpha) == done
        made[alpha] = live.download(job_id, done.artifact, tmp_path)
    assert _bit_for_bit(_tensors(made[0.0]), theta_at)
    assert _bit_for_bit(_tensors(made[1.0]), theta_ft)
    listed = live.list_materializations(job_id)
    assert [m.alpha for m in listed] == sorted(m.alpha for m in listed)
    assert {0.0, 1.0} <= {m.alpha for m in listed}


def test_results_of_a_real_job_over_http(finished_job: FinishedJob, live_service: RunningApi,
                                         live_api_key: str | None) -> None:
    """What a worker wrote, read the way caches and download tools read it: conditional GETs,
    HEAD, ranges under If-Range, the event stream of a finished job ending by itself, and the
    report page (its whole sweep-less set of charts) with the selected module."""
    import httpx

    job = finished_job.job
    headers = {"Authorization": f"Bearer {live_api_key}"} if live_api_key else {}
    with httpx.Client(base_url=live_service.url, headers=headers, timeout=60) as http:
        url = f"/v1/jobs/{job.id}/artifacts/tuned.safetensors"
        full = http.get(url)
        assert full.status_code == 200
        etag, modified = full.headers["etag"], full.headers["last-modified"]
        assert etag == f'"{hashlib.sha256(full.content).hexdigest()}"'
        for conditional in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
            cached = http.get(url, headers=conditional)
            assert cached.status_code == 304 and cached.content == b""
        head = http.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(full.content))
        tail = http.get(url, headers={"Range": "bytes=-100", "If-Range": modified})
        assert tail.status_code == 206 and tail.content == full.content[-100:]
        # A finished job's stream sends its log and ends; it does not hang on keep-alives.
        with http.stream("GET", f"/v1/jobs/{job.id}/events",
                         headers={"Accept": "text/event-stream"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            body = "".join(stream.iter_text())
        kinds = [line.split(":", 1)[1].strip() for line in body.splitlines()
                 if line.startswith("event:")]
        assert kinds[-2:] == ["job_succeeded", "end"]  # the stream says it is done
        report = http.get(f"/v1/jobs/{job.id}/report")
        assert report.status_code == 200 and job.selected_module is not None
        assert re.search(r"<tr class='selected'><td class='row'>\d+</td><td class='name'>"
                         + re.escape(job.selected_module)
                         + "<span class='mark'> \\(fine-tuned\\)</span></td>", report.text)
        assert 'data-chart="alpha"' in report.text and 'data-chart="mrc"' in report.text


def test_the_async_client_follows_and_downloads_the_finished_job(
        finished_job: FinishedJob, live_service: RunningApi, live_api_key: str | None,
        live: RiftClient, proxies: list[CuttingProxy], tmp_path: Path) -> None:
    job = finished_job.job
    logged = _all_events(live, job.id)
    tuned = live.get_artifact(job.id, "tuned.safetensors")
    proxy = CuttingProxy(live_service.url, marker=b"/artifacts/tuned.safetensors",
                         cut_after=tuned.size // 2)
    proxies.append(proxy)
    calls: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with AsyncRiftClient(live_service.url, api_key=live_api_key,
                                   retry=FAST_RETRY) as rift:
            assert [e async for e in rift.stream_events(job.id)] == logged
            assert await rift.wait(job.id, timeout=5) == live.get_job(job.id)
            assert await rift.get_mrc(job.id) == live.get_mrc(job.id)
            assert await rift.get_curves(job.id) == live.get_curves(job.id)
            path = await rift.download(job.id, "tuned.safetensors", tmp_path,
                                       progress=lambda done, total: calls.append((done, total)))
            assert hashlib.sha256(path.read_bytes()).hexdigest() == tuned.sha256
            report = await rift.download_report(job.id, tmp_path)
            assert report.name == f"{job.id}.html" and job.selected_module in report.read_text()
            record = await rift.materialize(job.id, 1.0)
            done = await rift.wait_materialization(job.id, record.id, timeout=120,
                                                   poll_interval=0.2)
            assert done.status == "succeeded" and done.artifact == "tuned@1.safetensors"
        # A connection dropped mid-file: resumed with a Range request, as the blocking client.
        async with AsyncRiftClient(proxy.url, api_key=live_api_key, retry=FAST_RETRY) as rift:
            resumed = await rift.download(job.id, "tuned.safetensors", tmp_path / "resumed")
            assert resumed.read_bytes() == path.read_bytes()

    asyncio.run(scenario())
    assert calls[-1] == (tuned.size, tuned.size) and len(calls) >= 1
    assert proxy.cuts_done == 1
    assert any(line.lower().startswith("range: bytes=") for text in proxy.requests_text()
               for line in text.splitlines())


def test_an_interrupted_download_is_resumed_by_the_next_call(
        finished_job: FinishedJob, live_service: RunningApi, live_api_key: str | None,
        live: RiftClient, proxies: list[CuttingProxy], tmp_path: Path) -> None:
    """A download cut off for good (or stopped by Ctrl-C) keeps what arrived in <name>.part,
    never under the target's name; the next call resumes from there with a Range request. Before,
    the .part was deleted and the next call fetched the whole file again."""
    job_id = finished_job.job.id
    tuned = next(a for a in live.list_artifacts(job_id) if a.name == "tuned.safetensors")
    cut = CuttingProxy(live_service.url, marker=b"/artifacts/tuned.safetensors",
                       cut_after=tuned.size // 2, times=5)
    proxies.append(cut)
    target = tmp_path / "tuned.safetensors"
    with RiftClient(cut.url, api_key=live_api_key, retry=FAST_RETRY) as client, \
            pytest.raises(RiftConnectionError) as cut_off:
        client.download(job_id, "tuned.safetensors", target, resume_attempts=0)
    partial = tmp_path / "tuned.safetensors.part"
    assert not target.exists()
    assert partial.exists(), "what arrived was deleted"
    kept = partial.stat().st_size
    assert 0 < kept < tuned.size
    assert f"{kept} bytes are kept" in str(cut_off.value)

    watching = CuttingProxy(live_service.url, marker=b"/artifacts/tuned.safetensors",
                            cut_after=0, times=0)
    proxies.append(watching)
    with RiftClient(watching.url, api_key=live_api_key, retry=FAST_RETRY) as client:
        assert client.download(job_id, "tuned.safetensors", target) == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tuned.sha256
    assert not partial.exists()
    ranges = [line for text in watching.requests_text() for line in text.splitlines()
              if line.lower().startswith("range:")]
    assert ranges == [f"Range: bytes={kept}-"], ranges

    # A .part of other bytes under the same name (another job's file): found out by the
    # checksum, then the file is fetched again from its start, once.
    target.unlink()
    partial.write_bytes(b"\xff" * kept)
    assert live.download(job_id, "tuned.safetensors", target) == target
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tuned.sha256
    assert not partial.exists()
