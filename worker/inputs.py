"""Bring a job's inputs from the object store to the worker's disk: the checkpoint, and the
uploaded dataset archive (an ``.npz`` file, or a tar of an ImageFolder tree, extracted safely);
and check that a built-in dataset is in the worker's ``DATA_ROOT`` (:func:`require_in_data_root`).

Inputs are cached under ``WORK_DIR/inputs/<kind>/<id>`` and shared by the stages of a job and by
workers on the same machine: each is written to a temporary name and renamed into place, so a
crash or a concurrent worker never leaves a half-written input behind.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from persistence.models import Checkpoint, Dataset, DatasetKind
from persistence.scratch_folders import held_scratch_folder
from persistence.storage import ObjectStore
from rift.data_root import expected_layout, missing_files, reads_data_root
from rift.dataset_formats import imagefolder_root, is_hidden, tar_member_problem
from rift.errors import DatasetError

#: Missing files a :class:`DatasetNotInDataRoot` message names (the layout names them all).
MAX_NAMED_MISSING = 3


class DatasetNotInDataRoot(DatasetError):
    """A built-in dataset whose files this worker's ``DATA_ROOT`` lacks: the job reached a
    worker without it (no live worker was registered when it was accepted, or the workers
    changed since). The job's error names the dataset, the folder and the layout expected."""

    code = "dataset_unavailable"

    def __init__(self, name: str, data_root: Path, missing: list[str]) -> None:
        named = ", ".join(missing[:MAX_NAMED_MISSING])
        more = len(missing) - MAX_NAMED_MISSING
        if more > 0:
            named += f" and {more} more"
        super().__init__(
            f"dataset.name '{name}' is not in this worker's DATA_ROOT {str(data_root)!r} "
            f"(missing {named}): place its files in the workers' DATA_ROOT in torchvision's "
            f"layout ({expected_layout(name)}), or upload the data (POST /v1/datasets)",
            field="dataset.name")
        self.name = name


def require_in_data_root(name: str, data_root: Path) -> None:
    """Raise :class:`DatasetNotInDataRoot` when ``name`` is a built-in dataset read from
    ``DATA_ROOT`` and one of its files is not under ``data_root`` (before the checkpoint is
    fetched or anything loaded: a few ``stat`` calls)."""
    if reads_data_root(name):
        missing = missing_files(name, data_root)
        if missing:
            raise DatasetNotInDataRoot(name, data_root, missing)


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
        with held_scratch_folder(base, prefix=f".{dataset.id}.") as staging:
            archive = store.download_to(dataset.storage_key, staging / "archive.tar")
            _extract_tar(archive, staging / "tree")
            archive.unlink()
            try:
                os.replace(staging / "tree", folder)
            except OSError:
                if not folder.is_dir():  # not a concurrent worker's copy: a real error
                    raise
    return _imagefolder_root(folder)


def _member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    # The upload's member policy (checked on upload too), then tarfile's own "data" filter.
    problem = tar_member_problem(member)
    if problem is not None:
        raise DatasetError(
            f"the dataset archive cannot be extracted: member {member.name!r} {problem}")
    # No modification time is set: a PAX mtime of -1e300 passed the upload and extraction
    # failed ("timestamp out of range"); the files' times are never read. (tarfile skips a
    # None mtime; its stubs say float.)
    return tarfile.data_filter(member, path).replace(mtime=None, deep=False)  # type: ignore[arg-type]


def _extract_tar(archive: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter=_member_filter)
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"the dataset archive cannot be extracted as a tar file: {exc}") from exc


# The tree's root depends on the first three path parts of its visible files (imagefolder_root).
_ROOT_DEPTH = 3


def _imagefolder_root(folder: Path) -> Path:
    """The folder holding the tree, by the rule uploads were validated with."""
    files: set[tuple[str, ...]] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        if any(not is_hidden(f) for f in filenames):
            parts = Path(dirpath).relative_to(folder).parts
            files.add((*parts, "*")[:_ROOT_DEPTH])
    return folder.joinpath(*imagefolder_root(files))
