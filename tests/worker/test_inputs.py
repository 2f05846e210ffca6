"""Fetching a job's inputs from the object store to the worker's disk."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from persistence.models import Checkpoint, Dataset
from persistence.storage import LocalObjectStore
from rift.errors import DatasetError
from worker.inputs import fetch_checkpoint, fetch_dataset


def _tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def _dataset(store: LocalObjectStore, kind: str, data: bytes, dataset_id: str) -> Dataset:
    stored = store.put_bytes(f"datasets/{dataset_id}", data)
    return Dataset(id=dataset_id, filename="upload", kind=kind, size=stored.size,
                   sha256=stored.sha256, storage_key=stored.key)


def test_an_imagefolder_tar_is_extracted_once_and_its_wrapper_folder_skipped(
        tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    archive = _tar({"pets/cat/1.png": b"x", "pets/dog/2.png": b"y"})
    dataset = _dataset(store, "imagefolder", archive, "d1")
    root = fetch_dataset(store, dataset, tmp_path / "work")
    assert root.name == "pets"
    assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"]
    assert (root / "cat" / "1.png").read_bytes() == b"x"
    store.delete(dataset.storage_key)  # cached: the store is not read again
    assert fetch_dataset(store, dataset, tmp_path / "work") == root


def test_a_tar_that_escapes_its_folder_is_refused(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    for number, archive in enumerate([_tar({"../evil.png": b"x"}),
                                      _tar({"a/1.png": b"x"}, links={"a/link": "/etc/passwd"})]):
        dataset = _dataset(store, "imagefolder", archive, f"bad{number}")
        with pytest.raises(DatasetError, match="cannot be extracted"):
            fetch_dataset(store, dataset, tmp_path / "work")
        assert not (tmp_path / "work" / "inputs" / "datasets" / f"bad{number}").exists()
    assert not (tmp_path / "work" / "inputs" / "evil.png").exists()


def test_npz_datasets_and_checkpoints_are_downloaded_to_the_work_folder(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    dataset = _dataset(store, "npz", b"npz bytes", "d2")
    path = fetch_dataset(store, dataset, tmp_path / "work")
    assert path.suffix == ".npz" and path.read_bytes() == b"npz bytes"

    stored = store.put_bytes("checkpoints/c1", b"weights")
    checkpoint = Checkpoint(id="c1", filename="m.pt", size=stored.size, sha256=stored.sha256,
                            format="torch", storage_key=stored.key, num_tensors=1,
                            num_parameters=1)
    local = fetch_checkpoint(store, checkpoint, tmp_path / "work")
    assert local.name == "c1.pt" and local.read_bytes() == b"weights"


def test_built_in_datasets_are_read_from_the_worker_data_root(tmp_path) -> None:
    """A job cannot point a worker at a folder of its choosing, nor make it download."""
    from types import SimpleNamespace

    from rift.config import RiftConfig
    from worker.stages import job_config

    spec = RiftConfig.model_validate({
        "architecture": {"name": "resnet18"},
        "dataset": {"name": "cifar10", "root": "/somewhere/else", "download": True},
    }).model_dump(mode="json")
    job = SimpleNamespace(spec=spec)
    config = job_config(job, dataset_path=None, device=None, data_root=tmp_path)  # type: ignore[arg-type]
    assert config.dataset.root == str(tmp_path)
    assert config.dataset.download is False


def test_each_attempt_of_a_stage_writes_its_own_keys() -> None:
    """A worker that stalled past its lease must not overwrite the winning attempt's objects."""
    from worker.stages import stage_object_key

    first = stage_object_key("job1", "finetune", 1, "finetuned.safetensors")
    second = stage_object_key("job1", "finetune", 2, "finetuned.safetensors")
    assert first != second
    assert first.startswith("jobs/job1/") and second.endswith("/finetuned.safetensors")
