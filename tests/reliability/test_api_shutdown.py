"""SIGTERM to a running API (``docker stop``, a rolling deploy), started as the image starts it
(``--http api.http_protocol:HttpToolsProtocol``): it stops within the grace an orchestrator gives
(10 s by default in Docker), also with live event streams open, which end cleanly."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from persistence import jobs
from persistence.api_keys import project_by_name
from persistence.db import session_factory_from_settings
from persistence.records import create_checkpoint
from persistence.settings import Settings
from tests.persistence.helpers import SPEC
from tests.preloaded_launcher import Launcher
from tests.reliability.helpers import ApiProcess

pytestmark = [pytest.mark.service]


def test_sigterm_with_an_event_stream_open_stops_the_api_promptly(
        reliability_settings: Settings, optional_api_launcher: Launcher | None,
        tmp_path: Path) -> None:
    env = {"DATABASE_URL": reliability_settings.database_url, "BROKER_URL": "memory://",
           "STORE_ROOT": str(reliability_settings.store_root), "VALIDATION_WARM_START": "false",
           "EVENT_STREAM_RECHECK_SECONDS": "60"}
    api = ApiProcess(env, tmp_path / "api.log", launcher=optional_api_launcher,
                     uvicorn_args=["--http", "api.http_protocol:HttpToolsProtocol"]).wait_ready()
    api.authorize(env)
    sessions = session_factory_from_settings(reliability_settings)
    try:
        with sessions() as session:
            checkpoint = create_checkpoint(
                session, filename="m.safetensors", size=1, sha256="0" * 64, format="safetensors",
                storage_key="checkpoints/x.safetensors", num_tensors=1, num_parameters=1)
            project = project_by_name(session, "tests")
            assert project is not None
            job, _ = jobs.create_job(session, spec=SPEC, checkpoint_id=checkpoint.id,
                                     project_id=project.id)
            job_id = job.id
    finally:
        sessions.kw["bind"].dispose()
    opened = threading.Event()
    ended: list[BaseException | None] = []

    def follow() -> None:
        try:
            with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", headers={
                    **api.headers, "Accept": "text/event-stream"}, timeout=120) as stream:
                opened.set()
                for _ in stream.iter_bytes():
                    pass
            ended.append(None)
        except httpx.HTTPError as exc:
            ended.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(30)
    time.sleep(0.5)
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    try:
        code = api.process.wait(timeout=30)
    except Exception:
        api.kill()
        raise
    took = time.monotonic() - started
    reader.join(10)
    # Was: still running after 30 s, waiting for the stream's client to leave.
    assert took < 10, (took, api.log()[-2000:])
    # uvicorn re-raises the signal it handled once it has shut down: "killed by SIGTERM".
    assert code in (0, -signal.SIGTERM), api.log()[-2000:]
    assert ended == [None]  # the stream ended with its last chunk, not cut
