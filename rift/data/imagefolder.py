"""Folders of image files, one sub-folder per class (torchvision's ImageFolder convention).

Layouts read, in this order:
1. ``path/train/<class>/...`` with a labelled held-out folder ``path/val`` or ``path/test``:
   either ``<class>/...`` sub-folders, or Tiny-ImageNet's ``images/`` plus ``val_annotations.txt``
   (file name, tab, class). A held-out folder whose sub-folders are all unknown classes (e.g.
   Tiny-ImageNet's unlabelled ``test/images``) is skipped.
2. ``path/train/<class>/...`` alone, or ``path/<class>/...``: the test split is held out
   deterministically from it (see ``splits.py``).
Files are found recursively inside a class folder (Tiny-ImageNet keeps them in ``<class>/images``);
other files (e.g. ``*_boxes.txt``) are ignored, and so are hidden files and folders and archivers'
``__MACOSX`` (``rift.dataset_formats.is_hidden``). Every other folder of the training tree is a
class and must hold an image; without ``train/``, one named like a split (``Training``,
``valid``...) that holds folders is refused (its images would be one class). Classes are
numbered in sorted name order. The upload check (``validator.dataset``) judges a tar by the same
folders.

Channels (``spec.channels``): with ``"auto"`` (the default) a tree whose images are all greyscale
(train and held-out; Pillow modes ``1``, ``L``, ``LA``, ``I;16`` or a palette of greys, see
``rift.dataset_formats.is_grey_image``) is read as one channel, any colour image makes the whole
tree RGB (grey images then repeat their grey in the three channels). ``1`` converts colour images
to grey (ITU-R 601-2 luma), ``3`` reads grey images as RGB.

Content (``rift.image_content``, the rules an upload is held to): the training images and the
held-out images are each refused when more than half of them are constant, when all are the
same image, or when the largest pixel value is 1 (a 0/1 mask saved unscaled), and a tree of one
class folder is refused. The library sees every image, the upload check a sample of them; the
pixels judged are the decoded file's, before ``channels`` or ``image_size`` change them, as
the upload check judges them.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rift.config import DatasetSpec
from rift.data.tensors import ImageTensors, SourceData
from rift.dataset_formats import (
    ANNOTATED_IMAGES,
    ANNOTATIONS,
    HELD_OUT_FOLDERS,
    NPY_MAGIC,
    TRAIN_FOLDER,
    ImageChannels,
    class_folders_problem,
    empty_class_problem,
    empty_held_out_problem,
    imagefolder_channels,
    is_hidden,
    is_image_file,
    no_classes_problem,
    parse_annotations,
    refuse_one_pixel_images,
    unknown_held_out_problem,
)
from rift.errors import DatasetError
from rift.image_content import (
    PixelSummary,
    check_summaries,
    decode_8bit,
    one_class_problem,
    summarize,
)

TEST_FRACTION = 0.2  # held out as test when the tree has no labelled val/test folder

Labelled = list[tuple[Path, int]]


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _image_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        found += [Path(dirpath, f) for f in filenames if is_image_file(f)]
    return sorted(found)


def _class_tree(folder: Path, classes: list[str]) -> Labelled:
    files: Labelled = []
    for index, name in enumerate(classes):
        in_class = _image_files(folder / name)
        if not in_class:
            raise DatasetError(f"dataset 'imagefolder': "
                               f"{empty_class_problem(str(folder / name), str(folder))}")
        files += [(path, index) for path in in_class]
    return files


def _annotated(folder: Path, classes: list[str]) -> Labelled:
    """Tiny-ImageNet's val layout: ``images/<file>`` labelled by ``val_annotations.txt``."""
    where = folder / ANNOTATIONS
    files: Labelled = []
    for number, name, label in parse_annotations(where.read_bytes(), classes, str(where)):
        path = folder / ANNOTATED_IMAGES / name
        if not path.is_file():
            raise DatasetError(f"{where} line {number}: {path} does not exist")
        files.append((path, label))
    return files


def _held_out(root: Path, classes: list[str]) -> tuple[Path, Labelled] | None:
    """The labelled held-out folder under ``root`` and its files, or None."""
    for name in HELD_OUT_FOLDERS:
        folder = root / name
        if not folder.is_dir():
            continue
        if (folder / ANNOTATIONS).is_file():
            return folder, _annotated(folder, classes)
        sub = [d.name for d in _visible_dirs(folder)]
        known = [d for d in sub if d in classes]
        if not known:
            continue  # unlabelled (no class folders): not usable for testing
        unknown = sorted(set(sub) - set(classes))
        if unknown:
            raise DatasetError(f"dataset 'imagefolder': "
                               f"{unknown_held_out_problem(str(folder), unknown, str(root / TRAIN_FOLDER))}")
        index = {c: i for i, c in enumerate(classes)}
        return folder, [(path, index[d]) for d in known for path in _image_files(folder / d)]
    return None


@dataclass(frozen=True)
class _Pixels:
    """Decoded images, (N, H, W, 3) uint8 (greyscale ones copied to the three channels), which
    files were greyscale, and each file's pixels as decoded (for the content rules)."""

    rgb: np.ndarray
    grey: np.ndarray  # (N,) bool
    summaries: list[PixelSummary]


def _read_images(files: list[Path], size: tuple[int, int], resize: bool,
                 reference: Path, channels: ImageChannels) -> _Pixels:
    """Decode ``files`` (``size`` = (W, H)). With ``resize`` false every image must already have
    that size (that of ``reference``); the first that does not is named. With ``channels`` 1,
    colour images are converted to grey (Pillow's ITU-R 601-2 luma) as they are decoded."""
    width, height = size
    out = np.empty((len(files), height, width, 3), np.uint8)
    grey = np.zeros(len(files), np.bool_)
    summaries: list[PixelSummary | None] = [None] * len(files)

    def read(i: int) -> None:
        try:
            with Image.open(files[i]) as image:
                decoded, grey[i] = decode_8bit(image, files[i])
        # DecompressionBombError: more pixels than Pillow's limit (an Exception, not an OSError).
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"cannot read image {files[i]}: {exc}") from exc
        summaries[i] = summarize(np.asarray(decoded), str(files[i]))
        if channels == 1 and not grey[i]:
            decoded = decoded.convert("L")
        if resize:
            decoded = decoded.resize(size, Image.Resampling.BILINEAR)
        elif decoded.size != size:
            raise DatasetError(
                f"image {files[i]} is {decoded.size[0]}×{decoded.size[1]} but {reference} is "
                f"{width}×{height}; set 'image_size' to resize them all")
        pixels = np.asarray(decoded)
        out[i] = pixels[:, :, None] if pixels.ndim == 2 else pixels

    # Decoding releases the GIL, so threads help; map() re-raises the first failure in file order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(read, range(len(files))):
            pass
    return _Pixels(out, grey, [summary for summary in summaries if summary is not None])


def _tensors(files: Labelled, pixels: _Pixels, channels: int) -> ImageTensors:
    # N×H×W×C to N×C×H×W; one channel keeps channel 0, a copy of a third of the buffer.
    kept = pixels.rgb[..., :channels]
    images = torch.from_numpy(np.ascontiguousarray(kept.transpose(0, 3, 1, 2)))
    return ImageTensors(images, torch.tensor([label for _, label in files], dtype=torch.int64))


def _file_hint(path: Path) -> str:
    """What the file given as the tree's folder is, and how to read it."""
    try:
        with path.open("rb") as file:
            head = file.read(len(NPY_MAGIC))
        if head.startswith(NPY_MAGIC):
            return (" (a .npy file, one array: save the arrays with np.savez(path, x=..., y=...) "
                    "and read it with dataset 'npz')")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                arrays = any(name.endswith(".npy") for name in archive.namelist())
            # Before, an .npz was told to be unpacked, as a tar or zip of images is.
            if arrays:
                return " (an .npz of arrays: read it with dataset 'npz')"
            return " (an archive: unpack it and give the folder)"
        if tarfile.is_tarfile(path):
            # The service takes the tree as a tar; the library reads it unpacked.
            return " (an archive: unpack it and give the folder)"
    except (OSError, zipfile.BadZipFile):
        pass
    return ""


def load_imagefolder(spec: DatasetSpec) -> SourceData:
    """uint8 images from the tree at ``spec.path`` (see the module docstring), N×C×H×W with C
    from ``spec.channels`` (see the module docstring); 16-bit images are scaled to 8 bits,
    32-bit integer and float images refused."""
    root = Path(spec.path or "")
    if not root.is_dir():
        raise DatasetError(f"dataset 'imagefolder': 'path' {root} is not a folder"
                           f"{_file_hint(root) if root.is_file() else ''}", field="dataset.path")
    train_root = root / TRAIN_FOLDER if (root / TRAIN_FOLDER).is_dir() else root
    classes = [d.name for d in _visible_dirs(train_root)]
    if not classes:
        raise DatasetError(f"dataset 'imagefolder': {no_classes_problem(str(train_root))}")
    if train_root == root:
        problem = class_folders_problem(
            classes, lambda name: [d.name for d in _visible_dirs(root / name)],
            f"dataset 'imagefolder': {root}")
        if problem is not None:
            raise DatasetError(problem)
    if len(classes) == 1:
        raise DatasetError(one_class_problem(f"dataset 'imagefolder': {train_root}",
                                             f"'{classes[0]}' (the only class folder)"))
    train_files = _class_tree(train_root, classes)
    held_out = _held_out(root, classes) if train_root != root else None
    test_files = held_out[1] if held_out is not None else None
    if held_out is not None and not held_out[1]:
        raise DatasetError(f"dataset 'imagefolder': {empty_held_out_problem(str(held_out[0]))}")
    reference = train_files[0][0]
    if spec.image_size:
        size, resize = (spec.image_size, spec.image_size), True
    else:
        # Without 'image_size' the first training image fixes the size for train and test alike.
        try:
            with Image.open(reference) as first:
                size, resize = first.size, False
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"cannot read image {reference}: {exc}") from exc
    refuse_one_pixel_images(
        (size[1], size[0]), f"dataset 'imagefolder': {reference} is a 1×1 image",
        "set dataset.image_size to resize the images (at least 8)")
    # Greyness is learnt while decoding, so the tree is read once: every image goes into a
    # 3-channel buffer, and one channel is kept when the whole tree (train and held-out) is grey.
    # Each buffer is dropped once its tensor is made, so a grey tree never needs more memory
    # than a colour tree of the same size (3 bytes a pixel for the buffers, plus 1 rather than 3
    # for the tensors).
    parts = [(files, _read_images([path for path, _ in files], size, resize, reference,
                                  spec.channels))
             for files in (train_files, test_files) if files is not None]
    wheres = [f"dataset 'imagefolder': the training images (class folders in {train_root})"]
    if held_out is not None:
        wheres.append(f"dataset 'imagefolder': the held-out images ({held_out[0]})")
    for where, (_, pixels) in zip(wheres, parts, strict=True):
        check_summaries(where, pixels.summaries)
    channels = imagefolder_channels(spec.channels,
                                    all(bool(pixels.grey.all()) for _, pixels in parts))
    tensors = []
    while parts:
        files, pixels = parts.pop(0)
        tensors.append(_tensors(files, pixels, channels))
    return SourceData(train=tensors[0], test=tensors[1] if len(tensors) > 1 else None,
                      num_classes=len(classes), test_fraction=TEST_FRACTION,
                      class_names=tuple(classes))
