"""The service behind an HTTPS gateway whose certificate this machine does not trust (a company
CA, a self-signed one): the clients and ``riftctl`` say so at the first attempt, with the way to
trust it (``SSL_CERT_FILE``), which then works.

Before, the error read "no service answers at https://...: check the URL and that the service
is running", after 4 retries with backoff; ``wait`` took it for an outage and looked again for
up to 5 minutes; ``riftctl`` exited 7, which a CI step retries as "try again later"."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rift_client import (
    AsyncRiftClient,
    RetryPolicy,
    RiftClient,
    RiftConnectionError,
    UntrustedCertificateError,
)
from tests.api.helpers import digits_config
from tests.client.conftest import RunningApi
from tests.client.helpers import run_riftctl
from tests.client.tls_proxy import TlsProxy, self_signed_certificate
from tests.preloaded_launcher import Launcher

pytestmark = pytest.mark.service

#: Retries a transient failure would get, with waits long enough to see.
PATIENT = RetryPolicy(max_retries=4, backoff_s=0.5, max_backoff_s=2.0)


@pytest.fixture
def gateway(queued_api: RunningApi, tmp_path: Path) -> Iterator[tuple[TlsProxy, Path]]:
    cert, key = self_signed_certificate(tmp_path)
    proxy = TlsProxy(queued_api.url, cert, key)
    yield proxy, cert
    proxy.stop()


def test_an_untrusted_certificate_is_named_at_once_and_ssl_cert_file_trusts_it(
        gateway: tuple[TlsProxy, Path], api_key: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, cert = gateway
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with RiftClient(proxy.url, api_key=api_key, retry=PATIENT) as rift:
        started = time.monotonic()
        with pytest.raises(UntrustedCertificateError) as raised:
            rift.list_jobs_page()
        assert proxy.connections == 1  # no retry: none could pass the check
        assert "SSL_CERT_FILE" in str(raised.value) and "no service answers" not in str(raised.value)
        assert raised.value.reason and isinstance(raised.value, RiftConnectionError)
        # A wait is no outage to live through, nor is a service starting.
        with pytest.raises(UntrustedCertificateError):
            rift.wait("job_1", timeout=60)
        with pytest.raises(UntrustedCertificateError):
            rift.wait_until_ready(timeout=30)
        assert time.monotonic() - started < 5

    async def from_async() -> None:
        async with AsyncRiftClient(proxy.url, api_key=api_key, retry=PATIENT) as client:
            await client.list_jobs_page()

    with pytest.raises(UntrustedCertificateError):
        asyncio.run(from_async())
    # What the message says to do works: the gateway's CA in SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with RiftClient(proxy.url, api_key=api_key, retry=PATIENT) as rift:
        assert rift.list_jobs_page().items == [] and rift.usage().project == "client-tests"
        rift.wait_until_ready(timeout=30)


def test_riftctl_exits_2_naming_the_certificate_and_works_with_ssl_cert_file(
        gateway: tuple[TlsProxy, Path], api_key: str | None, tmp_path: Path,
        cli_launcher: Launcher | None) -> None:
    proxy, cert = gateway
    config = tmp_path / "config.json"
    config.write_text(json.dumps(digits_config()))
    untrusted = {"SSL_CERT_FILE": "", "SSL_CERT_DIR": ""}
    for output in ("text", "json"):
        result = run_riftctl(["-o", output, "jobs", "list"], url=proxy.url, api_key=api_key,
                             home=tmp_path, env=untrusted, launcher=cli_launcher)
        assert result.exit_code == 2 and result.stdout == "", result.stderr
        assert "SSL_CERT_FILE" in result.stderr
    assert json.loads(result.stderr)["error"]["code"] == "untrusted_certificate"
    assert proxy.connections == 2  # one each, not the 5 of a refused connection's retries
    trusted = run_riftctl(["-o", "json", "jobs", "list"], url=proxy.url, api_key=api_key,
                          home=tmp_path, env={"SSL_CERT_FILE": str(cert)}, launcher=cli_launcher)
    assert trusted.exit_code == 0 and json.loads(trusted.stdout) == [], trusted.stderr
