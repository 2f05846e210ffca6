"""Secrets stay out of what a notebook or a CI log shows: a created webhook's signing secret and
a created key's secret are out of the models' ``repr()`` and ``str()`` (a cell that ends with
``hook`` echoes its repr; a log line formats it), and a base URL carrying ``user:password@``
is refused before anything is sent, its password out of the message.

Before, ``CreatedWebhook(..., secret='whsec_...')`` and ``CreatedApiKey(..., key='rift_...')``
were printed whole; and a base URL with a password was taken: httpx sent it as Basic auth in
place of the API key (every call a 401 blaming the Authorization header) and each connection
error printed the password with the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from rift_client import AsyncRiftClient, RiftClient, RiftUsageError
from tests.client.conftest import FAST_RETRY, RunningApi
from tests.client.helpers import run_riftctl
from tests.preloaded_launcher import Launcher

pytestmark = pytest.mark.service

PASSWORD = "hunter2-do-not-print"


def test_created_secrets_are_readable_but_not_in_the_repr(rift: RiftClient) -> None:
    hook = rift.create_webhook("http://127.0.0.1:9/hook")
    key = rift.create_key("client-tests", scopes=["read"])
    for model, secret in ((hook, hook.secret), (key, key.key)):
        assert secret.startswith(("whsec_", "rift_"))
        assert secret not in repr(model) and secret not in str(model) and secret not in f"{model}"
        # Still part of the value: --output json and a caller's model_dump() carry it.
        assert secret in model.model_dump_json()
    assert repr(hook).startswith(f"CreatedWebhook(id='{hook.id}'")
    assert key.prefix in repr(key)
    # The secret read from the answer is the one the service signs and authenticates with.
    with RiftClient(rift.base_url, api_key=key.key, retry=FAST_RETRY) as reader:
        assert reader.get_webhook(hook.id).id == hook.id


def test_a_base_url_with_a_password_is_refused_before_sending(queued_api: RunningApi,
                                                              api_key: str | None) -> None:
    with_password = queued_api.url.replace("http://", f"http://me:{PASSWORD}@")
    for make in (lambda: RiftClient(with_password, api_key=api_key, retry=FAST_RETRY),
                 lambda: AsyncRiftClient(with_password, api_key=api_key)):
        with pytest.raises(RiftUsageError, match="user name or password") as raised:
            make()
        assert raised.value.field == "base_url"
        assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)
    # Nor is the password shown when the rest of the URL is what is wrong.
    with pytest.raises(RiftUsageError, match="not a valid URL") as raised:
        RiftClient(f"http://me:{PASSWORD}@127.0.0.1:port/")
    assert PASSWORD not in str(raised.value)


def test_riftctl_refuses_a_url_with_a_password_without_printing_it(
        queued_api: RunningApi, api_key: str | None, tmp_path: Path,
        cli_launcher: Launcher | None) -> None:
    with_password = queued_api.url.replace("http://", f"http://me:{PASSWORD}@")
    for output in ("text", "json"):
        result = run_riftctl(["-o", output, "jobs", "list"], url=with_password, api_key=api_key,
                             home=tmp_path, launcher=cli_launcher)
        assert result.exit_code == 2, result.stderr
        assert "user name or password" in result.stderr and result.stdout == ""
        assert PASSWORD not in result.stderr
