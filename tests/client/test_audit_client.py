"""``list_audit_events`` (sync and async) against the real API: the project's trail, newest
first, across pages and filtered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rift_client import AsyncRiftClient, AuditEvent, RiftClient
from tests.client.conftest import FAST_RETRY, RunningApi


@pytest.fixture
def small_cnn_file(tmp_path: Path) -> Path:
    from rift.checkpoints import save_safetensors
    from tests.api.helpers import small_cnn_state

    path = tmp_path / "small.safetensors"
    save_safetensors(path, small_cnn_state())
    return path


def test_both_clients_list_the_projects_audit_trail(
        rift: RiftClient, queued_api: RunningApi, api_key: str, small_cnn_file: Path) -> None:
    first = rift.upload_checkpoint(small_cnn_file)
    second = rift.upload_checkpoint(small_cnn_file, filename="other.safetensors")
    rift.delete_checkpoint(first.id)

    listed = list(rift.list_audit_events(page_size=1))
    assert [(e.action, e.resource_id) for e in listed] == [
        ("checkpoint.deleted", first.id), ("checkpoint.uploaded", second.id),
        ("checkpoint.uploaded", first.id)]
    assert all(isinstance(e, AuditEvent) and e.actor == "api_key"
               and e.actor_key_prefix == api_key.split("_")[1] for e in listed)
    assert [e.id for e in rift.list_audit_events(resource_id=first.id)] == [
        listed[0].id, listed[2].id]
    page = rift.list_audit_events_page(action="checkpoint.uploaded", page_size=1)
    assert [e.resource_id for e in page.items] == [second.id] and page.next_cursor

    async def main() -> list[str]:
        async with AsyncRiftClient(queued_api.url, api_key=api_key, retry=FAST_RETRY,
                                   timeout=30) as client:
            return [e.id async for e in client.list_audit_events(action="checkpoint.deleted")]

    assert asyncio.run(main()) == [listed[0].id]
