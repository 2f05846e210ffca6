"""The dataset format rules (``rift.dataset_formats``): layouts, value rules checked chunk by
chunk, the ImageFolder root rule and the tar member policy; and that the module imports no torch."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest

from rift.dataset_formats import (
    NpzLayout,
    ValueScan,
    check_npz_keys,
    imagefolder_root,
    is_hidden,
    is_image_file,
    label_count,
    npz_layout,
    sparse_labels_hint,
    tar_member_problem,
)
from rift.errors import DatasetError


def test_imports_no_torch() -> None:
    code = "import sys, rift.dataset_formats, rift.checkpoint_format; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_layouts() -> None:
    assert npz_layout((5, 8, 9, 3), np.dtype(np.uint8), "x") == NpzLayout("images", (3, 8, 9), True)
    assert npz_layout((5, 2, 8, 9), np.dtype(np.float32), "x") == NpzLayout("images", (2, 8, 9))
    assert npz_layout((5, 8, 9), np.dtype(np.float64), "x").image_shape == (1, 8, 9)
    features = npz_layout((5, 13), np.dtype(np.int16), "x")
    assert (features.content, features.num_features, features.image_shape) == ("features", 13,
                                                                                None)
    with pytest.raises(DatasetError, match="at least 8 pixels"):
        npz_layout((5, 4, 4), np.dtype(np.uint8), "x", min_image_side=8)
    with pytest.raises(DatasetError, match=r"'x_test'.*uint8 or float"):
        npz_layout((5, 8, 8), np.dtype(np.int32), "x_test")
    with pytest.raises(DatasetError, match="integers or floats"):
        npz_layout((5, 3), np.dtype(np.complex64), "x")
    assert label_count((7, 1), np.dtype(np.int8), "y") == 7
    with pytest.raises(DatasetError, match="integers"):
        label_count((7,), np.dtype(np.float32), "y")
    with pytest.raises(DatasetError, match=r"'y_test'.*\[7, 10\].*y_test.argmax\(axis=1\)"):
        label_count((7, 10), np.dtype(np.float32), "y_test")  # one-hot labels
    with pytest.raises(DatasetError, match="'y_test'"):
        check_npz_keys({"x", "y", "x_test"}, "d.npz")


@pytest.mark.parametrize(("shape", "dtype", "expected"), [
    # Square images tell the channel axis whatever the dtype's usual layout.
    ((4, 32, 32, 3), np.float32, ((3, 32, 32), True)),
    ((4, 3, 32, 32), np.uint8, ((3, 32, 32), False)),
    ((4, 28, 28, 1), np.float64, ((1, 28, 28), True)),
    ((4, 1, 28, 28), np.uint8, ((1, 28, 28), False)),
    ((4, 8, 8, 3), np.float32, ((3, 8, 8), True)),  # 8 would be a valid channel count too
    ((4, 16, 16, 16), np.uint8, ((16, 16, 16), True)),  # reads alike: the dtype's layout
    ((4, 16, 16, 16), np.float32, ((16, 16, 16), False)),
    # No square reading: the one with fewer channels; a channel count that cannot be, never.
    ((4, 3, 10, 12), np.uint8, ((3, 10, 12), False)),
    ((4, 10, 12, 3), np.float32, ((3, 10, 12), True)),
    ((4, 40, 30, 2), np.float32, ((2, 40, 30), True)),
    ((4, 2, 40, 30), np.uint8, ((2, 40, 30), False)),
])
def test_the_channel_axis_is_read_from_the_shape(
        shape: tuple[int, ...], dtype: type, expected: tuple[tuple[int, ...], bool]) -> None:
    layout = npz_layout(shape, np.dtype(dtype), "x")
    assert (layout.image_shape, layout.channels_last) == expected


@pytest.mark.parametrize(("shape", "message"), [
    ((4, 8, 8, 32), r"8×8 images with 32 channels \(N×H×W×C\); at most 16"),
    ((4, 32, 8, 8), r"8×8 images with 32 channels \(N×C×H×W\); at most 16"),
    ((4, 20, 30, 40), "20 channels"),
])
def test_a_shape_without_a_possible_channel_axis_is_refused(shape: tuple[int, ...],
                                                            message: str) -> None:
    with pytest.raises(DatasetError, match=r"key 'x': shape .*" + message):
        npz_layout(shape, np.dtype(np.float32), "x")


def test_value_scan_over_chunks_keeps_the_range_and_names_the_rule() -> None:
    labels = ValueScan("labels", "y")
    for chunk in np.array_split(np.array([3, 0, 9, 2, 5]), 3):
        labels.update(chunk)
    assert (labels.minimum, labels.maximum) == (0, 9)
    with pytest.raises(DatasetError, match="negative labels"):
        ValueScan("labels", "y").update(np.array([1, -1]))
    images = ValueScan("images", "x")
    images.update(np.array([0.0, 1.0], np.float32))
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        images.update(np.array([0.5, 255.0], np.float32))
    with pytest.raises(DatasetError, match="1 NaN, 1 infinite"):
        ValueScan("features", "x").update(np.array([np.nan, np.inf, 1e30]))
    ValueScan("features", "x").update(np.array([-1e30, 1e30]))  # any finite range
    ValueScan("images", "x").update(np.array([0, 255], np.uint8))  # uint8 pixels


def test_value_scan_refuses_values_that_change_when_read() -> None:
    # Inputs are read as float32 and labels as int64: 1e300 would become inf and 2**64 - 1
    # would wrap to -1, so both are refused here rather than failing (or not) later.
    with pytest.raises(DatasetError, match=r"'x'.*beyond float32"):
        ValueScan("features", "x").update(np.array([0.0, -1e300]))
    with pytest.raises(DatasetError, match=r"'y'.*beyond int64"):
        ValueScan("labels", "y").update(np.array([1, 2**64 - 1], np.uint64))
    ValueScan("features", "x").update(np.array([2**63], np.uint64))  # large but representable
    ValueScan("labels", "y").update(np.array([0, 2**63 - 1], np.uint64))


def test_imagefolder_root_rule() -> None:
    # One wrapping folder that holds folders is stepped into; a flat class tree is not.
    assert imagefolder_root([("d", "train", "cat")]) == ("d",)
    assert imagefolder_root([("cat", "*"), ("dog", "*")]) == ()
    assert imagefolder_root([("cat", "*")]) == ()
    assert imagefolder_root([("d", "cat", "*"), ("*",)]) == ()


def test_tar_member_policy_and_image_names() -> None:
    def member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        return info

    assert tar_member_problem(member("cat/1.png")) is None
    assert tar_member_problem(member("/etc/x")) == "is an absolute path"
    assert tar_member_problem(member("a/../../x")) == "contains '..'"
    assert tar_member_problem(member("a\\x")) == "contains a backslash"
    # Before: "is a link" alone; hard links come from trees of deduplicated files.
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        assert tar_member_problem(member("cat/l", kind)) == (
            "is a link (pack the tree with tar -h --hard-dereference to store the files links "
            "point to)")
    assert "device" in (tar_member_problem(member("cat/d", tarfile.CHRTYPE)) or "")
    assert is_image_file("A.JPEG") and not is_image_file(".x.png") and not is_image_file("a.txt")


@pytest.mark.parametrize(("values", "hint"), [
    (np.array([0.0, 254.0], np.float32), "store 8-bit pixels as uint8, or divide by 255"),
    (np.array([-1.0, 1.0], np.float32), "(x + 1) / 2 for [-1, 1]"),
    (np.array([-2.1, 1.9], np.float32), "x · std + mean for standardised data"),
])
def test_float_pixels_outside_the_unit_range_say_how_to_fix_them(values: np.ndarray,
                                                                 hint: str) -> None:
    # Before: normalised data ([-1, 1], mean 0 std 1) was told to "divide by 255".
    with pytest.raises(DatasetError, match=r"float images must lie in \[0, 1\]") as error:
        ValueScan("images", "x").update(values)
    assert hint in error.value.message
    assert ("divide by 255" in error.value.message) == (values.min() >= 0)


@pytest.mark.parametrize(("values", "shown"), [
    (np.array([0.0, 1.0000001]), "found values in [0, 1.0000001]; they leave [0, 1] by at most 1e-07"),
    (np.array([-1e-9, 1.0]), "found values in [-1e-09, 1]; they leave [0, 1] by at most 1e-09"),
    (np.array([-0.004, 1.008], np.float32), "by at most 0.008"),  # a bicubic resize's ringing
])
def test_float_pixels_just_outside_the_unit_range_are_told_to_clip(values: np.ndarray,
                                                                   shown: str) -> None:
    # Before: 1.0000001 read "must lie in [0, 1]; found values in [0, 1]; ... divide by 255",
    # and -1e-9 that the pixels "look normalised".
    with pytest.raises(DatasetError) as error:
        ValueScan("images", "x").update(values)
    assert shown in error.value.message
    assert error.value.message.endswith("not another scale: clip them, np.clip(x, 0, 1)")
    assert "divide by 255" not in error.value.message
    assert "normalised" not in error.value.message


@pytest.mark.parametrize(("keys", "hint"), [
    # Keras' mnist.npz; np.savez(path, x, y); upper case; other tools' names.
    (["x_train", "y_train", "x_test", "y_test"], "save 'x_train' as 'x'"),
    (["arr_0", "arr_1"], r"saved without names .* np.savez\(path, x=..., y=...\)"),
    (["X", "Y"], "save 'X' as 'x'"),
    (["x", "labels"], "save 'labels' as 'y'"),
    # zip -r d.npz arrays/: before, no hint.
    (["arrays/x", "arrays/y"], r"'arrays/x\.npy' lies in a folder of the zip; the arrays must be "
                               r"at its top level: .*zip -j"),
])
def test_missing_keys_say_what_the_keys_present_were_meant_as(keys: list[str], hint: str) -> None:
    # Before: only "has no key 'x' (keys: [...]); an npz dataset needs 'x' ...".
    with pytest.raises(DatasetError, match=hint):
        check_npz_keys(keys, "d.npz")


def test_text_labels_are_told_to_be_numbered_not_cast() -> None:
    # Before: "save y.astype(np.int64)", which raises on class names.
    with pytest.raises(DatasetError, match=r"names, y = np.unique\(y, return_inverse=True\)"):
        label_count((5,), np.dtype("<U3"), "y")
    with pytest.raises(DatasetError, match=r"y.astype\(np.int64\)"):
        label_count((5,), np.dtype(np.float32), "y")


def test_archivers_metadata_folders_are_hidden() -> None:
    assert is_hidden("__MACOSX") and is_hidden(".DS_Store") and not is_hidden("MACOSX")


def test_integer_images_other_than_uint8_say_how_to_convert() -> None:
    # Before: only "images must be uint8 or float; got int64" (np.array of Python ints).
    with pytest.raises(DatasetError, match=r"got int64 \(save x.astype\(np.uint8\) if they"):
        npz_layout((4, 8, 8, 3), np.dtype(np.int64), "x")
    with pytest.raises(DatasetError, match=r"got complex64$"):
        npz_layout((4, 8, 8, 3), np.dtype(np.complex64), "x")


def test_labels_that_skip_numbers_are_told_to_be_renumbered() -> None:
    # Worded once for the library and the service's job creation.
    assert sparse_labels_hint(distinct=3, num_classes=201, smallest=0, largest=200,
                              labels=[0, 100, 200]) == (
        "; the labels are class indices and only 3 distinct ones are used (0, 100, 200): "
        "renumber them 0 to 2")
    # Ten classes labelled 1 to 10: renumbering is subtracting 1.
    assert sparse_labels_hint(distinct=10, num_classes=11, smallest=1, largest=10,
                              labels=range(1, 11)).endswith(
        "(1, 2, 3, 4, 5, 6, 7, 8, …): renumber them 0 to 9 (subtract 1)")
    # Past the listed bound the count alone is said; every class used: nothing to say.
    assert sparse_labels_hint(distinct=1500, num_classes=3000, smallest=0, largest=2999) == (
        "; the labels are class indices and only 1500 distinct ones are used: renumber them "
        "0 to 1499")
    assert sparse_labels_hint(distinct=12, num_classes=12, smallest=0, largest=11) == ""
