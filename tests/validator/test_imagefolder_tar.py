"""The validator's ImageFolder tar checks (``validator/dataset.py``): the channels recorded for a
tree are those the library reads it with (``channels: "auto"``), decided from every image's
header over the folders the library reads."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rift.config import DatasetSpec
from rift.data import load_dataset
from rift.errors import DatasetError
from validator.dataset import inspect_dataset_file, scan_tar

SIZE = (7, 9)  # (W, H)


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _ramp(start: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    # Pixels that vary (constant or identical images are refused), starting at ``start``.
    width, height = size
    return ((start + np.arange(height * width)) % 256).astype(np.uint8).reshape(height, width)


def _grey(level: int = 90, size: tuple[int, int] = SIZE) -> Image.Image:
    return Image.fromarray(_ramp(level, size))


def _colour(shift: int = 0) -> Image.Image:
    red = _ramp(150 + shift)
    return Image.fromarray(np.stack([red, red // 16, red // 16], axis=-1))


def _classes(folder: Path, per_class: int = 3,
             image: Callable[[int], Image.Image] = _grey) -> None:
    for number, name in enumerate(("ant", "bee")):
        for i in range(per_class):
            _save(folder / name / f"{i}.png", image(40 + 60 * i + 7 * number))


def _tar(tree: Path, path: Path) -> str:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(tree, arcname="wrapped")  # one top folder, stepped into as the root
    return str(path)


def _grey_tree(root: Path) -> None:
    _classes(root / "train")
    _classes(root / "val", per_class=1)


def _sixteen_bit(root: Path) -> None:
    _classes(root, per_class=3,
             image=lambda start: Image.fromarray(_ramp(start).astype(np.uint16) * 50 + 5000))


def _colour_in_val(root: Path) -> None:
    _grey_tree(root)
    _save(root / "val" / "bee" / "red.png", _colour())


def _colour_in_unread_test(root: Path) -> None:
    # Tiny-ImageNet style: val/ is labelled, so the unlabelled test/images are not read.
    _grey_tree(root)
    _save(root / "test" / "images" / "t0.png", _colour())


def _colour_in_read_test(root: Path) -> None:
    # No labelled val/: test/ with class folders is the held-out split the library reads.
    _classes(root / "train")
    _classes(root / "test", per_class=1, image=_colour)


def _grey_palette(root: Path) -> None:
    _classes(root)
    palette = Image.new("P", SIZE, 3)
    palette.putpalette([v for level in range(256) for v in (level, level, level)])
    _save(root / "ant" / "p.gif", palette)


TREES = {
    "grey": (_grey_tree, 1),
    "16-bit grey": (_sixteen_bit, 1),
    "grey palette": (_grey_palette, 1),
    "colour in val": (_colour_in_val, 3),
    "colour only in unread test": (_colour_in_unread_test, 1),
    "colour in the read test": (_colour_in_read_test, 3),
}


@pytest.mark.parametrize("name", TREES)
def test_the_recorded_channels_are_the_librarys(tmp_path: Path, name: str) -> None:
    make, channels = TREES[name]
    make(tmp_path / "tree")
    found = inspect_dataset_file(_tar(tmp_path / "tree", tmp_path / "t.tgz"), "t.tgz", 10**9)
    assert found.image_shape == (channels, 9, 7)
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "tree")), seed=0)
    assert splits.image_shape == found.image_shape


def test_the_first_image_scan_knows_colour_but_not_all_grey(tmp_path: Path) -> None:
    # full=False (archives stored before their geometry was recorded) reads one image: a colour
    # one settles RGB; a grey one leaves the tree's channels to the whole scan.
    _grey_tree(tmp_path / "grey")
    with open(_tar(tmp_path / "grey", tmp_path / "g.tgz"), "rb") as handle:
        scan = scan_tar(handle, "g.tgz", 10**9, full=False)
    assert scan.first is not None and (scan.first.height, scan.first.width) == (9, 7)
    assert scan.first.grey
    _classes(tmp_path / "colour", image=_colour)
    with open(_tar(tmp_path / "colour", tmp_path / "c.tgz"), "rb") as handle:
        assert not scan_tar(handle, "c.tgz", 10**9, full=False).first.grey  # type: ignore[union-attr]


def test_an_unreadable_image_is_refused_where_the_library_reads_it(tmp_path: Path) -> None:
    # Before: accepted on upload, and the job failed reading it. Outside the folders the library
    # reads (here an unlabelled test/images beside val/) it still decides nothing.
    _grey_tree(tmp_path / "tree")

    def archive_with(member: str) -> str:
        path = tmp_path / f"{member.replace('/', '_')}.tar"
        with tarfile.open(path, "w") as archive:
            info = tarfile.TarInfo(member)
            info.size = len(b"not a png")
            archive.addfile(info, io.BytesIO(b"not a png"))
            archive.add(tmp_path / "tree" / "train", arcname="train")
            archive.add(tmp_path / "tree" / "val", arcname="val")
        return str(path)

    for member in ("train/ant/0-broken.png", "val/bee/0-broken.png"):
        with pytest.raises(DatasetError, match=f"'{member}' is not an image Pillow can read"):
            inspect_dataset_file(archive_with(member), "t.tar", 10**9)
        with pytest.raises(DatasetError, match="cannot read image"):  # what the job would hit
            load_dataset(DatasetSpec(name="imagefolder", path=str(_unpacked(tmp_path, member))),
                         seed=0)
    found = inspect_dataset_file(archive_with("test/images/0-broken.png"), "t.tar", 10**9)
    # The unread test/images/ file does not count: num_examples is what a job reads. Before: 9.
    assert found.image_shape == (1, 9, 7) and found.num_examples == 8
    loaded = load_dataset(DatasetSpec(name="imagefolder", path=str(
        _unpacked(tmp_path, "test/images/0-broken.png"))), seed=0)
    assert len(loaded.train) + len(loaded.validation) + len(loaded.test) == 8


def _unpacked(tmp_path: Path, member: str) -> Path:
    tree = tmp_path / f"unpacked-{member.replace('/', '_')}"
    for part in ("train", "val"):
        for image in (tmp_path / "tree" / part).rglob("*.png"):
            _save(tree / image.relative_to(tmp_path / "tree"), Image.open(image))
    (tree / member).parent.mkdir(parents=True, exist_ok=True)
    (tree / member).write_bytes(b"not a png")
    return tree


@pytest.mark.parametrize(("held_out", "says"), [
    (False, "t.tar's class folders: 2 training example(s); a run needs at least 3: one to train "
            "on, one for the validation split and, as there is no val/ or test/ folder, one for "
            "the test split"),
    (True, None),  # 2 training images and a val/ folder: enough
])
def test_too_few_training_images_for_any_run_are_refused(tmp_path: Path, held_out: bool,
                                                         says: str | None) -> None:
    # Before: accepted on upload, and every job failed splitting them.
    for number, name in enumerate(("ant", "bee")):
        _save(tmp_path / "tree" / "train" / name / "0.png", _grey(number))
        if held_out:
            _save(tmp_path / "tree" / "val" / name / "0.png", _grey(number + 2))
    path = _tar(tmp_path / "tree", tmp_path / "t.tar")
    if says is None:
        assert inspect_dataset_file(path, "t.tar", 10**9).num_classes == 2
        return
    with pytest.raises(DatasetError) as error:
        inspect_dataset_file(path, "t.tar", 10**9)
    assert error.value.message == says


def _larger() -> Image.Image:
    return _grey(90, (SIZE[0] + 4, SIZE[1] + 2))


SIZED_TREES = {
    "one size": (_grey_tree, False),
    "another size in a class folder": (
        lambda root: (_grey_tree(root), _save(root / "train" / "bee" / "big.png", _larger())),
        True),
    "another size in val": (
        lambda root: (_grey_tree(root), _save(root / "val" / "ant" / "big.png", _larger())), True),
    "every image of a class another size": (
        lambda root: (_classes(root / "train"),
                      [_save(root / "train" / "cat" / f"{i}.png", _larger()) for i in range(3)]),
        True),
    "another size only in unread test": (
        lambda root: (_grey_tree(root), _save(root / "test" / "images" / "t.png", _larger())),
        False),
}


@pytest.mark.parametrize("name", SIZED_TREES)
def test_images_of_several_sizes_are_recorded_where_the_library_needs_a_resize(
        tmp_path: Path, name: str) -> None:
    """``image_sizes_differ`` is true exactly when the library, not told to resize, refuses the
    tree; with ``image_size`` it reads it."""
    make, differ = SIZED_TREES[name]
    make(tmp_path / "tree")
    found = inspect_dataset_file(_tar(tmp_path / "tree", tmp_path / "t.tgz"), "t.tgz", 10**9)
    assert found.image_sizes_differ is differ
    assert found.image_shape == (1, 9, 7)  # a read image's, never the unread test image's
    unresized = DatasetSpec(name="imagefolder", path=str(tmp_path / "tree"))
    if differ:
        with pytest.raises(DatasetError, match="image_size"):
            load_dataset(unresized, seed=0)
    else:
        load_dataset(unresized, seed=0)
    resized = load_dataset(unresized.model_copy(update={"image_size": 8}), seed=0)
    assert resized.image_shape == (1, 8, 8)


def _empty_class_folder(root: Path) -> None:
    _classes(root)
    (root / "cow").mkdir()


def _class_folder_of_notes(root: Path) -> None:
    _classes(root)
    (root / "cow").mkdir()
    (root / "cow" / "notes.txt").write_text("photos to come")


def _held_out_class_train_lacks(root: Path) -> None:
    _classes(root / "train")
    _classes(root / "val", per_class=1)
    _save(root / "val" / "cow" / "0.png", _grey(11))


def _held_out_class_folders_without_images(root: Path) -> None:
    _classes(root / "train")
    for name in ("ant", "bee"):
        (root / "val" / name).mkdir(parents=True)


def _splits_named_otherwise(root: Path) -> None:
    # Kaggle's layout: no train/, so Training/ and Testing/ were read as two classes.
    _classes(root / "Training")
    _classes(root / "Testing", per_class=1)


def _annotated(lines: str) -> Callable[[Path], None]:
    # Tiny-ImageNet's held-out layout: val/images/<file>, labelled by val/val_annotations.txt.
    def make(root: Path) -> None:
        _classes(root / "train")
        for i in range(2):
            _save(root / "val" / "images" / f"v{i}.png", _grey(20 + i))
        (root / "val" / "val_annotations.txt").write_text(lines)
    return make


def _wrapped_twice(root: Path) -> None:
    # tar czf d.tgz /home/me/data stores home/me/data/<class>/...: one wrapper is stepped into.
    _classes(root / "me" / "data")


_NO_IMAGE = (r"class folder .*cow holds no image files \(.*\); every folder of .* is a class: "
             "add its images or remove it")

REFUSED_TREES = {
    "class folders wrapped in two folders": (
        _wrapped_twice, r"the only class folder, 'me', holds folders \(\['data'\]\)",
        r"the only class folder, 'me', holds folders \(\['data'\]\)"),
    "annotations naming a class train/ lacks": (
        _annotated("v0.png\tant\t0 0 1 1\nv1.png\tcow\t0 0 1 1\n"),
        r"'wrapped/val/val_annotations.txt' line 2: expected 'file<TAB>class'",
        "line 2: expected 'file<TAB>class'"),
    "annotations naming a missing image": (
        _annotated("v0.png\tant\n\nv9.png\tbee\n"),
        r"'wrapped/val/val_annotations.txt' line 3: images/v9.png is not in the archive",
        r"line 3: .*v9.png does not exist"),

    # The library's words are the upload's (rift.dataset_formats): before, it named no fix.
    "an empty class folder": (_empty_class_folder, "class folder 'wrapped/cow' holds no image",
                              _NO_IMAGE),
    "a class folder of other files": (_class_folder_of_notes,
                                      "class folder 'wrapped/cow' holds no image", _NO_IMAGE),
    "a held-out class train/ lacks": (_held_out_class_train_lacks,
                                      r"'wrapped/val' has class folder\(s\) \['cow'\] that "
                                      "'wrapped/train' lacks",
                                      r"\['cow'\] that .*train lacks; a held-out class must be a "
                                      r"training class \(names compare exactly"),
    "held-out class folders without images": (_held_out_class_folders_without_images,
                                              "the held-out folder 'wrapped/val' holds no image",
                                              "the held-out folder .*val holds no image files in "
                                              "its class folders"),
    "splits not named train/ and val/": (_splits_named_otherwise,
                                         "'Testing' holds folders .* named like a split",
                                         "'Testing' holds folders .* named like a split"),
}


@pytest.mark.parametrize("name", REFUSED_TREES)
def test_the_upload_refuses_the_trees_the_library_refuses(tmp_path: Path, name: str) -> None:
    """The upload judges the tree by its folders, as the library does, not by the folders that
    hold images. Before: each was accepted on upload (its classes and held-out split found from
    the image files alone), and the job failed reading it (or, for splits named otherwise,
    trained on two "classes" of mixed images)."""
    make, upload_says, library_says = REFUSED_TREES[name]
    make(tmp_path / "tree")
    with pytest.raises(DatasetError, match=upload_says):
        inspect_dataset_file(_tar(tmp_path / "tree", tmp_path / "t.tgz"), "t.tgz", 10**9)
    with pytest.raises(DatasetError, match=library_says):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "tree")), seed=0)


def test_a_macosx_metadata_folder_is_ignored_by_both(tmp_path: Path) -> None:
    # A tree unpacked from a macOS zip and packed again keeps __MACOSX/ (AppleDouble files). Before:
    # the upload ignored it (no visible image) and the library read it as a class folder without
    # images, failing the job.
    _classes(tmp_path / "tree")
    (tmp_path / "tree" / "__MACOSX" / "ant").mkdir(parents=True)
    (tmp_path / "tree" / "__MACOSX" / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    found = inspect_dataset_file(_tar(tmp_path / "tree", tmp_path / "t.tgz"), "t.tgz", 10**9)
    splits = load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "tree")), seed=0)
    assert found.num_classes == splits.num_classes == 2


def _png_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def test_a_truncated_image_outside_the_sample_is_refused(tmp_path: Path) -> None:
    # 140 images in one class folder: the sample decodes the first 128 and every 2nd after, so
    # the 132nd (index 131) is never decoded. Before: the upload passed it (its header reads),
    # and the job failed decoding it ("image file is truncated").
    path = tmp_path / "t.tar"
    rng = np.random.default_rng(0)

    def noise() -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8))

    members = {f"ant/{i:03d}.png": _png_bytes(noise(), format="PNG") for i in range(140)}
    members.update({f"bee/{i}.jpg": _png_bytes(noise(), format="JPEG") for i in range(3)})
    members["ant/131.png"] = members["ant/131.png"][:200]
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"'ant/131\.png' is truncated"):
        inspect_dataset_file(str(path), "t.tar", 10**9)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "tree", filter="data")
    with pytest.raises(DatasetError, match=r"131\.png.*truncated"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "tree")), seed=0)


@pytest.mark.parametrize(("pixels", "says"), [
    (np.arange(256, dtype=np.int32).reshape(16, 16) * 4096, "32-bit integer pixels .mode 'I'."),
    (np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "floating-point pixels .mode 'F'."),
])
def test_a_32_bit_or_float_image_outside_the_sample_is_refused(tmp_path: Path, pixels: np.ndarray,
                                                               says: str) -> None:
    # As above, ant/131 is never decoded by the sample. Before: a TIFF of 32-bit or float pixels
    # there was accepted (only decoding refused it), and the job failed reading it; its header
    # names the mode, so every such image is found.
    path = tmp_path / "t.tar"
    rng = np.random.default_rng(0)
    names = [f"ant/{i:03d}.png" for i in range(140) if i != 131] + [f"bee/{i}.png" for i in range(3)]
    members = {name: _png_bytes(Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)),
                                format="PNG") for name in names}
    members["ant/131.tif"] = _png_bytes(Image.fromarray(pixels), format="TIFF")
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=rf"t\.tar: image 'ant/131\.tif' has {says}"):
        inspect_dataset_file(str(path), "t.tar", 10**9)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "tree", filter="data")
    with pytest.raises(DatasetError, match=rf"131\.tif has {says}"):
        load_dataset(DatasetSpec(name="imagefolder", path=str(tmp_path / "tree")), seed=0)


@pytest.mark.parametrize("options", [
    {"format": "PNG"}, {"format": "JPEG"}, {"format": "JPEG", "progressive": True},
    {"format": "BMP"}, {"format": "TIFF"}])
def test_the_truncation_check_agrees_with_pillow_at_every_cut(options: dict) -> None:
    """Whether a file is whole is told without decoding it (``_truncated``); the verdict must be
    Pillow's (which the library's read is) for every length the file may be cut to."""
    from validator.dataset import _probe_image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), np.uint8))
    data = _png_bytes(image, **options)
    for cut in range(len(data) // 3, len(data) + 1):
        probe = _probe_image(data[:cut], complete=True, name="x")
        if probe is None:
            continue  # the header itself is cut: refused as unreadable
        try:
            with Image.open(io.BytesIO(data[:cut])) as opened:
                opened.load()
            loads = True
        except OSError:
            loads = False
        assert probe.truncated is not loads, (options, cut, len(data))
