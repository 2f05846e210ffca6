"""The validator's dataset checks (``validator/dataset.py``): every value of every array is read,
in chunks, whatever the compression and memory order; labels give the class count and range."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rift.errors import DatasetError
from validator import dataset as checker
from validator.dataset import inspect_dataset_file


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64-byte chunks: every array below spans many of them.
    monkeypatch.setattr(checker, "CHUNK_BYTES", 64)


def varied(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """Images whose pixels vary within each image and from one image to the next (constant or
    identical images are refused): 8-bit values 2..252, or those / 255 for floats."""
    values = (np.arange(int(np.prod(shape))) * 37 % 251 + 2).reshape(shape)
    return values.astype(np.uint8) if dtype == np.uint8 else (values / 255).astype(dtype)


def write(path: Path, compressed: bool = True, **arrays: np.ndarray) -> str:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return str(path)


@pytest.mark.parametrize("compressed", [True, False])
def test_a_bad_value_anywhere_is_found(tmp_path: Path, compressed: bool) -> None:
    images = np.asfortranarray(np.full((30, 1, 8, 8), 0.25, np.float32))
    images[29, 0, 7, 7] = np.nan  # the last value of a Fortran-ordered array
    path = write(tmp_path / "d.npz", compressed, x=images, y=np.arange(30) % 3)
    with pytest.raises(DatasetError, match="'x' holds NaN"):
        inspect_dataset_file(path, "d.npz", 10**9)
    images[29, 0, 7, 7] = 1.001
    path = write(tmp_path / "e.npz", compressed, x=images, y=np.arange(30) % 3)
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        inspect_dataset_file(path, "e.npz", 10**9)


def test_labels_give_classes_and_range(tmp_path: Path) -> None:
    labels = np.arange(40, dtype=np.int16) % 5 + 2  # 2..6
    path = write(tmp_path / "d.npz", x=varied((40, 8, 8, 3)), y=labels,
                 x_test=varied((3, 8, 8, 3)), y_test=np.array([[9], [2], [3]]))
    found = inspect_dataset_file(path, "d.npz", 10**9)
    # num_examples counts both splits: it bounds each in the job's cost estimate.
    assert (found.content, found.image_shape, found.num_examples) == ("images", (3, 8, 8), 43)
    assert (found.label_min, found.label_max, found.num_classes) == (2, 9, 10)
    # The distinct labels of both splits (9 only in y_test), for job creation's message.
    assert (found.num_distinct_labels, found.distinct_labels) == (6, (2, 3, 4, 5, 6, 9))
    assert type(found).from_json(found.to_json()) == found


@pytest.mark.parametrize(("arrays", "says"), [
    # Before: accepted on upload, and the job failed when the worker's loader refused it.
    ({"x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)},
     "'x_test' in d.npz holds no examples"),
    # Before: accepted everywhere and read as value / 255: near-black images, silently.
    ({"x": (np.arange(10 * 64) % 2).astype(np.uint8).reshape(10, 8, 8)},
     "'x': uint8 images are read as value / 255, and the largest value here is 1"),
    ({"x_test": np.ones((2, 8, 8), np.uint8), "y_test": np.zeros(2, np.int64)},
     "'x_test': uint8 images are read as value / 255"),
    # Before: accepted on upload, and every job failed splitting it.
    ({"x": varied((2, 8, 8)), "y": np.array([0, 1])},
     "'x' in d.npz: 2 training example.s.; a run needs at least 3: one to train on, one for the "
     "validation split and, as there is no x_test, one for the test split"),
    ({"x": varied((1, 8, 8)), "y": np.array([0]),
      "x_test": varied((1, 8, 8)), "y_test": np.array([0])},
     "'x' in d.npz: 1 training example.s.; a run needs at least 2: one to train on, one for the "
     "validation split$"),
])
def test_the_upload_refuses_what_the_loader_refuses(tmp_path: Path, arrays: dict,
                                                    says: str) -> None:
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    good = {"x": varied((10, 8, 8)), "y": np.arange(10) % 2}
    path = write(tmp_path / "d.npz", **{**good, **arrays})
    with pytest.raises(DatasetError, match=says.replace("d.npz", ".*d.npz")):
        inspect_dataset_file(path, "d.npz", 10**9)
    with pytest.raises(DatasetError, match=says.replace("d.npz", ".*d.npz")):
        load_dataset(DatasetSpec(name="npz", path=path), seed=0)


def test_float_channels_last_images_record_their_channels(tmp_path: Path) -> None:
    # What the worker's loader will read (rift.data.npz), the upload records: 3 channels, 12×12.
    path = write(tmp_path / "d.npz", x=varied((10, 12, 12, 3), np.float32),
                 y=np.arange(10) % 2)
    assert inspect_dataset_file(path, "d.npz", 10**9).image_shape == (3, 12, 12)


def test_feature_vectors_any_finite_range(tmp_path: Path) -> None:
    features = np.linspace(-1e6, 1e6, 35 * 4).reshape(35, 4)
    path = write(tmp_path / "f.npz", x=features, y=np.arange(35) % 7)
    found = inspect_dataset_file(path, "f.npz", 10**9)
    assert (found.content, found.num_features, found.image_shape) == ("features", 4, None)
    features[34, 3] = -np.inf
    path = write(tmp_path / "g.npz", x=features, y=np.arange(35) % 7)
    with pytest.raises(DatasetError, match="infinite"):
        inspect_dataset_file(path, "g.npz", 10**9)


def test_a_corrupt_extra_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    write(path, compressed=False, x=varied((10, 8, 8)), y=np.arange(10) % 2)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", b"hello world" * 20)
    data = bytearray(path.read_bytes())
    where = data.find(b"hello world")
    data[where] ^= 0xFF  # the extra member no longer matches its CRC
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"(?i)crc|corrupt"):
        inspect_dataset_file(str(path), "d.npz", 10**9)


def test_memory_stays_flat_for_a_large_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MB of float32 pixels, checked in 8 MiB chunks: the checker allocates chunks, not arrays.
    import tracemalloc

    monkeypatch.setattr(checker, "CHUNK_BYTES", 8 * 1024 * 1024)
    buffer = io.BytesIO()
    np.savez(buffer, x=varied((250, 1, 256, 256), np.float32), y=np.arange(250) % 2)
    path = tmp_path / "big.npz"
    path.write_bytes(buffer.getvalue())
    del buffer
    tracemalloc.start()
    inspect_dataset_file(str(path), "big.npz", 10**10)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * 1024 * 1024, peak


def _mnist_like(count: int) -> np.ndarray:
    # Black borders in every image, varied centres: many pixels are constant across examples.
    images = np.zeros((count, 1, 12, 12), np.float32)
    images[:, :, 4:8, 4:8] = (varied((count, 1, 4, 4)).astype(np.float32) / 255)
    return images


@pytest.mark.parametrize(("x", "says"), [
    (_mnist_like(40), None),
    (np.concatenate([_mnist_like(5), np.full((35, 1, 12, 12), 0.5, np.float32)]),
     r"35 of 40 images are constant \(every pixel one value, e.g. x\[5\], all 0.5\)"),
    (np.tile(np.linspace(-3, 3, 6), (40, 1)), "all 40 feature vectors are identical"),
])
def test_fortran_order_arrays_are_judged_example_by_example(tmp_path: Path, x: np.ndarray,
                                                            says: str | None) -> None:
    """An F-contiguous array (``scipy.io.loadmat`` gives them) is saved column-major: its values
    come one pixel of every example at a time. Before, the upload read them as if row-major, so
    it refused MNIST-like images (black borders: runs of one pixel across examples are constant)
    that the library loads, and passed mostly constant ones that the library refuses."""
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    path = write(tmp_path / "d.npz", compressed=False, x=np.asfortranarray(x),
                 y=np.arange(40) % 4)
    with zipfile.ZipFile(path) as archive, archive.open("x.npy") as member:
        assert np.lib.format.read_magic(member) == (1, 0)
        assert np.lib.format.read_array_header_1_0(member)[1]  # stored column-major
    if says is None:
        assert inspect_dataset_file(path, "d.npz", 10**9).num_examples == 40
        load_dataset(DatasetSpec(name="npz", path=path), seed=0)
        return
    with pytest.raises(DatasetError, match=says):
        inspect_dataset_file(path, "d.npz", 10**9)
    with pytest.raises(DatasetError, match=says):
        load_dataset(DatasetSpec(name="npz", path=path), seed=0)


def test_extra_arrays_are_ignored_by_both_even_object_ones(tmp_path: Path) -> None:
    # Class names or a metadata dict saved beside x and y. Before: an object array among them
    # was accepted on upload (extra members are only read through) and the job's loader refused
    # the file ("key 'meta' holds Python objects").
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    path = write(tmp_path / "d.npz", x=varied((10, 8, 8)), y=np.arange(10) % 2,
                 names=np.array(["cat", "dog"]), meta=np.array({"source": "camera"}, dtype=object))
    assert inspect_dataset_file(path, "d.npz", 10**9).num_classes == 2
    assert load_dataset(DatasetSpec(name="npz", path=path), seed=0).num_classes == 2


def test_an_archive_that_is_no_npz_nor_tar_says_what_to_send(tmp_path: Path) -> None:
    # Before: "d.zip has no key 'x' (keys: [])", for a zipped ImageFolder tree.
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/cat/0.png", b"\x89PNG")
        archive.writestr("data/dog/0.png", b"\x89PNG")
    with pytest.raises(DatasetError, match=r"zip archive of 2 image file\(s\).*tar czf"):
        inspect_dataset_file(str(path), "d.zip", 10**9)
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(write(tmp_path / "d.npz", x=varied((10, 8, 8)), y=np.arange(10) % 2),
                      "d.npz")
    with pytest.raises(DatasetError, match=r"upload 'd\.npz' itself"):
        inspect_dataset_file(str(path), "d.zip", 10**9)
    # gzip d.npz: before, "not a readable tar archive: bad checksum".
    import gzip

    (tmp_path / "d.npz.gz").write_bytes(gzip.compress((tmp_path / "d.npz").read_bytes()))
    with pytest.raises(DatasetError, match=r"compressed \.npz .*upload the \.npz itself"):
        inspect_dataset_file(str(tmp_path / "d.npz.gz"), "d.npz.gz", 10**9)


def test_the_inputs_value_range_is_recorded_per_channel(tmp_path: Path) -> None:
    # x and x_test both count (channel 1's largest value is in x_test); uint8 pixels are
    # recorded as the library reads them, value / 255.
    x, x_test = varied((40, 8, 8, 3)), varied((3, 8, 8, 3))
    x[..., 1], x_test[..., 1] = np.minimum(x[..., 1], 200), np.minimum(x_test[..., 1], 200)
    x_test[0, 0, 0, 1] = 240
    path = write(tmp_path / "d.npz", x=x, y=np.arange(40) % 5, x_test=x_test,
                 y_test=np.arange(3))
    found = inspect_dataset_file(path, "d.npz", 10**9)
    both = np.concatenate([x, x_test])
    assert found.channel_value_min == tuple(float(v) / 255 for v in both.min(axis=(0, 1, 2)))
    assert found.channel_value_max == tuple(float(v) / 255 for v in both.max(axis=(0, 1, 2)))
    assert found.channel_value_max[1] == 240 / 255
    assert (found.value_min, found.value_max) == (both.min() / 255, both.max() / 255)
    assert type(found).from_json(found.to_json()) == found


def test_features_past_the_bound_record_their_overall_range_only(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(20, 1001)).astype(np.float32) * 3
    path = write(tmp_path / "d.npz", x=np.asfortranarray(features), y=np.arange(20) % 2)
    found = inspect_dataset_file(path, "d.npz", 10**9)
    assert (found.value_min, found.value_max) == (float(features.min()), float(features.max()))
    assert (found.channel_value_min, found.channel_value_max) == (None, None)
    path = write(tmp_path / "e.npz", x=np.asfortranarray(features[:, :7]), y=np.arange(20) % 2)
    found = inspect_dataset_file(path, "e.npz", 10**9)
    assert found.channel_value_min == tuple(float(v) for v in features[:, :7].min(axis=0))


@pytest.mark.parametrize(("x", "x_test"), [
    (varied((10, 8, 8, 3), np.float16), varied((4, 8, 8, 3), np.float64)),
    (varied((10, 3, 8, 8), np.float32), varied((4, 3, 8, 8), np.float64)),
    (np.arange(30).reshape(10, 3) % 7, np.linspace(0, 1, 12).reshape(4, 3)),  # int, float features
    (varied((10, 8, 8, 3)), varied((4, 3, 8, 8))),  # N×H×W×C beside N×C×H×W
])
def test_x_test_read_like_x_is_accepted_by_both(tmp_path: Path, x: np.ndarray,
                                                  x_test: np.ndarray) -> None:
    """Floats of any width are read as float32 and each array in its own memory layout, so
    these are the same data to the library. Before, the upload refused them ("must match 'x' in
    layout and dtype: float64 [8, 8, 3] vs float16 [8, 8, 3]") and the library loaded them."""
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    path = write(tmp_path / "d.npz", x=x, y=np.arange(10) % 2, x_test=x_test,
                 y_test=np.arange(4) % 2)
    found = inspect_dataset_file(path, "d.npz", 10**9)
    loaded = load_dataset(DatasetSpec(name="npz", path=path), seed=0)
    assert found.num_examples == 14 and len(loaded.test) == 4
    assert found.image_shape in (loaded.image_shape, None)
    # The recorded range per channel is the loaded data's (each array's own channel axis).
    scale = 255 if x.dtype == np.uint8 else 1
    splits = (loaded.train, loaded.validation, loaded.test)
    images = torch.cat([part.images.float().flatten(2) for part in splits]) / scale
    assert found.channel_value_max == pytest.approx(images.amax(dim=(0, 2)).tolist())
    assert found.channel_value_min == pytest.approx(images.amin(dim=(0, 2)).tolist())


@pytest.mark.parametrize(("arrays", "says"), [
    # Before, the library's message compared the tensors it had read: "torch.float32 (3, 8, 8)
    # vs torch.uint8 (3, 8, 8)", and for an N×C×H×W x_test "torch.uint8 (3, 8, 8) vs
    # torch.uint8 (3, 8, 8)"; the upload's named no fix.
    ({"x_test": varied((4, 8, 8, 3), np.float32)},
     r"key 'x_test' holds float32 images but 'x' holds uint8 ones: store both as 8-bit pixels "
     r".*save x_test like x: \(x_test \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
    ({"x_test": varied((4, 8, 9, 3))},
     r"key 'x_test' holds 8×9 images of 3 channel\(s\) \(shape \[4, 8, 9, 3\]\) but 'x' holds "
     r"8×8 images of 3 channel\(s\) \(shape \[10, 8, 8, 3\]\)"),
    # Before: numpy counts timedelta64 as an integer; the library crashed with a TypeError and
    # the upload said "cannot read d.npz: TypeError: ...".
    ({"y": (np.arange(10) % 2).astype("m8[s]")},
     r"key 'y' must hold integers \(class indices\); got timedelta64\[s\]"),
    ({"x": np.arange(30).reshape(10, 3).astype("m8[s]"), "x_test": np.ones((4, 3))},
     r"key 'x': feature vectors \(N×F\) must be integers or floats; got timedelta64\[s\]"),
])
def test_x_test_unlike_x_gets_one_message_from_both(tmp_path: Path, arrays: dict,
                                                     says: str) -> None:
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    good = {"x": varied((10, 8, 8, 3)), "y": np.arange(10) % 2, "x_test": varied((4, 8, 8, 3)),
            "y_test": np.arange(4) % 2}
    path = write(tmp_path / "d.npz", **{**good, **arrays})
    with pytest.raises(DatasetError, match=says):
        inspect_dataset_file(path, "d.npz", 10**9)
    with pytest.raises(DatasetError, match=says):
        load_dataset(DatasetSpec(name="npz", path=path), seed=0)


def _npy(path: Path) -> None:
    with path.open("wb") as file:
        np.save(file, varied((10, 8, 8)))


@pytest.mark.parametrize(("make", "upload_says", "library_says"), [
    # Before, the upload said only "is neither an .npz file nor a tar archive of an ImageFolder
    # tree", for each of these, naming neither what the file was nor what to send.
    (_npy, r"d\.npz holds a single uint8 array of shape \[10, 8, 8\] \(a \.npy file\), not an "
           r"\.npz archive; save the arrays with np\.savez\(path, x=\.\.\., y=\.\.\.\)", None),
    (lambda path: path.write_bytes(b""),
     r"d\.npz is neither an \.npz file nor a tar archive of an ImageFolder tree \(it is empty\); "
     r"save the arrays with np\.savez\(path, x=\.\.\., y=\.\.\.\), or pack an ImageFolder tree "
     r".*tar czf data\.tgz -C FOLDER \.", r"\(it is empty\); save the arrays with np\.savez"),
    (lambda path: path.write_bytes(b"a,b,label\n1,2,0\n"),
     r"\(its first bytes are b'a,b,labe'\); save the arrays with np\.savez",
     r"\(its first bytes are b'a,b,labe'\); save the arrays with np\.savez"),
    # Formats arrays are kept in are named, with the reader to load them (before: the bytes).
    (lambda path: path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600)),
     r"an HDF5 file: read its arrays with h5py\); save the arrays with np\.savez",
     r"an HDF5 file: read its arrays with h5py\); save the arrays with np\.savez"),
    (lambda path: path.write_bytes(b"MATLAB 5.0 MAT-file, Platform: posix" + bytes(600)),
     r"a MATLAB file: read its arrays with scipy\.io\.loadmat",
     r"a MATLAB file: read its arrays with scipy\.io\.loadmat"),
])
def test_a_file_that_is_no_archive_says_what_it_is_and_what_to_send(
        tmp_path: Path, make, upload_says: str, library_says: str | None) -> None:
    from rift.config import DatasetSpec
    from rift.data import load_dataset

    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(DatasetError, match=upload_says):
        inspect_dataset_file(str(path), "d.npz", 10**9)
    with pytest.raises(DatasetError, match=library_says or upload_says.replace(r"d\.npz", ".*")):
        load_dataset(DatasetSpec(name="npz", path=str(path)), seed=0)
