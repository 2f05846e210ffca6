"""The dataset format rules, in one place: what an ``.npz`` dataset and an ImageFolder tree may
hold, which files count as images, which images are greyscale (and so how many channels a tree is
read with), which folder of an archive is the tree's root, and which tar members are refused.

Imports no torch (numpy and the standard library only), so the API's upload validation, the
sandboxed validator, the workers and the library's loaders all read the same rules from here.

npz layout (keys ``x``, ``y``, optionally both ``x_test`` and ``y_test``):

- images: uint8 (values 0–255, not only 0s and 1s) or float (values in [0, 1]), N×H×W×C
  (numpy/PIL image code) or N×C×H×W (PyTorch tensors saved with ``.numpy()``), told apart by the
  shape (see :func:`npz_layout`); (N, H, W) is one channel. Values must be finite.
- features: any real (integer or float) array of shape (N, F), one feature vector per row; values
  must be finite in float32 (the library computes in it) and may take any range within it.
- labels: integers from 0 to 2**63 - 1 (int64, the library's label type), shape (N,) or (N, 1);
  ``num_classes`` is the largest label + 1.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any, Literal

import numpy as np

from rift.errors import DatasetError

NPZ_KEYS = ("x", "y", "x_test", "y_test")
#: The largest number of image channels an architecture accepts (``ArchitectureSpec.in_channels``).
MAX_CHANNELS = 16
#: The library refuses only empty images, which would fail inside the first convolution.
LIBRARY_MIN_IMAGE_SIDE = 1
#: The service takes images of at least ``ArchitectureSpec.image_size``'s lower bound (8 px, the
#: size of sklearn's digits).
SERVICE_MIN_IMAGE_SIDE = 8
#: Float images are pixel intensities in this closed interval (the attack's clamping domain).
FLOAT_PIXEL_RANGE = (0.0, 1.0)
#: uint8 images are 8-bit pixels (read as value / 255): an array whose largest value is this
#: holds only 0 and 1, i.e. [0, 1] pixels (a binary mask, floats cast to uint8). An all-zero
#: array (black images) says nothing about its scale and passes.
BINARY_UINT8_MAX = 1
#: Inputs are read as float32 and labels as int64; a value beyond these would change on reading
#: (a float64 of 1e300 becomes inf, a uint64 label of 2**64 - 1 wraps to -1).
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = int(np.iinfo(np.int64).max)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
#: Labelled held-out folders next to ``train/``, tried in this order.
HELD_OUT_FOLDERS = ("val", "test")
TRAIN_FOLDER = "train"
#: Names of split folders in other conventions (compared in lower case): one of them among the
#: class folders of a tree without ``train/``, holding folders of its own, is a split read as one
#: class (Kaggle's ``Training``/``Testing``), which trained silently on mixed classes.
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test",
                                "testing", "eval", "evaluation"})
#: Tiny-ImageNet's held-out layout: ``<held-out>/images/<file>``, labelled by this file beside it.
ANNOTATED_IMAGES = "images"
ANNOTATIONS = "val_annotations.txt"

Content = Literal["images", "features"]
#: ``DatasetSpec.channels``: ImageFolder images read as 1 (grey) or 3 (RGB) channels, or
#: ``"auto"``: 1 when every image the tree holds is greyscale, else 3.
ImageChannels = Literal["auto", 1, 3]
#: Pillow modes of greyscale images: 1-bit, 8-bit and 16-bit grey, and grey with alpha (the
#: alpha is dropped, as reading as RGB drops it).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"})
#: Palette modes: greyscale when every entry of the palette is a grey (see is_grey_image).
PALETTE_MODES = frozenset({"P", "PA"})


# ------------------------------------------------------------------------------------ npz


#: How an .npz (a zip archive) and a .npy file (one bare array) begin.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
#: How to make the file an npz dataset wants, ending the messages about other files.
SAVE_NPZ = "save the arrays with np.savez(path, x=..., y=...)"


#: Formats users keep arrays in, by their first bytes, and how to turn them into an npz.
_OTHER_FORMATS = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file: read its arrays with h5py"),
    (b"MATLAB ", "a MATLAB file: read its arrays with scipy.io.loadmat (h5py for v7.3 files)"),
    (b"\x80", "a Python pickle: unpickle it yourself, if you trust it"),
)


def first_bytes_text(head: bytes) -> str:
    """What a file that is no archive holds, from its first bytes ``head`` (at least 8): its
    first bytes, and the format when it is one users keep arrays in."""
    if not head:
        return "it is empty"
    known = next((f", {name}" for magic, name in _OTHER_FORMATS if head.startswith(magic)), "")
    return f"its first bytes are {head[:8]!r}{known}"


def single_array_problem(what: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> str:
    """The message for a .npy file (``what``: how the caller names it) given as a dataset: one
    array of ``dtype`` and ``shape``, with no keys to find ``x`` and ``y`` under."""
    return (f"{what} holds a single {dtype} array of shape {list(shape)} (a .npy file), not an "
            f".npz archive; {SAVE_NPZ}")


def check_npz_keys(keys: Iterable[str], display_name: str) -> None:
    """Require ``x`` and ``y``, and ``x_test`` and ``y_test`` together or not at all.

    Raises:
        DatasetError: naming the missing key.
    """
    present = set(keys)
    for key in ("x", "y"):
        if key not in present:
            raise DatasetError(
                f"{display_name} has no key '{key}' (keys: {sorted(present)}); an npz dataset "
                "needs 'x' (images or feature vectors) and 'y' (labels), optionally 'x_test' and "
                f"'y_test'{_key_hint(key, present)}")
    if ("x_test" in present) != ("y_test" in present):
        missing = "y_test" if "x_test" in present else "x_test"
        raise DatasetError(f"{display_name} has no key '{missing}': give both 'x_test' and "
                           "'y_test' or neither")


def check_npz_member_names(names: Iterable[str], display_name: str) -> None:
    """Refuse an npz whose zip members name one array twice: the same member name twice, or
    ``x`` beside ``x.npy``. A zip reader opens the last of duplicate names, and numpy's
    ``archive["x"]`` opens a member named ``x`` before ``x.npy``, while the upload read
    ``x.npy``: the job would have trained on an array the upload never checked.

    Raises:
        DatasetError: naming the array and its members.
    """
    seen: dict[str, str] = {}
    for name in names:
        key = name.removesuffix(".npy")
        if key in seen:
            raise DatasetError(
                f"{display_name} holds array {key!r} twice (zip members {seen[key]!r} and "
                f"{name!r}): each array may be stored once, as '<key>.npy' (np.savez)")
        seen[key] = name


#: Names other tools give the arrays an npz dataset keeps under ``x`` and ``y`` (Keras'
#: ``mnist.npz`` holds ``x_train``/``y_train``), compared in lower case.
_KEY_SYNONYMS = {
    "x": ("x_train", "train_x", "images", "inputs", "features", "data"),
    "y": ("y_train", "train_y", "labels", "targets", "target"),
}


def _key_hint(key: str, present: set[str]) -> str:
    """How to name the arrays, when the keys present say how they were meant."""
    if "arr_0" in present:
        return (": the arrays were saved without names (np.savez(path, x, y) calls them arr_0, "
                "arr_1, ...); save them as np.savez(path, x=..., y=...)")
    lower = {name.lower(): name for name in sorted(present)}
    for name in (key, *_KEY_SYNONYMS[key]):
        if name in lower:
            return f": save '{lower[name]}' as '{key}'"
    # A zip of a folder of .npy files (zip -r d.npz arrays/) keeps them as 'arrays/x.npy'.
    nested = sorted(name for name in present if "/" in name
                    and name.rsplit("/", 1)[1].lower() in (key, *_KEY_SYNONYMS[key]))
    if nested:
        return (f": '{nested[0]}.npy' lies in a folder of the zip; the arrays must be at its top "
                "level: save them with np.savez(path, x=..., y=...) (or zip -j the .npy files)")
    return ""


@dataclass(frozen=True)
class NpyHeader:
    """An npz member's shape and dtype, from its ``.npy`` header (no data read).
    ``fortran_order``: the values are stored column-major (``np.save`` of an F-contiguous array,
    such as those ``scipy.io.loadmat`` returns), so the first index varies fastest."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool = False


def read_npy_header(member: IO[bytes], key: str) -> NpyHeader:
    """The header of the ``.npy`` member ``key``, read from the start of ``member``.

    Raises:
        DatasetError: not an array, or an object dtype: object arrays are pickles, and
            unpickling a user's file could run code, so they are refused before any data is read.
    """
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    except ValueError as exc:
        raise DatasetError(f"key '{key}' is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise DatasetError(
            f"key '{key}' holds Python objects (dtype {dtype}); only numeric arrays are read, "
            "because object arrays would be unpickled (save numbers, e.g. "
            f"{key}.astype(np.int64) for labels)")
    return NpyHeader(tuple(int(d) for d in shape), dtype, bool(fortran_order))


@dataclass(frozen=True)
class NpzLayout:
    """How an npz ``x`` array is read.

    ``content`` is ``"images"`` or ``"features"``. For images, ``shape`` is (C, H, W) and
    ``channels_last`` tells that the array is N×H×W×C rather than N×C×H×W; for features,
    ``shape`` is (F,).
    """

    content: Content
    shape: tuple[int, ...]
    channels_last: bool = False

    @property
    def num_features(self) -> int | None:
        return self.shape[0] if self.content == "features" else None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        if self.content != "images":
            return None
        channels, height, width = self.shape
        return channels, height, width


def _is_real(dtype: np.dtype[Any]) -> bool:
    # By kind, not np.issubdtype: numpy counts timedelta64 as a signed integer, and its values
    # then failed float() in the checks (the library crashed with a TypeError, the upload said
    # "cannot read").
    return dtype.kind in "iuf"


def _is_integer(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "iu"


def npz_layout(shape: tuple[int, ...], dtype: np.dtype[Any], key: str,
               min_image_side: int = LIBRARY_MIN_IMAGE_SIDE) -> NpzLayout:
    """The layout of an ``x`` array from its shape and dtype alone (no values read).

    Raises:
        DatasetError: wrong number of dimensions, dtype, channels or image size; names ``key``.
    """
    if len(shape) == 2:
        if not _is_real(dtype):
            raise DatasetError(f"key '{key}': feature vectors (N×F) must be integers or floats; "
                               f"got {dtype}")
        if shape[1] < 1:
            raise DatasetError(f"key '{key}': shape {list(shape)} has no features")
        return NpzLayout("features", (int(shape[1]),))
    if dtype != np.uint8 and dtype.kind != "f":
        # Integer pixels other than uint8: int64 from np.array of Python ints, uint16 from
        # 16-bit scans. Only the user knows their range, so the hint gives both readings.
        hint = (f" (save {key}.astype(np.uint8) if they are 8-bit pixels 0-255, or "
                f"({key} / {key}.max()).astype(np.float32), e.g. / 65535 for 16-bit ones, as "
                "pixels in [0, 1])" if _is_integer(dtype) else "")
        raise DatasetError(f"key '{key}': images must be uint8 or float; got {dtype}{hint}")
    if len(shape) == 3:
        channels, height, width, last = 1, shape[1], shape[2], False
    elif len(shape) != 4:
        raise DatasetError(
            f"key '{key}' must have 4 dimensions (N×H×W×C or N×C×H×W), 3 (N×H×W, one channel) "
            f"or 2 (N×F feature vectors); got shape {list(shape)}")
    else:
        last = _channels_last(shape, dtype, key)
        channels, height, width = ((shape[3], shape[1], shape[2]) if last
                                   else (shape[1], shape[2], shape[3]))
    if min(height, width) < min_image_side:
        raise DatasetError(
            f"key '{key}': shape {list(shape)} gives {height}×{width} images; each side must be "
            f"at least {min_image_side} pixels")
    refuse_one_pixel_images(
        (height, width), f"key '{key}': shape {list(shape)} gives 1×1 images of {channels} "
        "channel(s)", f"save them as (N, {channels}) feature vectors ("
        f"({key}.reshape(len({key}), -1) / 255).astype(np.float32) for 8-bit pixels) and set "
        "attack.domain 'unit' to keep the attack in [0, 1]")
    return NpzLayout("images", (int(channels), int(height), int(width)), last)


def _examples_text(layout: NpzLayout, shape: tuple[int, ...]) -> str:
    if layout.content == "features":
        return f"feature vectors of {layout.shape[0]} values (shape {list(shape)})"
    channels, height, width = layout.shape
    return f"{height}×{width} images of {channels} channel(s) (shape {list(shape)})"


def check_test_inputs(train: NpzLayout, train_dtype: np.dtype[Any], train_shape: tuple[int, ...],
                      test: NpzLayout, test_dtype: np.dtype[Any],
                      test_shape: tuple[int, ...]) -> None:
    """Require ``x_test`` (``test``, from its own shape by :func:`npz_layout`) to be read as ``x``
    (``train``) is: examples of the same content and C×H×W (or F), and images of the same kind,
    8-bit (uint8, read as value / 255) or float. Each array is read in its own memory layout
    (N×H×W×C or N×C×H×W) and floats of any width as float32, so those may differ. Before, the
    upload refused what the library read alike (float16 ``x`` beside float64 ``x_test``), and
    the library's message compared the tensors after reading: "torch.uint8 (3, 8, 8) vs
    torch.uint8 (3, 8, 8)" for an N×C×H×W ``x_test`` beside an N×H×W×C ``x``.

    Raises:
        DatasetError: naming ``x_test``, both shapes or dtypes, and the fix.
    """
    if (test.content, test.shape) != (train.content, train.shape):
        raise DatasetError(
            f"key 'x_test' holds {_examples_text(test, test_shape)} but 'x' holds "
            f"{_examples_text(train, train_shape)}: test examples must be of the training "
            "examples' kind and size")
    if train.content == "images" and (train_dtype == np.uint8) != (test_dtype == np.uint8):
        fix = ("(x_test * 255).round().astype(np.uint8)" if train_dtype == np.uint8
               else "(x_test / 255).astype(np.float32)")
        raise DatasetError(
            f"key 'x_test' holds {test_dtype} images but 'x' holds {train_dtype} ones: store "
            "both as 8-bit pixels (uint8, 0-255) or both as float pixels in [0, 1]; save "
            f"x_test like x: {fix}")


def refuse_one_pixel_images(size: tuple[int, int], what: str, remedy: str) -> None:
    """Refuse images of 1×1 pixels (``size`` is (H, W)), naming ``what`` and the ``remedy``.

    Every stage takes (N, F, 1, 1) inputs for feature vectors (``DatasetSplits.feature_vectors``
    judges by that shape): no [0, 1] box for the attack (``attack.domain`` 'auto'), ``eps`` and
    the feature-scale warning in the values' own units. Before, (N, 1, 1, 3) uint8 pixels were
    read in [0, 1] yet attacked outside it, and warned about as 0–255 features with the advice
    to save them as the uint8 images they were.

    Raises:
        DatasetError: ``size`` is (1, 1).
    """
    if tuple(size) == (1, 1):
        raise DatasetError(
            f"{what}, which RiFT cannot tell from feature vectors (it passes those as (N, F, 1, "
            f"1), attacked in their own units without the [0, 1] box of pixels): {remedy}")


def _channels_last(shape: tuple[int, ...], dtype: np.dtype[Any], key: str) -> bool:
    """Whether a 4-D image array (N, a, b, c) is N×H×W×C rather than N×C×H×W.

    Decided by the shape wherever it can be. A reading that gives square images wins (the usual
    case: (N, 32, 32, 3) and (N, 3, 32, 32), whatever the dtype), and must then have at most
    :data:`MAX_CHANNELS` channels; with no square reading, the one with fewer channels (at most
    :data:`MAX_CHANNELS`). Only a shape that reads both ways alike (e.g. (N, 8, 8, 8)) falls back
    on the dtype's usual layout: uint8 N×H×W×C (numpy/PIL image code), float N×C×H×W (PyTorch
    tensors saved with ``.numpy()``).
    """
    first, middle, end = shape[1], shape[2], shape[3]
    square_first, square_last = middle == end, first == middle
    if square_first and square_last:
        last = bool(dtype == np.uint8)
    elif square_first or square_last:
        last = square_last
    else:
        last = end < first or (end == first and dtype == np.uint8)
    channels = end if last else first
    if not 1 <= channels <= MAX_CHANNELS:
        height, width = (first, middle) if last else (middle, end)
        raise DatasetError(
            f"key '{key}': shape {list(shape)} reads as {height}×{width} images with {channels} "
            f"channels ({'N×H×W×C' if last else 'N×C×H×W'}); at most {MAX_CHANNELS} channels")
    return last


def label_count(shape: tuple[int, ...], dtype: np.dtype[Any], key: str) -> int:
    """The number of labels in a ``y`` array of this shape and dtype ((N,) or (N, 1) integers).

    Raises:
        DatasetError: not 1-D (or N×1), or not integers; names ``key``.
    """
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) == 2 and shape[1] > 1:
        raise DatasetError(
            f"key '{key}' must be 1-D (one class index per example); got shape {list(shape)}, "
            f"one row of {shape[1]} values per example (one-hot or scores?): save "
            f"{key}.argmax(axis=1) instead")
    if len(shape) != 1:
        raise DatasetError(f"key '{key}' must be 1-D (one label per example); got shape "
                           f"{list(shape)}")
    if not _is_integer(dtype):
        # Text labels are class names: astype(np.int64) would fail on them.
        hint = (f"number the class names: names, {key} = np.unique({key}, return_inverse=True)"
                if dtype.kind in "US" else
                f"save {key}.astype(np.int64) if its values are whole numbers")
        raise DatasetError(f"key '{key}' must hold integers (class indices); got {dtype} "
                           f"({hint})")
    return int(shape[0])


def check_has_examples(count: int, key: str, display_name: str) -> None:
    """Require an input array (``x`` or ``x_test``) to hold at least one example: an empty test
    split was accepted on upload and only failed the job.

    Raises:
        DatasetError: naming ``key``.
    """
    if count == 0:
        raise DatasetError(f"key '{key}' in {display_name} holds no examples")


def check_enough_examples(count: int, has_test: bool, where: str, test_source: str) -> None:
    """Require the training examples (``count``, found in ``where``) to be enough for any run: a
    run holds out at least one example for validation and keeps at least one to train on
    (``rift.data.splits.hold_out``), and without a test split of its own (``test_source``:
    ``x_test``, a ``val/`` folder) first one more for the test split. Fewer was accepted on
    upload and failed every job.

    Raises:
        DatasetError: naming ``where``, the count and the minimum.
    """
    needed = 2 if has_test else 3
    if count < needed:
        raise DatasetError(
            f"{where}: {count} training example(s); a run needs at least {needed}: one to train on, "
            "one for the validation split"
            f"{'' if has_test else f' and, as there is no {test_source}, one for the test split'}")


class ValueScan:
    """Checks an array's values chunk by chunk, in bounded memory, and keeps their range.

    ``kind`` is ``"images"``, ``"features"`` or ``"labels"``. Feed chunks (any shape) with
    :meth:`update`; each raises as soon as a chunk breaks the rule, and :meth:`finish` raises for
    a rule on the whole array. The rules: every value finite, also once read as float32
    (features) or int64 (labels); float images in :data:`FLOAT_PIXEL_RANGE`; uint8 images not
    only 0s and 1s (:data:`BINARY_UINT8_MAX`); labels >= 0.
    """

    def __init__(self, kind: Literal["images", "features", "labels"], key: str) -> None:
        self.kind = kind
        self.key = key
        self.minimum: float | None = None
        self.maximum: float | None = None
        self._uint8 = False

    def finish(self) -> None:
        """Check the rules on the whole array, once every chunk went through :meth:`update`.

        Raises:
            DatasetError: uint8 images whose largest value is 1: [0, 1] pixels (a
                binary mask, or floats cast to uint8) that would be read as value / 255, so
                every image near black and an ``eps`` of 8/255 wider than its contrast.
        """
        if self.kind == "images" and self._uint8 and self.maximum is not None \
                and self.maximum == BINARY_UINT8_MAX:
            raise DatasetError(
                f"key '{self.key}': uint8 images are read as value / 255, and the largest value "
                f"here is {int(self.maximum)}: these look like [0, 1] pixels stored as uint8; "
                f"save them as float in [0, 1] ({self.key}.astype(np.float32)) or as 8-bit "
                f"pixels ({self.key} * 255)")

    def update(self, chunk: np.ndarray) -> None:
        """Check one chunk of the array's values.

        Raises:
            DatasetError: NaN or infinite values, features beyond float32's range, float images
                outside [0, 1], negative labels or labels beyond int64.
        """
        if chunk.size == 0:
            return
        self._uint8 = chunk.dtype == np.uint8
        if np.issubdtype(chunk.dtype, np.floating):
            finite = np.isfinite(chunk)
            if not finite.all():
                nan = int(np.isnan(chunk).sum())
                raise DatasetError(
                    f"key '{self.key}' holds NaN or infinite values ({nan} NaN, "
                    f"{int(chunk.size - finite.sum()) - nan} infinite in one chunk)")
        low, high = chunk.min(), chunk.max()
        self.minimum = float(low) if self.minimum is None else min(self.minimum, float(low))
        self.maximum = float(high) if self.maximum is None else max(self.maximum, float(high))
        if self.kind == "labels" and low < 0:
            raise DatasetError(f"key '{self.key}' holds negative labels (smallest {int(low)}); "
                               "labels are class indices >= 0")
        if self.kind == "labels" and int(high) > INT64_MAX:
            raise DatasetError(f"key '{self.key}' holds a label of {int(high)}, beyond int64 "
                               f"({INT64_MAX}); labels are class indices")
        # Float images are held to [0, 1] below; feature vectors have no range of their own.
        if self.kind == "features" and max(-float(low), float(high)) > FLOAT32_MAX:
            raise DatasetError(
                f"key '{self.key}' holds values up to {max(-float(low), float(high)):.4g} in "
                f"magnitude, beyond float32's range ({FLOAT32_MAX:.4g}), which inputs are read "
                "as; rescale the features")
        if self.kind == "images" and np.issubdtype(chunk.dtype, np.floating):
            lowest, highest = FLOAT_PIXEL_RANGE
            if low < lowest or high > highest:
                raise DatasetError(
                    f"key '{self.key}': float images must lie in [{lowest:g}, {highest:g}]; found "
                    f"values in [{_bound_text(float(low))}, {_bound_text(float(high))}]; "
                    f"{_pixel_range_hint(float(low), float(high))}")


#: Float pixels at most this far outside [0, 1] are rounding noise or a resize's overshoot
#: (bicubic and Lanczos ringing), not another scale: the fix is a clip, not a division.
SLIGHT_OVERSHOOT = 0.01


def _bound_text(value: float) -> str:
    # Enough digits to show a value just outside [0, 1]: with 4 significant digits
    # 1.0000001 printed as 1, and the message read "must lie in [0, 1]; found values in [0, 1]".
    return f"{value:.10g}"


def _pixel_range_hint(low: float, high: float) -> str:
    """How to bring float images into [0, 1], judged by their smallest and largest values."""
    lowest, highest = FLOAT_PIXEL_RANGE
    overshoot = max(lowest - low, high - highest)
    if overshoot <= SLIGHT_OVERSHOOT:
        # Before: 1.0000001 was told to "divide by 255" and -1e-9 that the data "look normalised".
        return (f"they leave [0, 1] by at most {overshoot:.3g}, rounding noise or a resize's "
                "overshoot, not another scale: clip them, np.clip(x, 0, 1)")
    if low >= 0:
        return "store 8-bit pixels as uint8, or divide by 255"
    # Negative pixels are normalised data; eps is measured on [0, 1] pixels, so the
    # normalisation belongs inside the model, where architecture.mean/std put it.
    return ("these look normalised: store the pixels in [0, 1] (undo the normalisation, "
            "e.g. (x + 1) / 2 for [-1, 1], x · std + mean for standardised data) and give "
            "architecture.mean/std or architecture.normalization, which normalise inside the "
            "model, so that attack.eps stays in pixel units")


def num_classes_from_labels(largest_label: int) -> int:
    """Classes a model needs for labels up to ``largest_label``: labels are class indices."""
    return largest_label + 1


#: Labels a sparse-labels hint names before "…": enough to show the pattern (3, 7 or 0, 100, 200).
HINT_LABELS_SHOWN = 8


def sparse_labels_hint(*, distinct: int, num_classes: int, smallest: int, largest: int,
                       labels: Sequence[int] | None = None) -> str:
    """The end of a "too few classes" message, for labels that skip numbers: a two-class set
    labelled 3 and 7 counts 8 classes, one labelled 0, 100, 200 counts 201; said, since the fix is
    to renumber them, not to widen the network. Empty when every class below ``num_classes``
    has a label (``distinct == num_classes``).

    ``distinct``: how many distinct labels the dataset uses, from ``smallest`` to ``largest``;
    ``labels``: those labels in ascending order, when known (the first
    :data:`HINT_LABELS_SHOWN` are named). The library (``rift.pipeline``) and the service's job
    creation (``api.job_requests``, from what the upload's validation recorded) both word it here.
    """
    if distinct >= num_classes:
        return ""
    shown = ""
    if labels:
        more = ", …" if len(labels) > HINT_LABELS_SHOWN else ""
        shown = f" ({', '.join(str(label) for label in labels[:HINT_LABELS_SHOWN])}{more})"
    # Labels 1 to 10 are ten classes counted from 1: subtracting the smallest renumbers them.
    shift = (f" (subtract {smallest})" if smallest > 0 and largest - smallest + 1 == distinct
             else "")
    return (f"; the labels are class indices and only {distinct} distinct ones are used"
            f"{shown}: renumber them 0 to {distinct - 1}{shift}")


# ------------------------------------------------------------------------- ImageFolder trees


#: Folders of metadata that archivers add beside the data, ignored like hidden ones: macOS's
#: "Compress" puts AppleDouble files (``._x.png``) under ``__MACOSX/``, and a tree unpacked from
#: such a zip and packed again carries the folder along, where it was read as a class folder
#: without images (the upload was accepted, and the job failed reading it).
METADATA_FOLDERS = frozenset({"__MACOSX"})


def is_hidden(name: str) -> bool:
    """Files and folders whose name starts with a dot are ignored (``.DS_Store``, ``._x.png``),
    and so are archivers' metadata folders (:data:`METADATA_FOLDERS`)."""
    return name.startswith(".") or name in METADATA_FOLDERS


def is_image_file(name: str) -> bool:
    """Whether a file of this name is read as an image (by suffix, case-insensitive)."""
    return not is_hidden(name) and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def is_grey_image(mode: str, palette: Sequence[int] | None) -> bool:
    """Whether an image of Pillow mode ``mode`` is greyscale (read as one channel).

    The mode decides, not the pixels: an RGB file whose pixels happen to be grey counts as colour,
    so the answer comes from the file's header and cannot change with which images are looked at
    first. Palette images (``palette``: the flat RGB palette, ``image.getpalette("RGB")``) are
    greyscale when every palette entry has red = green = blue, used or not (GIFs of grey images
    carry such palettes); a palette image without a palette counts as colour.
    """
    if mode in GREY_MODES:
        return True
    if mode not in PALETTE_MODES or not palette:
        return False
    entries = np.asarray(palette[: len(palette) - len(palette) % 3]).reshape(-1, 3)
    return bool(((entries[:, 0] == entries[:, 1]) & (entries[:, 1] == entries[:, 2])).all())


def imagefolder_channels(requested: ImageChannels, all_grey: bool) -> int:
    """The channels an ImageFolder tree is read with: ``requested``, or for ``"auto"`` 1 when
    ``all_grey`` (every image the tree holds is greyscale, see :func:`is_grey_image`), else 3."""
    if requested != "auto":
        return requested
    return 1 if all_grey else 3


def imagefolder_channels_hint(channels: int, wanted: int, field: str) -> str:
    """The end of an error message about a model for ``wanted`` channels and an ImageFolder tree
    read with ``channels`` under ``"auto"``: how to read it with ``wanted`` instead (``field``
    names the option where the caller's user sets it, e.g. ``config.dataset.channels``)."""
    return (f"; the ImageFolder's images are read with {channels} channel(s) ({field} 'auto': 1 "
            f"when every image is greyscale, else 3): set {field} to {wanted} to read them with "
            f"{wanted}")


def no_classes_problem(tree: str) -> str:
    """The message for a tree (``tree``: its training folder, as the caller names it) without
    class folders. The upload and the library word the tree problems here, so both say the same
    (the library's said less: no fix, no layout)."""
    return f"no class folders in {tree}; expected <class>/<image> or train/<class>/<image>"


def empty_class_problem(folder: str, tree: str) -> str:
    """The message for a class ``folder`` of the training folder ``tree`` holding no image."""
    return (f"class folder {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            f"every folder of {tree} is a class: add its images or remove it")


def unknown_held_out_problem(held_out: str, unknown: Sequence[str], tree: str) -> str:
    """The message for a held-out folder whose class folders ``unknown`` the training folder
    ``tree`` lacks."""
    return (f"{held_out} has class folder(s) {sorted(unknown)} that {tree} lacks; a held-out "
            "class must be a training class (names compare exactly, letter case included)")


def empty_held_out_problem(held_out: str) -> str:
    """The message for a held-out folder whose class folders hold no image."""
    return f"the held-out folder {held_out} holds no image files in its class folders"


def class_folders_problem(classes: Sequence[str], subfolders: Callable[[str], list[str]],
                          where: str) -> str | None:
    """Why the class folders ``classes`` of a tree without ``train/`` (in ``where``) are not
    classes, or None (``subfolders(name)``: a class folder's visible sub-folders):

    - one is named like a split (:data:`SPLIT_FOLDER_NAMES`) and holds folders: its images, of
      several classes, would all be labelled with its name;
    - the only one holds folders: the tree is wrapped in more folders than the one stepped into
      (``tar czf d.tgz /home/me/data`` stores ``home/me/data/...``), refused before as "one
      class", naming a folder of the path.
    """
    for name in classes:
        if name.lower() in SPLIT_FOLDER_NAMES and (inner := sorted(subfolders(name))):
            return (f"{where}: the class folder {name!r} holds folders ({inner[:3]}) and is "
                    "named like a split: its images would all be one class. Put the training "
                    f"class folders in '{TRAIN_FOLDER}/' and the held-out ones in "
                    f"'{HELD_OUT_FOLDERS[0]}/' or '{HELD_OUT_FOLDERS[1]}/' beside it (these "
                    "names, in lower case)")
    if len(classes) == 1 and (inner := sorted(subfolders(classes[0]))):
        return (f"{where}: the only class folder, {classes[0]!r}, holds folders ({inner[:3]}): "
                "the class folders seem to be wrapped in more than one folder; pack the folder "
                "that holds them, from inside it (tar czf data.tgz -C PATH/TO/DATA .)")
    return None


def path_parts(name: str) -> tuple[str, ...]:
    """The parts of a relative POSIX path, without empty and ``.`` parts."""
    return tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))


def parse_annotations(data: bytes, classes: Sequence[str],
                      where: str) -> list[tuple[int, str, int]]:
    """The (line number, file under ``images/``, class index) of each entry of a Tiny-ImageNet
    :data:`ANNOTATIONS` file: one line per held-out image, ``file<TAB>class`` (more
    tab-separated fields, the bounding box, are ignored), the class one of ``classes``.
    ``where`` names the file.

    Raises:
        DatasetError: not UTF-8 text, a line without a training class, or no line at all.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where} is not UTF-8 text: {exc}") from exc
    index = {name: i for i, name in enumerate(classes)}
    pairs: list[tuple[int, str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{where} line {number}: expected 'file<TAB>class' with a class "
                               f"among the train folders; got {line!r}")
        pairs.append((number, fields[0], index[fields[1]]))
    if not pairs:
        raise DatasetError(f"{where} lists no images")
    return pairs


def imagefolder_root(files: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The folder of an archive that holds the ImageFolder tree, from the path parts of its
    visible files (only the first three parts matter).

    Archives often wrap the tree in one top folder (``tar czf d.tgz d/``): a single top-level
    folder that holds every file and holds folders (not only images) is stepped into, once.
    """
    entries = list(files)
    tops = {entry[0] for entry in entries}
    if (len(tops) == 1 and all(len(entry) > 1 for entry in entries)
            and any(len(entry) > 2 for entry in entries)):
        return (next(iter(tops)),)
    return ()


#: The longest file or folder name Linux file systems keep (NAME_MAX).
MAX_PATH_PART_BYTES = 255


def tar_member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is refused, or None: absolute paths, backslashes, ``..``, links and
    anything but plain files and folders are refused, so extraction cannot write outside its
    folder nor create devices."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    if "\x00" in name:
        # From a PAX path record (the plain header ends a name at its first NUL): accepted
        # before, and extraction then failed ("embedded null byte").
        return "contains a NUL byte"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_PATH_PART_BYTES
           for part in PurePosixPath(name).parts):
        return f"has a path part longer than {MAX_PATH_PART_BYTES} bytes (no file system keeps it)"
    if ".." in PurePosixPath(name).parts:
        return "contains '..'"
    if member.issym() or member.islnk():
        # Links to files are common in real trees (deduplicated or snapshot copies, which GNU
        # tar stores as hard links): say how to store the files themselves.
        return ("is a link (pack the tree with tar -h --hard-dereference to store the files "
                "links point to)")
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder (device, fifo, ...)"
    return None


def check_tar_member(member: tarfile.TarInfo, display_name: str) -> None:
    """Raise DatasetError naming ``member`` when :func:`tar_member_problem` refuses it."""
    problem = tar_member_problem(member)
    if problem is not None:
        raise DatasetError(f"{display_name}: member {member.name!r} {problem}; only plain files "
                           "and folders with relative paths are accepted")
