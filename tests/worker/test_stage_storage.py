"""A stage's files in the object store (worker/stages.py, ObjectStageStorage): with the worker's
thread pool they are written side by side, and the records wait until every one is stored."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from persistence.storage import DEFAULT_CONTENT_TYPE, LocalObjectStore, StoredObject
from rift.stage_outputs import MRC_CSV, MRC_JSON
from worker.stages import job_stage_storage


class MeetingStore(LocalObjectStore):
    """A local store whose writes wait for ``parties`` writes to be under way at once."""

    def __init__(self, root: Path, parties: int) -> None:
        super().__init__(root)
        self.barrier = threading.Barrier(parties, timeout=10)
        self.fail: str | None = None

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE
                  ) -> StoredObject:
        self.barrier.wait()  # BrokenBarrierError unless the others are being written too
        if self.fail is not None and key.endswith(self.fail):
            raise OSError(f"disk full writing {key}")
        return super().put_bytes(key, data, content_type=content_type)


def test_files_are_written_side_by_side_and_recorded_once_stored(tmp_path: Path) -> None:
    store = MeetingStore(tmp_path, parties=3)
    with ThreadPoolExecutor(3) as writer:
        storage = job_stage_storage(store, "job-1", {"mrc": 2}, writer)
        storage.write_bytes(MRC_JSON, b'{"rows": []}', "application/json")
        storage.write_bytes(MRC_CSV, b"module,mrc\n", "text/csv")
        manifest = storage.write_extra("mrc", "manifest.json", b"{}", "application/json")
        written = storage.written
        assert manifest.result().key == "jobs/job-1/mrc/attempt-2/manifest.json"
    assert written[MRC_CSV].sha256 == hashlib.sha256(b"module,mrc\n").hexdigest()
    assert store.get_bytes(written[MRC_JSON].key) == b'{"rows": []}'
    assert storage.read_bytes(MRC_CSV) == b"module,mrc\n"


def test_a_failed_write_is_raised_after_the_others_ended(tmp_path: Path) -> None:
    store = MeetingStore(tmp_path, parties=2)
    store.fail = MRC_CSV
    with ThreadPoolExecutor(2) as writer:
        storage = job_stage_storage(store, "job-1", {"mrc": 1}, writer)
        storage.write_bytes(MRC_JSON, b"{}", "application/json")
        storage.write_bytes(MRC_CSV, b"x", "text/csv")
        with pytest.raises(OSError, match="disk full"):
            storage.written  # noqa: B018
    assert store.exists("jobs/job-1/mrc/attempt-1/" + MRC_JSON)


def test_without_a_writer_each_file_is_written_at_once(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    storage = job_stage_storage(store, "job-1", {"mrc": 1})
    storage.write_bytes(MRC_JSON, b"{}", "application/json")
    assert store.exists("jobs/job-1/mrc/attempt-1/" + MRC_JSON)  # before anything waits
