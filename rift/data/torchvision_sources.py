"""CIFAR-10, CIFAR-100, SVHN and MNIST, read from ``spec.root`` in torchvision's on-disk layout.

torchvision is used to *download* (only when ``spec.download`` is true). CIFAR and SVHN are then
read here, in the same formats, rather than through torchvision's classes: those check every file
against the MD5 of the official release, which would refuse any other copy in that format (a
re-packed mirror, or the tiny synthetic files the tests write), and CIFAR's pickles are read with
a restricted unpickler (see ``safe_pickle.py``). MNIST's reader checks no checksums and parses
the idx files without pickle, so torchvision's class reads it directly. The files each one needs
are listed once, in :data:`rift.data_root.DATA_ROOT_FILES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rift.config import DatasetSpec
from rift.data.safe_pickle import load_array_pickle
from rift.data.tensors import ImageTensors, SourceData
from rift.data_root import DATA_ROOT_FILES
from rift.errors import DatasetError


def _torchvision_datasets():  # type: ignore[no-untyped-def]
    """torchvision's dataset classes, imported on first use: importing torchvision pulls in
    torch._dynamo (about 2.7 s on a 2-core CPU), which every worker start and CLI call would
    otherwise pay, though only downloads and MNIST use it."""
    from torchvision import datasets

    return datasets


def _root(spec: DatasetSpec) -> Path:
    if not spec.root:
        # Named as each reader gives it: `python -m rift run` has no flag called 'root'.
        raise DatasetError(f"dataset '{spec.name}' needs 'root' (dataset.root; --data-root of "
                           "`python -m rift run`), the folder that holds its files",
                           field="dataset.root")
    return Path(spec.root)


def _download(spec: DatasetSpec, fetch: Callable[[str], object]) -> None:
    """Let torchvision download into ``root`` (it skips files already there and verified)."""
    root = _root(spec)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch(str(root))
    except Exception as exc:  # network, disk or checksum failures all mean: no data
        raise DatasetError(f"downloading '{spec.name}' into 'root' {root} failed: {exc}",
                           field="dataset.root") from exc


def _require_folder(spec: DatasetSpec, folder: Path, expected: str) -> None:
    if not folder.is_dir():
        raise DatasetError(
            f"dataset '{spec.name}': folder {folder} not found under 'root' (looked for "
            f"{expected}); download is off, so set 'download': true or put the files there",
            field="dataset.root")


def _require_file(spec: DatasetSpec, path: Path) -> None:
    if not path.is_file():
        raise DatasetError(
            f"dataset '{spec.name}': file {path} not found under 'root'; download is off, so set "
            "'download': true or put the file there", field="dataset.root")


# --- CIFAR -----------------------------------------------------------------------------------

def _read_cifar_batches(paths: list[Path], label_key: str, num_classes: int) -> ImageTensors:
    """CIFAR "python version" batches: dict with 'data' (N, 3072) uint8, rows holding the red,
    green then blue 32×32 planes, and a list of labels in [0, num_classes) under ``label_key``."""
    images, labels = [], []
    for path in paths:
        entry = load_array_pickle(path)
        for key in ("data", label_key):
            if key not in entry:
                raise DatasetError(f"{path} has no key '{key}' (keys: {sorted(entry)})")
        data = np.asarray(entry["data"])
        batch_labels = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"{path}: key 'data' must be uint8 of shape (N, 3072); "
                f"got {data.dtype} {data.shape}")
        if batch_labels.shape[0] != data.shape[0]:
            raise DatasetError(
                f"{path}: {data.shape[0]} rows in 'data' but {batch_labels.shape[0]} "
                f"entries in '{label_key}'")
        if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= num_classes):
            raise DatasetError(f"{path}: labels in '{label_key}' must be in [0, {num_classes})")
        images.append(data.reshape(-1, 3, 32, 32))  # already NCHW: no transpose needed
        labels.append(batch_labels)
    return ImageTensors(torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(labels)))


def load_cifar10(spec: DatasetSpec) -> SourceData:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (data_batch_1..5, test_batch)."""
    if spec.download:
        _download(spec, lambda root: _torchvision_datasets().CIFAR10(root, train=True, download=True))
    folder = _root(spec) / "cifar-10-batches-py"
    paths = [_root(spec) / relative for relative in DATA_ROOT_FILES["cifar10"]]
    _require_folder(spec, folder, ", ".join(path.name for path in paths))
    for path in paths:
        _require_file(spec, path)
    train = _read_cifar_batches(paths[:5], "labels", 10)
    test = _read_cifar_batches(paths[5:], "labels", 10)
    return SourceData(train=train, test=test, num_classes=10)


def load_cifar100(spec: DatasetSpec) -> SourceData:
    """CIFAR-100 (the 100 fine labels) from ``root/cifar-100-python`` (train, test)."""
    if spec.download:
        _download(spec, lambda root: _torchvision_datasets().CIFAR100(root, train=True, download=True))
    folder = _root(spec) / "cifar-100-python"
    train_path, test_path = (_root(spec) / relative for relative in DATA_ROOT_FILES["cifar100"])
    _require_folder(spec, folder, "train, test")
    for path in (train_path, test_path):
        _require_file(spec, path)
    train = _read_cifar_batches([train_path], "fine_labels", 100)
    test = _read_cifar_batches([test_path], "fine_labels", 100)
    return SourceData(train=train, test=test, num_classes=100)


# --- SVHN ------------------------------------------------------------------------------------

def _read_svhn(path: Path) -> ImageTensors:
    """SVHN cropped digits (.mat): 'X' (32, 32, 3, N) uint8 as (H, W, C, N), 'y' (N, 1) with
    labels 1..10 where 10 stands for the digit 0."""
    from scipy.io import loadmat  # scipy comes with scikit-learn; only SVHN needs it

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    for key in ("X", "y"):
        if key not in mat:
            raise DatasetError(f"{path} has no key '{key}'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DatasetError(
            f"{path}: key 'X' must be uint8 of shape (H, W, 3, N); got {x.dtype} {x.shape}")
    if x.shape[3] != y.shape[0]:
        raise DatasetError(f"{path}: {x.shape[3]} images in 'X' but {y.shape[0]} labels in 'y'")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DatasetError(f"{path}: labels in 'y' must be 1..10")
    y = np.where(y == 10, 0, y)
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return ImageTensors(torch.from_numpy(images), torch.from_numpy(y))


def load_svhn(spec: DatasetSpec) -> SourceData:
    """SVHN from ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (torchvision's layout)."""
    if spec.download:
        def fetch(root: str) -> None:
            for split in ("train", "test"):
                _torchvision_datasets().SVHN(root, split=split, download=True)

        _download(spec, fetch)
    root = _root(spec)
    _require_folder(spec, root, "train_32x32.mat, test_32x32.mat")
    paths = [root / relative for relative in DATA_ROOT_FILES["svhn"]]
    for path in paths:
        _require_file(spec, path)
    return SourceData(train=_read_svhn(paths[0]), test=_read_svhn(paths[1]), num_classes=10)


# --- MNIST -----------------------------------------------------------------------------------

def load_mnist(spec: DatasetSpec) -> SourceData:
    """MNIST from ``root/MNIST/raw`` (uncompressed idx files), as (N, 1, 28, 28) uint8."""
    root = _root(spec)
    if spec.download:
        _download(spec, lambda r: _torchvision_datasets().MNIST(r, train=True, download=True))
    else:
        _require_folder(spec, root / "MNIST" / "raw",
                        ", ".join(Path(relative).name for relative in DATA_ROOT_FILES["mnist"]))
    splits = []
    for train in (True, False):
        try:
            mnist = _torchvision_datasets().MNIST(str(root), train=train, download=False)
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            raise DatasetError(
                f"dataset 'mnist': cannot read the idx files under {root / 'MNIST' / 'raw'}: "
                f"{exc}") from exc
        splits.append(ImageTensors(mnist.data.unsqueeze(1).contiguous(), mnist.targets.long()))
    return SourceData(train=splits[0], test=splits[1], num_classes=10)
