"""Data sets that load without error but would give a silently wrong result are refused at upload
(``rift/image_content.py``, ``validator/image_sample.py``): 0/1 grey PNGs, mostly constant or
all identical images (ImageFolder from a decoded sample, npz from every value), float images
divided by 255 twice, one class. Each refusal names the split and an example."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rift.errors import DatasetError
from validator import dataset as checker
from validator.dataset import inspect_dataset_file
from validator.image_sample import MAX_DECODE_PIXELS, PixelSampler, stride

H, W = 9, 8


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _varied(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)


def _tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def _tree(tmp_path: Path, image: object, per_class: int = 4, val: object = None) -> str:
    """A tar of train/{ant,bee} (and val/ when ``val``); ``image(i)`` gives the i-th image's
    pixels (i counts across the classes)."""
    members: dict[str, bytes] = {}
    for c, name in enumerate(("ant", "bee")):
        for i in range(per_class):
            members[f"d/train/{name}/{i}.png"] = _png(image(c * per_class + i))  # type: ignore[operator]
            if val is not None:
                members[f"d/val/{name}/{i}.png"] = _png(val(c * per_class + i))  # type: ignore[operator]
    return _tar(tmp_path / "t.tar", members)


def _refusal(path: str) -> str:
    with pytest.raises(DatasetError) as error:
        inspect_dataset_file(path, "t.tar", 10**9)
    return error.value.message


def test_zero_one_grey_pngs_are_refused_and_the_same_masks_times_255_pass(tmp_path: Path) -> None:
    # The ImageFolder twin of a 0/1 uint8 npz: before, read as near-black images.
    def mask(i: int) -> np.ndarray:
        return (_varied(i) > 128).astype(np.uint8)

    message = _refusal(_tree(tmp_path, mask))
    assert message.startswith("t.tar's training images (class folders in d/train): images are "
                              "read as 8-bit pixels (value / 255), and the largest value here "
                              "is 1 (e.g. 'd/train/ant/0.png')"), message
    assert "multiply by 255" in message
    found = inspect_dataset_file(_tree(tmp_path, lambda i: mask(i) * 255), "t.tar", 10**9)
    assert found.image_shape == (1, H, W)


def test_mostly_constant_images_are_refused_a_few_pass(tmp_path: Path) -> None:
    def some_black(i: int) -> np.ndarray:  # 2 of 8 black: a few blank frames are real data
        return np.zeros((H, W), np.uint8) if i % 4 == 0 else _varied(i)

    assert inspect_dataset_file(_tree(tmp_path, some_black), "t.tar", 10**9).num_classes == 2

    def most_black(i: int) -> np.ndarray:  # 6 of 8
        return _varied(i) if i % 3 == 2 else np.zeros((H, W), np.uint8)

    assert _refusal(_tree(tmp_path, most_black)) == (
        "t.tar's training images (class folders in d/train): 6 of 8 images are constant (every "
        "pixel one value, e.g. 'd/train/ant/0.png', all 0); a job would train and attack images "
        "with nothing to recognise. At most 50% may be constant: check the export (masks saved "
        "unscaled, floats cast to integers, empty crops)")


def test_the_held_out_split_is_checked_and_named(tmp_path: Path) -> None:
    message = _refusal(_tree(tmp_path, _varied, val=lambda i: np.full((H, W), 7, np.uint8)))
    assert message.startswith("t.tar's held-out images (d/val/): every image is constant"), message
    assert "'d/val/ant/0.png', all 7" in message


def test_identical_images_are_refused(tmp_path: Path) -> None:
    message = _refusal(_tree(tmp_path, lambda i: _varied(0)))
    assert message.startswith("t.tar's training images (class folders in d/train): all 8 images "
                              "are identical (the same values as 'd/train/ant/0.png')"), message


def test_an_image_damaged_past_its_header_is_refused(tmp_path: Path) -> None:
    # Its header reads (the size check passes), its pixels do not: the job would fail on it.
    # Cut short, the file is found truncated from its chunks (any image, sampled or not);
    # garbled at its full length, by decoding it (the sample).
    members = {f"train/{c}/{i}.png": _png(_varied(i + 10 * n))
               for n, c in enumerate(("ant", "bee")) for i in range(3)}
    whole = members["train/bee/0.png"]
    members["train/bee/0.png"] = whole[:60]
    message = _refusal(_tar(tmp_path / "t.tar", members))
    assert "'train/bee/0.png' is truncated" in message, message
    # The compressed pixels of the IDAT chunk (from byte 41) zeroed, every chunk length kept.
    members["train/bee/0.png"] = whole[:45] + bytes(len(whole) - 45 - 16) + whole[-16:]
    message = _refusal(_tar(tmp_path / "t2.tar", members))
    assert "'train/bee/0.png' cannot be decoded" in message, message


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    members = {f"ant/{i}.png": _png(_varied(i)) for i in range(5)}
    assert _refusal(_tar(tmp_path / "t.tar", members)) == (
        "t.tar's class folders: every training label is 'ant' (the only class folder): a "
        "classifier trained on one class learns one answer, and every accuracy of the job would "
        "be trivially 100 %; a data set needs at least two classes")


def test_the_sample_is_bounded_spread_and_deterministic() -> None:
    assert [stride(i) for i in (0, 127, 128, 255, 256, 511, 512)] == [1, 1, 2, 2, 4, 4, 8]
    data = _png(np.arange(4, dtype=np.uint8).reshape(2, 2))
    sampler = PixelSampler()
    for i in range(5000):
        sampler.offer(("train", "ant", f"{i}.png"), ("train", "ant", "*"), f"{i}.png", data, (2, 2))
    final = [image.index for image in sampler.decoded if sampler.final(image)]
    assert final == list(range(0, 5000, 64))  # 79 images, every 64th: spread over the split
    # 128 at stride 1, then 64 a doubling (to 4,096), then every 64th of the last 904
    assert len(sampler.decoded) == 128 + 64 * 5 + 15
    # A held-out folder is its own group: sampled from its first image, whatever came before.
    sampler.offer(("val", "ant", "0.png"), ("val", "ant", "*"), "v.png", data, (2, 2))
    assert sampler.decoded[-1].group == ("val",) and sampler.final(sampler.decoded[-1])


def test_the_pixel_budget_bounds_decoding() -> None:
    data = _png(np.arange(4, dtype=np.uint8).reshape(2, 2))
    sampler = PixelSampler(max_pixels=10)
    for i in range(5):
        sampler.offer(("a", f"{i}.png"), ("a", "*"), f"{i}.png", data, (2, 2))
    assert len(sampler.decoded) == 2
    # Neither the start of a file larger than the bytes read, nor an image too large to decode
    # in the validator's memory, is decoded (a cut-off PNG would read as damaged).
    sampler = PixelSampler()
    sampler.offer(("a", "big.png"), ("a", "*"), "big.png", data[:40], (2, 2), complete=False)
    sampler.offer(("a", "huge.png"), ("a", "*"), "huge.png", data, (MAX_DECODE_PIXELS, 2))
    assert sampler.decoded == [] and sampler.counts == {(): 2}


# ---------------------------------------------------------------------------------------- npz


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64-byte chunks: a 12×12 image (144 values) straddles chunks.
    monkeypatch.setattr(checker, "CHUNK_BYTES", 64)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def _npz_refusal(path: str) -> str:
    with pytest.raises(DatasetError) as error:
        inspect_dataset_file(path, "d.npz", 10**9)
    return error.value.message


@pytest.mark.usefixtures("tiny_chunks")
def test_npz_constant_images_are_counted_across_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 12, 12), dtype=np.uint8)
    y = np.arange(10) % 2
    x[[1, 3, 5, 7]] = 30  # 4 of 10: passes
    assert inspect_dataset_file(_npz(tmp_path, x=x, y=y), "d.npz", 10**9).num_examples == 10
    x[8] = 30
    x[9, 11, 11] = 0  # the last value alone differs: not constant
    assert inspect_dataset_file(_npz(tmp_path, x=x, y=y), "d.npz", 10**9).num_examples == 10
    x[9] = 30  # 6 of 10
    assert _npz_refusal(_npz(tmp_path, x=x, y=y)).startswith(
        "key 'x': 6 of 10 images are constant (every pixel one value, e.g. x[1], all 30)")
    test = np.zeros((3, 12, 12), np.float32)
    test[0, 0, 0] = 0.5
    assert _npz_refusal(_npz(tmp_path, x=rng.random((10, 12, 12)), y=y, x_test=test.astype(np.float64),
                             y_test=np.arange(3))).startswith(
        "key 'x_test': 2 of 3 images are constant (every pixel one value, e.g. x_test[1], all 0)")


@pytest.mark.usefixtures("tiny_chunks")
def test_npz_identical_examples_are_refused(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((12, 12))
    x = np.repeat(image[None], 6, axis=0)
    y = np.arange(6) % 2
    assert _npz_refusal(_npz(tmp_path, x=x, y=y)).startswith(
        "key 'x': all 6 images are identical (the same values as x[0])")
    x[5, 11, 11] += 1e-3
    assert inspect_dataset_file(_npz(tmp_path, x=x, y=y), "d.npz", 10**9).num_examples == 6
    features = np.tile(np.arange(4.0), (6, 1))  # identical feature vectors: also refused
    assert "all 6 feature vectors are identical" in _npz_refusal(_npz(tmp_path, x=features, y=y))
    features[:, 0] = np.arange(6)  # constant rows are not a problem for features
    assert inspect_dataset_file(_npz(tmp_path, x=features, y=y), "d.npz", 10**9).content \
        == "features"


def test_npz_float_images_divided_twice_and_one_class_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8)).astype(np.float32)
    y = np.arange(6) % 2
    assert _npz_refusal(_npz(tmp_path, x=x / 255 / 255, y=y)).startswith(
        "key 'x': float images are read as pixels in [0, 1], and the largest value here is "
        "0.00392 (at most 1/255): these look like 8-bit pixels divided by 255 twice")
    assert inspect_dataset_file(_npz(tmp_path, x=x / 255, y=y), "d.npz", 10**9).num_classes == 2
    assert _npz_refusal(_npz(tmp_path, x=x / 255, y=np.full(6, 3))).startswith(
        "key 'y': every training label is 3: a classifier trained on one class")
