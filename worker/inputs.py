"""Bring a job's inputs from the object store to the worker's disk: the checkpoint, and the
uploaded dataset archive (an ``.npz`` file, or a tar of an ImageFolder tree, extracted safely).

Inputs are cached under ``WORK_DIR/inputs/<kind>/<id>`` and shared by the stages of a job and by
workers on the same machine: each is written to a temporary name and renamed into place, so a
crash or a concurrent worker never leaves a half-written input behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from persistence.models import Checkpoint, Dataset, DatasetKind
from persistence.storage import ObjectStore
from rift.errors import DatasetError


def fetch_checkpoint(store: ObjectStore, checkpoint: Checkpoint, work_dir: Path) -> Path:
    """The local path of the checkpoint file (downloaded once per machine)."""
    suffix = ".safetensors" if checkpoint.format == "safetensors" else ".pt"
    target = work_dir / "inputs" / "checkpoints" / f"{checkpoint.id}{suffix}"
    if not target.is_file():
        store.download_to(checkpoint.storage_key, target)  # atomic: temp file + rename
    return target


def fetch_dataset(store: ObjectStore, dataset: Dataset, work_dir: Path) -> Path:
    """The local path to give ``DatasetSpec.path``: the ``.npz`` file, or the ImageFolder root."""
    base = work_dir / "inputs" / "datasets"
    if dataset.kind == DatasetKind.NPZ:
        target = base / f"{dataset.id}.npz"
        if not target.is_file():
            store.download_to(dataset.storage_key, target)
        return target

    folder = base / dataset.id
    if not folder.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{dataset.id}."))
        try:
            archive = store.download_to(dataset.storage_key, staging / "archive.tar")
            _extract_tar(archive, staging / "tree")
            archive.unlink()
            try:
                os.replace(staging / "tree", folder)
            except OSError:
                if not folder.is_dir():  # not a concurrent worker's copy: a real error
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _imagefolder_root(folder)


def _extract_tar(archive: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths, '..', links out of the tree and devices.
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"the dataset archive cannot be extracted as a tar file: {exc}") from exc


def _imagefolder_root(folder: Path) -> Path:
    """Archives often wrap the class folders in one top folder; step into it."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if p.is_dir()]
        if inner:  # a single class folder of images would have no sub-folders
            return entries[0]
    return folder
