"""A proxy set for the whole session (``HTTP_PROXY`` on a company laptop or a JupyterHub), which
httpx sends every request through: when it does not answer, the error says it was the proxy and
how to reach the service directly (``NO_PROXY``), which then works.

Before: "no service answers at http://127.0.0.1:8000: check the URL and that the service is
running", about a service that was running (and riftctl added "the URL came from
RIFT_API_URL"), with nothing naming the proxy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rift_client import AsyncRiftClient, RetryPolicy, RiftClient, RiftConnectionError
from tests.client.conftest import RunningApi
from tests.client.helpers import run_riftctl
from tests.preloaded_launcher import Launcher

pytestmark = pytest.mark.service

NO_RETRY = RetryPolicy(max_retries=0)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A proxy URL where nothing listens (a port held, never listened on), with a password."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    yield f"http://me:s3cret@127.0.0.1:{held.getsockname()[1]}"
    held.close()


def test_a_proxy_that_does_not_answer_is_named_with_the_way_around_it(
        queued_api: RunningApi, api_key: str | None, dead_proxy: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", dead_proxy)
    with RiftClient(queued_api.url, api_key=api_key, retry=NO_RETRY) as rift, \
            pytest.raises(RiftConnectionError) as raised:
        rift.list_jobs_page()
    message = str(raised.value)
    assert "proxy" in message and "(http_proxy)" in message and "NO_PROXY=127.0.0.1" in message
    assert "no service answers" not in message and "s3cret" not in message
    assert raised.value.unreachable_url is None

    async def from_async() -> None:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=NO_RETRY) as client:
            await client.list_jobs_page()

    with pytest.raises(RiftConnectionError, match=r"NO_PROXY=127\.0\.0\.1"):
        asyncio.run(from_async())
    # What it says to do works, and a service that does not answer is still said to be that.
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with RiftClient(queued_api.url, api_key=api_key, retry=NO_RETRY) as rift:
        assert rift.list_jobs_page().items == []
    with RiftClient("http://127.0.0.1:9", retry=NO_RETRY) as nowhere, \
            pytest.raises(RiftConnectionError, match=r"no service answers at http://127\.0\.0\.1:9"):
        nowhere.list_jobs_page()


def test_riftctl_names_the_proxy_and_works_with_no_proxy(
        queued_api: RunningApi, api_key: str | None, dead_proxy: str, tmp_path: Path,
        cli_launcher: Launcher | None) -> None:
    result = run_riftctl(["--retries", "0", "jobs", "list"], url=queued_api.url, api_key=api_key,
                         home=tmp_path, env={"HTTP_PROXY": dead_proxy}, launcher=cli_launcher)
    assert result.exit_code == 7
    assert "(HTTP_PROXY)" in result.stderr and "NO_PROXY=127.0.0.1" in result.stderr
    assert "the URL came from" not in result.stderr and "s3cret" not in result.stderr
    direct = run_riftctl(["--retries", "0", "-o", "json", "jobs", "list"], url=queued_api.url,
                         api_key=api_key, home=tmp_path,
                         env={"HTTP_PROXY": dead_proxy, "NO_PROXY": "127.0.0.1"},
                         launcher=cli_launcher)
    assert direct.exit_code == 0 and direct.stdout.strip() == "[]", direct.stderr
