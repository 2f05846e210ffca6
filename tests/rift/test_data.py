"""Tests of rift/data: sources (on tiny synthetic files in the real on-disk formats), splits,
batches and batched augmentation."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from rift.config import DatasetSpec
from rift.data import (
    DatasetSplits,
    ImageTensors,
    augment_batch,
    crop_padding,
    iterate_batches,
    load_dataset,
    random_crop,
    random_flip,
    resolve_augment,
)
from rift.data.npz import load_npz
from rift.data.splits import cap, hold_out, seeded_generator, stratified_pick
from rift.errors import ConfigError, DatasetError

CPU = torch.device("cpu")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ids_of(data: ImageTensors) -> list[int]:
    """Example ids encoded by _id_npz (float images whose first value is id / 1000)."""
    return [round(v * 1000) for v in data.images[:, 0, 0, 0].tolist()]


def _id_npz(path: Path, n: int = 200, classes: int = 4, **extra: np.ndarray) -> Path:
    """An npz whose float image i is filled with i / 1000, so splits can be traced to ids, but
    for its last pixel, 0.9 (a constant image is refused as content)."""
    x = np.repeat((np.arange(n) / 1000.0).astype(np.float32), 3 * 4 * 4).reshape(n, 3, 4, 4)
    x[:, :, -1, -1] = 0.9
    y = np.arange(n) % classes
    np.savez(path, x=x, y=y, **extra)
    return path


# --- on-disk fixtures in the torchvision formats ---------------------------------------------

def _pickle(path: Path, entry: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def _write_cifar10(root: Path, per_batch: int = 4, test: int = 6, *, bytes_keys: bool = False
                   ) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = _rng(1)
    written = {}
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        entry = {"data": data, "labels": labels, "batch_label": name}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        _pickle(folder / name, entry)
        written[name] = data
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return written


def _write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = _rng(2)
    for name, n in (("train", 12), ("test", 5)):
        _pickle(folder / name, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                                "coarse_labels": [int(v) for v in rng.integers(0, 20, n)]})


def _write_svhn(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(3)
    written = {}
    for split, n in (("train", 12), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 meaning digit 0
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        written[split] = (x, y)
    return written


def _write_idx(path: Path, array: np.ndarray) -> None:
    # idx: 0, 0, type 0x08 (ubyte), number of dims; then each dim as big-endian int32; then data
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = _rng(4)
    written = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
        written[prefix] = images
    return written


# --- ImageTensors / DatasetSplits ------------------------------------------------------------

def test_image_tensors_validates_shapes_and_dtypes() -> None:
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    data = ImageTensors(images, torch.tensor([0, 1, 2]))
    assert len(data) == 3 and data.image_shape == (1, 4, 4)
    assert len(data.head(2)) == 2
    assert data.select(torch.tensor([2, 0])).labels.tolist() == [2, 0]
    with pytest.raises(DatasetError, match="labels"):
        ImageTensors(images, torch.tensor([0, 1]))
    with pytest.raises(DatasetError, match="labels"):
        ImageTensors(images, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(DatasetError, match="images"):
        ImageTensors(torch.zeros(3, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(DatasetError, match="images"):
        ImageTensors(images.int(), torch.tensor([0, 1, 2]))


# --- splits ----------------------------------------------------------------------------------

def test_stratified_pick_partitions_and_keeps_class_shares() -> None:
    labels = torch.arange(100) % 4
    chosen, rest = stratified_pick(labels, 20, seeded_generator(0, 1))
    assert len(chosen) == 20
    assert sorted(torch.cat([chosen, rest]).tolist()) == list(range(100))
    assert torch.bincount(labels[chosen], minlength=4).tolist() == [5, 5, 5, 5]
    again, _ = stratified_pick(labels, 20, seeded_generator(0, 1))
    other, _ = stratified_pick(labels, 20, seeded_generator(1, 1))
    assert torch.equal(chosen, again) and not torch.equal(chosen, other)


def test_hold_out_and_cap() -> None:
    data = ImageTensors(torch.zeros(10, 1, 2, 2), torch.arange(10) % 2)
    kept, held = hold_out(data, 0.3, seeded_generator(0, 4), what="validation")
    assert (len(kept), len(held)) == (7, 3)
    assert len(cap(data, 4, seeded_generator(0, 2))) == 4
    assert cap(data, None, seeded_generator(0, 2)) is data
    with pytest.raises(DatasetError, match="validation"):
        hold_out(data.head(1), 0.1, seeded_generator(0, 4), what="validation")


def test_load_dataset_splits_are_disjoint_deterministic_and_capped(tmp_path: Path) -> None:
    path = _id_npz(tmp_path / "ids.npz", n=200)
    spec = DatasetSpec(name="npz", path=str(path), validation_fraction=0.1)
    splits = load_dataset(spec, seed=0)
    ids = [_ids_of(s) for s in (splits.train, splits.validation, splits.test)]
    assert [len(i) for i in ids] == [144, 16, 40]  # 20% test, then 10% of the rest
    assert sorted(i for part in ids for i in part) == list(range(200))

    again = load_dataset(spec, seed=0)
    assert _ids_of(again.validation) == ids[1] and _ids_of(again.test) == ids[2]
    other = load_dataset(spec, seed=1)
    assert _ids_of(other.validation) != ids[1]

    capped = load_dataset(spec.model_copy(update={"max_train_examples": 50,
                                                   "max_test_examples": 10}), seed=0)
    assert (len(capped.train), len(capped.validation), len(capped.test)) == (45, 5, 10)
    assert set(_ids_of(capped.validation)) <= set(ids[0] + ids[1])
    # The test cap draws from its own stream: it leaves the validation split alone.
    test_capped = load_dataset(spec.model_copy(update={"max_test_examples": 7}), seed=0)
    assert _ids_of(test_capped.validation) == ids[1]
    assert set(_ids_of(test_capped.test)) <= set(ids[2])


def test_load_dataset_too_few_examples(tmp_path: Path) -> None:
    # A training pool of one example cannot give a validation split and keep one to train on.
    test = np.load(_id_npz(tmp_path / "test.npz", n=4))
    path = _id_npz(tmp_path / "ids.npz", n=1, x_test=test["x"], y_test=test["y"])
    with pytest.raises(DatasetError, match="at least 2"):
        load_dataset(DatasetSpec(name="npz", path=str(path)), seed=0)


def test_a_training_cap_of_one_is_refused_by_the_spec(tmp_path: Path) -> None:
    """It passed validation and failed when the data was loaded; any cap of 2 or more splits."""
    with pytest.raises(ValidationError) as error:
        DatasetSpec(name="npz", path="d.npz", max_train_examples=1)
    assert [e["loc"] for e in error.value.errors()] == [("max_train_examples",)]
    path = _id_npz(tmp_path / "ids.npz", n=20)
    splits = load_dataset(DatasetSpec(name="npz", path=str(path), max_train_examples=2), seed=0)
    assert (len(splits.train), len(splits.validation)) == (1, 1)


# --- digits ----------------------------------------------------------------------------------

def test_digits_shapes_split_and_determinism() -> None:
    splits = load_dataset(DatasetSpec(name="digits"), seed=3)
    assert isinstance(splits, DatasetSplits)
    assert splits.image_shape == (1, 8, 8) and splits.num_classes == 10
    assert (splits.in_channels, splits.image_size) == (1, 8)
    assert splits.augment == "crop"
    sizes = [len(splits.train), len(splits.validation), len(splits.test)]
    assert sum(sizes) == 1797
    assert abs(sizes[2] - 0.25 * 1797) <= 1
    for part in (splits.train, splits.validation, splits.test):
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
        assert set(part.labels.unique().tolist()) == set(range(10))  # stratified: all classes
    assert splits.train.images.max() == 255 and splits.train.images.min() == 0
    again = load_dataset(DatasetSpec(name="digits"), seed=3)
    assert torch.equal(again.test.images, splits.test.images)
    assert torch.equal(again.validation.labels, splits.validation.labels)
    other = load_dataset(DatasetSpec(name="digits"), seed=4)
    assert not torch.equal(other.test.images, splits.test.images)


# --- npz -------------------------------------------------------------------------------------

def test_npz_uint8_nhwc_becomes_nchw(tmp_path: Path) -> None:
    x = _rng().integers(0, 256, (30, 5, 6, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    x_test = _rng(1).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=np.array([0, 1, 2, 6]))
    splits = load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "d.npz")), seed=0)
    assert splits.image_shape == (3, 5, 6)
    assert splits.num_classes == 7  # the largest label, in y_test, + 1
    assert splits.augment == "crop_flip"
    assert torch.equal(splits.test.images, torch.from_numpy(x_test).permute(0, 3, 1, 2))
    assert len(splits.train) + len(splits.validation) == 30


def test_npz_float_nchw_and_grayscale(tmp_path: Path) -> None:
    x = _rng().random((20, 1, 6, 6))
    np.savez(tmp_path / "f.npz", x=x, y=np.arange(20) % 2)
    splits = load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "f.npz")), seed=0)
    assert splits.train.images.dtype == torch.float32 and splits.augment == "crop"
    assert splits.train.images.min() >= 0.0 and splits.train.images.max() <= 1.0
    np.savez(tmp_path / "g.npz", x=_rng().integers(0, 256, (20, 6, 6), dtype=np.uint8),
             y=np.arange(20) % 2)
    grey = load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "g.npz")), seed=0)
    assert grey.image_shape == (1, 6, 6)


def test_npz_channel_axis_follows_the_shape_not_the_dtype(tmp_path: Path) -> None:
    # The same RGB images saved four ways load as the same tensors: users save float images
    # straight from PIL/numpy (N×H×W×C) and uint8 ones from PyTorch tensors (N×C×H×W).
    nhwc = _rng().integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    nchw = nhwc.transpose(0, 3, 1, 2)
    expected = torch.from_numpy(np.ascontiguousarray(nchw)).float() / 255
    for name, x in {"u8_nhwc": nhwc, "u8_nchw": nchw, "f_nhwc": nhwc / np.float32(255),
                    "f_nchw": nchw / np.float32(255)}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=np.arange(12) % 2)
        source = load_npz(DatasetSpec(name="npz", path=str(tmp_path / f"{name}.npz")))
        images = source.train.images
        assert source.train.image_shape == (3, 8, 8), name
        loaded = images.float() / 255 if images.dtype == torch.uint8 else images
        torch.testing.assert_close(loaded, expected, msg=name)


_GOOD_X = np.zeros((6, 4, 4, 3), np.uint8)
_GOOD_Y = np.arange(6) % 2


@pytest.mark.parametrize(("arrays", "key"), [
    ({"y": _GOOD_Y}, "'x'"),
    ({"x": _GOOD_X}, "'y'"),
    ({"x": _GOOD_X, "y": _GOOD_Y, "x_test": _GOOD_X}, "'y_test'"),
    ({"x": _GOOD_X, "y": _GOOD_Y, "y_test": _GOOD_Y}, "'x_test'"),
    ({"x": np.full((6, 48), np.inf), "y": _GOOD_Y}, "'x'"),  # features must be finite
    ({"x": np.zeros((6, 48), np.bool_), "y": _GOOD_Y}, "'x'"),
    ({"x": np.zeros((6, 0)), "y": _GOOD_Y}, "'x'"),
    ({"x": np.zeros((6, 1, 4, 4, 3), np.uint8), "y": _GOOD_Y}, "'x'"),
    ({"x": np.zeros((6, 32, 32, 20), np.uint8), "y": _GOOD_Y}, "'x'"),  # 20 channels
    ({"x": np.full((6, 3, 4, 4), 1.5), "y": _GOOD_Y}, "'x'"),
    ({"x": np.full((6, 3, 4, 4), -0.1), "y": _GOOD_Y}, "'x'"),
    ({"x": np.full((6, 3, 4, 4), np.nan), "y": _GOOD_Y}, "'x'"),
    ({"x": np.zeros((6, 3, 4, 4), np.int32), "y": _GOOD_Y}, "'x'"),
    ({"x": _GOOD_X, "y": np.arange(5)}, "'y'"),
    ({"x": _GOOD_X, "y": np.array([0, 1, -1, 0, 1, 0])}, "'y'"),
    ({"x": _GOOD_X, "y": _GOOD_Y.astype(np.float32)}, "'y'"),
    ({"x": np.full((6, 48), 1e300), "y": _GOOD_Y}, "'x'"),  # inf once read as float32
    ({"x": _GOOD_X, "y": np.array([0, 1, 2**64 - 1, 0, 1, 0], np.uint64)}, "'y'"),  # wraps
    ({"x": _GOOD_X, "y": _GOOD_Y, "x_test": np.zeros((2, 5, 4, 3), np.uint8),
      "y_test": np.array([0, 1])}, "'x_test'"),
    ({"x": _GOOD_X, "y": _GOOD_Y, "x_test": _GOOD_X[:2], "y_test": np.array([0, 1, 1])},
     "'y_test'"),
    ({"x": _GOOD_X[:0], "y": _GOOD_Y[:0]}, "'x'"),
    ({"x": _GOOD_X, "y": _GOOD_Y, "x_test": _GOOD_X[:0], "y_test": _GOOD_Y[:0]}, "'x_test'"),
    ({"x": (np.arange(6 * 48) % 2).astype(np.uint8).reshape(6, 4, 4, 3), "y": _GOOD_Y},
     "'x': uint8 images are read as value / 255"),  # 0/1 pixels: near-black images
    # The content rules an upload is held to (rift.image_content), after the format rules.
    ({"x": _GOOD_X, "y": _GOOD_Y}, "key 'x': every image is constant"),
    ({"x": np.tile(_rng().integers(0, 256, (1, 4, 4, 3), dtype=np.uint8), (6, 1, 1, 1)),
      "y": _GOOD_Y}, "key 'x': all 6 images are identical"),
    ({"x": np.tile(_rng().random((1, 5)), (6, 1)), "y": _GOOD_Y},
     "key 'x': all 6 feature vectors are identical"),
    ({"x": _rng().random((6, 3, 4, 4)) / 255 / 255, "y": _GOOD_Y},
     "key 'x': float images .*at most 1/255"),
    ({"x": _rng().integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), "y": np.full(6, 2)},
     "key 'y': every training label is 2"),
    ({"x": _rng().integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), "y": _GOOD_Y,
      "x_test": np.zeros((2, 4, 4, 3), np.uint8), "y_test": np.array([0, 1])},
     "key 'x_test': every image is constant"),
])
def test_npz_errors_name_the_key(tmp_path: Path, arrays: dict, key: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=key):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "bad.npz")), seed=0)


@pytest.mark.parametrize(("content", "words"), [
    (b"x,y\n0.1,3\n", "its first bytes are b'x,y\\n0.1,"),  # a CSV named .npz
    (b"", "it is empty"),
    (b"\x89PNG\r\n\x1a\n....", "its first bytes are b'\\x89PNG"),
])
def test_a_file_that_is_no_npz_says_so_naming_dataset_path(tmp_path: Path, content: bytes,
                                                            words: str) -> None:
    """Before: np.load read any such file as a pickle and refused it as "This file contains
    pickled (object) data ... allow_pickle=", about a file that holds none."""
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DatasetError) as refused:
        load_npz(DatasetSpec(name="npz", path=str(tmp_path / "d.npz")))
    assert refused.value.message.startswith(f"'path' {tmp_path / 'd.npz'} is not an .npz archive")
    assert words in refused.value.message and "pickle" not in refused.value.message
    assert refused.value.field == "dataset.path"
    with pytest.raises(DatasetError) as folder:
        load_npz(DatasetSpec(name="npz", path=str(tmp_path)))
    assert folder.value.message.endswith("is a folder") and folder.value.field == "dataset.path"


def test_npz_feature_vectors_load_as_one_pixel_float_images(tmp_path: Path) -> None:
    from rift.data.npz import load_npz

    features = np.arange(30, dtype=np.int64).reshape(6, 5) * 1000 - 7000  # any finite range
    np.savez(tmp_path / "f.npz", x=features, y=np.array([0, 1, 2, 0, 1, 2]),
             x_test=features[:2].astype(np.int64), y_test=np.array([[2], [0]]))
    source = load_npz(DatasetSpec(name="npz", path=str(tmp_path / "f.npz")))
    assert source.train.images.dtype == torch.float32
    # (N, F) → (N, F, 1, 1): F channels of a 1×1 image, so every image code path takes them.
    assert torch.equal(source.train.images, torch.from_numpy(features).float()[:, :, None, None])
    assert source.test is not None and source.test.images.shape == (2, 5, 1, 1)
    assert source.test.labels.tolist() == [2, 0]
    assert source.num_classes == 3


def test_npz_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'path'"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "none.npz")), seed=0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="'path'"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "junk.npz")), seed=0)
    # A .npy file is one bare array (before: TypeError, ndarray is no context manager).
    np.save(tmp_path / "one.npy", np.zeros((4, 3)))
    with pytest.raises(DatasetError, match=r"single float64 array of shape \[4, 3\].*\.npy"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "one.npy")), seed=0)
    # Object arrays are pickles: refused rather than unpickled, naming the key (before: only
    # numpy's "Object arrays cannot be loaded when allow_pickle=False").
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetError, match="key 'x' holds Python objects"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "obj.npz")), seed=0)


# --- imagefolder -----------------------------------------------------------------------------

_COLOURS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (6, 5),
         mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    (image.convert(mode) if mode != "RGB" else image).save(path)


def _tree(root: Path, per_class: int = 4) -> None:
    for name, colour in _COLOURS.items():
        for i in range(per_class):
            _png(root / name / f"{i}.png", colour)


@pytest.mark.parametrize("x", [
    _rng().integers(0, 256, (12, 1, 1, 3), dtype=np.uint8),  # N×H×W×C
    _rng().random((12, 3, 1, 1)).astype(np.float32),  # N×C×H×W
], ids=["uint8", "float"])
def test_one_pixel_images_are_refused_naming_the_feature_vector_form(
        tmp_path: Path, x: np.ndarray) -> None:
    """Every stage takes (N, F, 1, 1) for feature vectors: before, uint8 1×1 pixels were read in
    [0, 1] but attacked without its box and warned about as 0-255 features, with the advice to
    save them as the uint8 images they were."""
    np.savez(tmp_path / "pixels.npz", x=x, y=np.arange(12) % 3)
    with pytest.raises(DatasetError, match=r"key 'x': shape \[12, .*\] gives 1×1 images of 3 "
                                           r"channel\(s\).*save them as \(N, 3\) feature "
                                           r"vectors.*attack.domain 'unit'"):
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "pixels.npz")), seed=0)


def test_imagefolder_of_one_pixel_images_is_refused_naming_image_size(tmp_path: Path) -> None:
    for name, colour in _COLOURS.items():
        for i in range(4):
            _png(tmp_path / name / f"{i}.png", colour, size=(1, 1))
    with pytest.raises(DatasetError, match=r"1×1 image.*dataset.image_size"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    resized = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8),
                           seed=0)
    assert resized.image_shape == (3, 8, 8)


def test_imagefolder_train_and_val(tmp_path: Path) -> None:
    _tree(tmp_path / "train")
    _tree(tmp_path / "val", per_class=2)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    assert splits.num_classes == 3 and splits.image_shape == (3, 5, 6)
    assert splits.augment == "crop_flip"
    assert len(splits.test) == 6 and len(splits.train) + len(splits.validation) == 12
    for part in (splits.train, splits.test):
        assert part.images.dtype == torch.uint8
        for image, label in zip(part.images, part.labels, strict=True):
            colour = list(_COLOURS.values())[int(label)]  # classes in sorted name order
            assert image[:, 0, 0].tolist() == list(colour)


def test_imagefolder_single_root_splits_test_and_converts_grey(tmp_path: Path) -> None:
    _tree(tmp_path, per_class=5)
    _png(tmp_path / "dog" / "grey.png", (90, 90, 90), mode="L")
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    total = len(splits.train) + len(splits.validation) + len(splits.test)
    assert total == 16 and len(splits.test) == 3  # round(0.2 * 16)
    assert splits.image_shape == (3, 5, 6)
    again = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    assert torch.equal(again.test.labels, splits.test.labels)


def test_imagefolder_tiny_imagenet_layout(tmp_path: Path) -> None:
    for name, colour in _COLOURS.items():
        for i in range(3):
            _png(tmp_path / "train" / name / "images" / f"{name}_{i}.png", colour)
        (tmp_path / "train" / name / f"{name}_boxes.txt").write_text("0 0 1 1")
    lines = []
    for i, name in enumerate(["emu", "cat", "dog", "emu"]):
        _png(tmp_path / "val" / "images" / f"val_{i}.png", _COLOURS[name])
        lines.append(f"val_{i}.png\t{name}\t0\t0\t5\t5")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _png(tmp_path / "test" / "images" / "test_0.png", (0, 0, 0))  # unlabelled: ignored
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8),
                          seed=0)
    assert splits.image_shape == (3, 8, 8)
    assert splits.test.labels.tolist() == [2, 0, 1, 2]
    assert splits.test.images[0, :, 4, 4].tolist() == list(_COLOURS["emu"])


def test_imagefolder_resizes_or_names_the_odd_file(tmp_path: Path) -> None:
    _tree(tmp_path)
    _png(tmp_path / "dog" / "9_big.png", (1, 2, 3), size=(9, 7))
    with pytest.raises(DatasetError, match=r"9_big\.png.*image_size"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8),
                          seed=0)
    assert splits.image_shape == (3, 8, 8)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'path'"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "missing")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "empty")), seed=0)
    _tree(tmp_path / "a" / "train")
    _png(tmp_path / "a" / "val" / "cat" / "0.png", _COLOURS["cat"])
    _png(tmp_path / "a" / "val" / "cow" / "0.png", _COLOURS["cat"])
    with pytest.raises(DatasetError, match="cow"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "a")), seed=0)
    _tree(tmp_path / "b")
    (tmp_path / "b" / "owl").mkdir()
    with pytest.raises(DatasetError, match="owl"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "b")), seed=0)
    _tree(tmp_path / "c")
    (tmp_path / "c" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "c")), seed=0)
    # The tar the service takes, given to the library: say to unpack it.
    import tarfile

    with tarfile.open(tmp_path / "d.tgz", "w:gz") as archive:
        archive.add(tmp_path / "b", arcname="b")
    with pytest.raises(DatasetError, match=r"is not a folder \(an archive: unpack it"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "d.tgz")), seed=0)


def test_imagefolder_scales_16_bit_images_and_refuses_float_ones(tmp_path: Path) -> None:
    # convert("RGB") clips instead of scaling: a 16-bit grey of 32896 (= 128 · 257) came out
    # as 255, a float TIFF in [0, 1] as 0 or 1, both silently.
    _tree(tmp_path, per_class=5)
    Image.fromarray(np.full((5, 6), 128 * 257, np.uint16)).save(tmp_path / "dog" / "deep.png")
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)
    every = torch.cat([splits.train.images, splits.validation.images, splits.test.images])
    greys = [image for image in every if image.unique().tolist() == [128]]
    assert len(greys) == 1 and greys[0].shape == (3, 5, 6)
    Image.fromarray(np.full((5, 6), 0.5, np.float32)).save(tmp_path / "cat" / "float.tiff")
    with pytest.raises(DatasetError, match=r"float\.tiff.*floating-point pixels.*'F'"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path)), seed=0)


def test_imagefolder_names_an_image_over_pillows_pixel_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: PIL.Image.DecompressionBombError (not an OSError) escaped as a traceback.
    _tree(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)  # 6×5 images are over twice the limit
    with pytest.raises(DatasetError, match=r"cannot read image .*\.png"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=8), seed=0)


# --- torchvision formats ---------------------------------------------------------------------

@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_the_python_batches(tmp_path: Path, bytes_keys: bool) -> None:
    written = _write_cifar10(tmp_path, bytes_keys=bytes_keys)
    spec = DatasetSpec(name="cifar10", root=str(tmp_path))
    splits = load_dataset(spec, seed=0)
    assert splits.image_shape == (3, 32, 32) and splits.num_classes == 10
    assert splits.augment == "crop_flip"
    assert len(splits.train) + len(splits.validation) == 20 and len(splits.test) == 6
    # Test order is kept; row r holds the red, green, blue 32×32 planes of image r.
    row = written["test_batch"][2]
    assert torch.equal(splits.test.images[2, 0], torch.from_numpy(row[:1024].reshape(32, 32)))
    assert torch.equal(splits.test.images[2, 2], torch.from_numpy(row[2048:].reshape(32, 32)))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    splits = load_dataset(DatasetSpec(name="cifar100", root=str(tmp_path)), seed=0)
    assert splits.num_classes == 100 and len(splits.test) == 5
    assert splits.train.images.dtype == torch.uint8


def test_svhn_layout_and_label_ten_is_zero(tmp_path: Path) -> None:
    written = _write_svhn(tmp_path)
    splits = load_dataset(DatasetSpec(name="svhn", root=str(tmp_path)), seed=0)
    assert splits.image_shape == (3, 32, 32) and splits.augment == "crop"
    x, _ = written["test"]
    assert torch.equal(splits.test.images[1], torch.from_numpy(x[..., 1]).permute(2, 0, 1))
    assert splits.test.labels.tolist() == [1, 2, 3, 4, 5]
    train_labels = torch.cat([splits.train.labels, splits.validation.labels])
    assert set(train_labels.tolist()) == set(range(10))  # the label 10 became 0


def test_mnist_reads_idx_files(tmp_path: Path) -> None:
    written = _write_mnist(tmp_path)
    splits = load_dataset(DatasetSpec(name="mnist", root=str(tmp_path)), seed=0)
    assert splits.image_shape == (1, 28, 28) and splits.augment == "crop"
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(written["t10k"]))


def test_labels_outside_the_sources_classes_are_refused(tmp_path: Path) -> None:
    # Before: an MNIST idx label of 12 loaded fine and failed inside the loss (IndexError).
    _write_mnist(tmp_path)
    labels = np.arange(5) % 10
    labels[3] = 12
    _write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DatasetError, match=r"'mnist': the test labels .*\[0, 10\).*to 12"):
        load_dataset(DatasetSpec(name="mnist", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize(("name", "looked_for"), [
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
    ("svhn", "train_32x32.mat"), ("mnist", "MNIST"),
])
def test_missing_data_says_what_and_that_download_is_off(tmp_path: Path, name: str,
                                                         looked_for: str) -> None:
    with pytest.raises(DatasetError, match=f"{looked_for}.*download is off"):
        load_dataset(DatasetSpec(name=name, root=str(tmp_path / "nothing")), seed=0)
    with pytest.raises(DatasetError, match="'root'"):
        load_dataset(DatasetSpec(name=name), seed=0)


def test_cifar_missing_or_malformed_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    _pickle(folder / "data_batch_3", {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    with pytest.raises(DatasetError, match="'data'"):
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    _pickle(folder / "data_batch_3", {"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="'labels'"):
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)


class _Planted:
    """Unpickling this would create a file: the restricted unpickler must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    marker = tmp_path / "planted"
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
            {"data": _Planted(marker), "labels": [0]})
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    assert not marker.exists()


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    calls: list[tuple[str, bool]] = []

    def fake_cifar10(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, download))
        if not (Path(root) / "cifar-10-batches-py").exists():
            _write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with pytest.raises(DatasetError):
        load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path)), seed=0)
    assert calls == []
    splits = load_dataset(DatasetSpec(name="cifar10", root=str(tmp_path), download=True), seed=0)
    assert calls == [(str(tmp_path), True)] and len(splits.test) == 6

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", failing)
    with pytest.raises(DatasetError, match=r"downloading 'cifar100'.*network unreachable"):
        load_dataset(DatasetSpec(name="cifar100", root=str(tmp_path), download=True), seed=0)


# --- augmentation ----------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "padding"), [(8, 1), (16, 2), (28, 3), (32, 4), (64, 4)])
def test_crop_padding(size: int, padding: int) -> None:
    assert crop_padding(size) == padding


@pytest.mark.parametrize(("name", "channels", "augment", "expected"), [
    ("cifar10", 3, "auto", "crop_flip"), ("cifar100", 3, "auto", "crop_flip"),
    ("imagefolder", 3, "auto", "crop_flip"), ("npz", 3, "auto", "crop_flip"),
    ("npz", 1, "auto", "crop"), ("digits", 1, "auto", "crop"), ("mnist", 1, "auto", "crop"),
    ("svhn", 3, "auto", "crop"), ("cifar10", 3, "none", "none"), ("digits", 1, "crop_flip",
                                                                   "crop_flip"),
])
def test_resolve_augment(name: str, channels: int, augment: str, expected: str) -> None:
    spec = DatasetSpec(name=name, path="x", augment=augment)
    assert resolve_augment(spec, channels) == expected


def _numbered_images(n: int = 16, c: int = 2, h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)


def test_random_crop_is_a_shifted_window_of_the_reflect_padded_image() -> None:
    images, padding = _numbered_images(), 2
    out = random_crop(images, padding, torch.Generator().manual_seed(7))
    # The offsets are the generator's first draw: dy then dx, each uniform in [0, 2 * padding].
    dy, dx = torch.randint(0, 2 * padding + 1, (2, 16), generator=torch.Generator().manual_seed(7))
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    for i in range(16):
        y, x = int(dy[i]), int(dx[i])
        assert torch.equal(out[i], padded[i, :, y:y + 6, x:x + 5])
        if (y, x) == (padding, padding):
            assert torch.equal(out[i], images[i])
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 1
    # Reflect padding, not zeros: a crop never invents values.
    assert set(out.unique().tolist()) <= set(images.unique().tolist())


def test_random_flip_is_torch_flip_or_identity() -> None:
    images = _numbered_images(n=32)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, torch.flip(i, dims=[2])) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_augment_batch_kinds_and_determinism() -> None:
    images = _numbered_images()
    assert augment_batch(images, "none") is images
    a = augment_batch(images, "crop_flip", torch.Generator().manual_seed(1))
    b = augment_batch(images, "crop_flip", torch.Generator().manual_seed(1))
    c = augment_batch(images, "crop_flip", torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == images.shape
    tiny = augment_batch(torch.rand(4, 1, 2, 2), "crop", torch.Generator().manual_seed(0),
                         padding=4)  # padding is limited to what reflect allows
    assert tiny.shape == (4, 1, 2, 2)
    with pytest.raises(ConfigError, match="augment"):
        augment_batch(images, "rotate")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_matches_cpu_for_a_cpu_generator() -> None:
    images = _numbered_images()
    cpu = augment_batch(images, "crop_flip", torch.Generator().manual_seed(3))
    cuda = augment_batch(images.cuda(), "crop_flip", torch.Generator().manual_seed(3))
    assert torch.equal(cpu, cuda.cpu())


# --- batches ---------------------------------------------------------------------------------

def _uint8_data(n: int = 10) -> ImageTensors:
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4) * 20
    return ImageTensors(images.contiguous(), torch.arange(n))


def test_iterate_batches_in_order_converts_to_float() -> None:
    data = _uint8_data()
    batches = list(iterate_batches(data, 4, device=CPU))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    images = torch.cat([x for x, _ in batches])
    assert images.dtype == torch.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert torch.equal(images, data.images.float() / 255)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    assert [len(y) for _, y in iterate_batches(data, 4, device=CPU, drop_last=True)] == [4, 4]


def test_iterate_batches_shuffle_is_a_seeded_permutation() -> None:
    data = _uint8_data(50)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(
            data, 8, device=CPU, shuffle=True, generator=gen)]).tolist()

    assert sorted(order(0)) == list(range(50))
    assert order(0) == order(0) and order(0) != order(1) and order(0) != list(range(50))


def test_iterate_batches_augments_images_not_labels() -> None:
    data = ImageTensors(_numbered_images(n=12, c=1, h=8, w=8).div(12 * 64), torch.arange(12))

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(iterate_batches(data, 5, device=CPU, shuffle=True, augment="crop_flip",
                                    generator=torch.Generator().manual_seed(seed)))

    first, second = run(0), run(0)
    for (xa, ya), (xb, yb) in zip(first, second, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    padded = F.pad(data.images, (1,) * 4, mode="reflect")  # padding 1 for 8 px images
    for images, labels in first:
        for image, label in zip(images, labels, strict=True):
            # Each output is a window (or flipped window) of its own source image.
            source = padded[int(label)]
            windows = [source[:, y:y + 8, x:x + 8] for y in range(3) for x in range(3)]
            assert any(torch.equal(image, w) or torch.equal(image, w.flip(2)) for w in windows)


def test_iterate_batches_draws_an_epoch_as_batch_by_batch_augmentation_would() -> None:
    # The epoch's augmentation numbers are drawn up front (one copy to a GPU); the batches must be
    # those of shuffling, then augmenting each batch in turn from the same generator.
    data = ImageTensors(_numbered_images(n=23, c=3, h=8, w=8).div(23 * 192), torch.arange(23))
    for kind in ("crop", "crop_flip"):
        got = list(iterate_batches(data, 5, device=CPU, shuffle=True, augment=kind,
                                   generator=torch.Generator().manual_seed(4)))
        generator = torch.Generator().manual_seed(4)
        order = torch.randperm(23, generator=generator)
        expected = [augment_batch(data.images[order[s:s + 5]], kind, generator)
                    for s in range(0, 23, 5)]
        assert [len(x) for x, _ in got] == [5, 5, 5, 5, 3]
        assert all(torch.equal(x, e) for (x, _), e in zip(got, expected, strict=True))


def test_iterate_batches_validates_arguments() -> None:
    with pytest.raises(ConfigError, match="batch_size") as info:
        iterate_batches(_uint8_data(), 0, device=CPU)
    assert info.value.field == "batch_size"
    with pytest.raises(ConfigError, match="augment"):
        iterate_batches(_uint8_data(), 2, device=CPU, augment="mixup")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_iterate_batches_to_cuda_with_cpu_generator() -> None:
    data = _uint8_data(40)
    device = torch.device("cuda")

    def run(d: ImageTensors) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        return [torch.cat([x.flatten(1), y[:, None].float()], 1).cpu() for x, y in
                iterate_batches(d, 16, device=device, shuffle=True, generator=gen,
                                augment="crop")]

    from_cpu, from_cuda = run(data), run(data.to(device))
    assert all(torch.equal(a, b) for a, b in zip(from_cpu, from_cuda, strict=True))


def test_splits_move_to_a_device_whole() -> None:
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    splits = load_dataset(DatasetSpec(name="digits"), seed=0)
    moved = splits.to("meta")  # any device: the move must touch every split
    assert all(part.images.device.type == "meta" and part.labels.device.type == "meta"
               for part in (moved.train, moved.validation, moved.test))
    assert moved.nbytes == splits.nbytes > 0
    assert moved.num_classes == splits.num_classes and moved.augment == splits.augment


def test_npz_with_empty_images_is_refused(tmp_path) -> None:
    import numpy as np

    from rift.config import DatasetSpec
    from rift.data import load_dataset
    from rift.errors import DatasetError

    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((4, 0, 0, 1), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match="at least 1 pixel"):
        load_dataset(DatasetSpec(name="npz", path=str(path)), seed=0)


def test_a_dataset_file_given_to_the_other_reader_says_which_reads_it(tmp_path: Path) -> None:
    """Before: the tar of an ImageFolder tree (what the service takes) given as an npz was
    told "its first bytes are b'cat/0.pn'; save the arrays with np.savez", and an .npz given as
    an ImageFolder to "unpack it and give the folder"."""
    import tarfile

    _tree(tmp_path / "tree")
    with tarfile.open(tmp_path / "d.tgz", "w:gz") as archive:
        archive.add(tmp_path / "tree", arcname=".")
    with pytest.raises(DatasetError, match=r"is a tar archive, not an \.npz: an ImageFolder tree "
                                           r".* dataset 'imagefolder'") as refused:
        load_dataset(DatasetSpec(name="npz", path=str(tmp_path / "d.tgz")), seed=0)
    assert refused.value.field == "dataset.path"
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match=r"is not a folder \(an \.npz of arrays: read it with "
                                           r"dataset 'npz'\)"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "d.npz")), seed=0)
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"is not a folder \(a \.npy file, one array: save the "
                                           r"arrays with np\.savez"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "x.npy")), seed=0)
