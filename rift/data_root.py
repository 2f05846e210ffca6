"""The files each built-in dataset needs under its root folder (the workers' ``DATA_ROOT``), in
torchvision's on-disk layout: what the loaders of :mod:`rift.data.torchvision_sources` read, and
what a worker checks to say which built-in datasets it holds (:mod:`worker.registry`).

Standard library only (no torch), so that the workers' registry and the API's refusal of a
dataset no live worker holds read the same lists as the loaders. The check is that each file
exists, nothing more: it costs a few ``stat`` calls, where reading the data costs seconds to
minutes, and a damaged file still fails at load time with its own message. ``digits`` ships
with scikit-learn and needs no folder, so it is not listed (every worker holds it).

MNIST is read from the uncompressed idx files of ``MNIST/raw`` (what torchvision's download
leaves, and what its reader looks for first).
"""

from __future__ import annotations

from pathlib import Path

#: Each built-in dataset read from ``DATA_ROOT``: its files, relative to that folder.
DATA_ROOT_FILES: dict[str, tuple[str, ...]] = {
    "cifar10": tuple(f"cifar-10-batches-py/{name}" for name in (
        *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    "cifar100": ("cifar-100-python/train", "cifar-100-python/test"),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
    "mnist": tuple(f"MNIST/raw/{name}" for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte")),
}


def reads_data_root(name: str) -> bool:
    """Whether the dataset ``name`` is a built-in one read from ``DATA_ROOT``."""
    return name in DATA_ROOT_FILES


def missing_files(name: str, root: Path) -> list[str]:
    """The files of dataset ``name`` (one of :data:`DATA_ROOT_FILES`) that are not a file under
    ``root``, relative to it; empty when the dataset is there. A file that cannot be looked at
    (no permission, a failing disk) counts as missing: the loader could not read it either."""
    return [relative for relative in DATA_ROOT_FILES[name] if not _is_file(root / relative)]


def datasets_present(root: Path) -> list[str]:
    """The built-in datasets whose files all are under ``root``, by name; none when ``root`` is
    missing or unreadable."""
    return sorted(name for name in DATA_ROOT_FILES if not missing_files(name, root))


def expected_layout(name: str) -> str:
    """The files of dataset ``name`` as a message lists them: ``cifar-10-batches-py/{data_batch_1,
    ..., test_batch}``, grouped by folder."""
    folders: dict[str, list[str]] = {}
    for relative in DATA_ROOT_FILES[name]:
        folder, _, file = relative.rpartition("/")
        folders.setdefault(folder, []).append(file)
    parts = []
    for folder, files in folders.items():
        listed = files[0] if len(files) == 1 else "{" + ", ".join(files) + "}"
        parts.append(f"{folder}/{listed}" if folder else listed)
    return ", ".join(parts)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder on the way it may not enter raises (EACCES), not False
        return False
