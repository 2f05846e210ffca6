"""A fine-tune's epoch state in the object store (``worker.epoch_states``): one object per stage or
candidate under the job's prefix, and a store that fails to give or take it never fails the
stage (the state only saves work)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from persistence.object_keys import epoch_state_job, epoch_state_key, epoch_states_prefix
from persistence.storage import LocalObjectStore, StoredObject, StoreUnavailable
from worker.epoch_states import ObjectEpochStateStore, discard_epoch_states


class _DownStore(LocalObjectStore):
    """A store that is unreachable for every read, write and delete."""

    def get_bytes(self, key: str) -> bytes:
        raise StoreUnavailable(f"cannot read {key}")

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "") -> StoredObject:
        raise StoreUnavailable(f"cannot write {key}")

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        raise StoreUnavailable("cannot delete")


def test_the_stage_and_each_candidate_keep_their_own_state_under_the_job(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    stage, candidate = ObjectEpochStateStore(store, "j1"), ObjectEpochStateStore(store, "j1", 3)
    assert stage.load() is None  # nothing stored yet: fine-tuning starts from epoch 1
    stage.save(b"stage")
    candidate.save(b"candidate")
    ObjectEpochStateStore(store, "j2").save(b"other job")
    assert (stage.load(), candidate.load()) == (b"stage", b"candidate")
    assert {epoch_state_job(stage.key), epoch_state_job(candidate.key)} == {"j1"}
    assert epoch_state_job("jobs/j1/finetune/attempt-1/finetuned.safetensors") is None
    candidate.discard()
    assert candidate.load() is None and stage.load() == b"stage"
    discard_epoch_states(store, "j1")
    assert list(store.list_objects(epoch_states_prefix("j1"))) == []
    assert store.exists(epoch_state_key("j2"))  # another job's is not touched


def test_a_store_that_fails_costs_the_state_not_the_stage(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = ObjectEpochStateStore(_DownStore(tmp_path), "j1")
    state.save(b"state")  # before: the error ended the stage's attempt
    assert state.load() is None  # fine-tuning then starts from its beginning
    state.discard()
    assert [record.levelname for record in caplog.records] == ["WARNING"] * 3
    assert all(state.key in record.getMessage() for record in caplog.records)
