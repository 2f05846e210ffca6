"""A client pickles as its settings and is rebuilt, with connections of its own, where it is
unpickled: passed to joblib's workers, a spawn-started process pool or dask from a notebook, as
a requests ``Session`` can be.

Before: ``TypeError: cannot pickle '_thread.RLock' object``, naming neither the client nor what
to do."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import httpx
import pytest

from rift_client import AsyncRiftClient, RetryPolicy, RiftClient

pytestmark = pytest.mark.service


def _usage_project(rift: RiftClient) -> str:
    """Run in a worker process: the client it was given answers there."""
    with rift:
        return rift.usage().project


def test_a_client_is_rebuilt_in_another_process(rift: RiftClient) -> None:
    spawn = multiprocessing.get_context("spawn")  # nothing inherited: only the pickle travels
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        assert list(pool.map(_usage_project, [rift, rift])) == ["client-tests"] * 2
    copy = pickle.loads(pickle.dumps(rift))
    assert (copy.base_url, copy.retry, copy.timeout) == (rift.base_url, rift.retry, rift.timeout)
    assert copy.usage().project == "client-tests"  # the key came along
    copy.close()
    assert rift.usage().project == "client-tests"  # the original is untouched


def test_the_async_client_pickles_and_a_callers_transport_does_not(
        rift: RiftClient, api_key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # No key in a copy of a client made without one, whatever the receiving side's environment.
    with RiftClient(rift.base_url, api_key="") as original:
        keyless = pickle.dumps(original)
    monkeypatch.setenv("RIFT_API_KEY", api_key or "rift_other")
    assert "authorization" not in pickle.loads(keyless)._http.headers

    async def usage() -> str:
        source = AsyncRiftClient(rift.base_url, api_key=api_key, retry=RetryPolicy(max_retries=0))
        async with pickle.loads(pickle.dumps(source)) as copy:
            return (await copy.usage()).project

    assert asyncio.run(usage()) == "client-tests"
    with pytest.raises(TypeError, match="transport= cannot be pickled"):
        pickle.dumps(RiftClient(rift.base_url, transport=httpx.HTTPTransport()))
