"""Checking uploaded dataset archives, and the image geometry a job's model is built for.

Two archive kinds are accepted, recognised by content: ``.npz`` (keys ``x``, ``y`` and optionally
``x_test``/``y_test``, read as ``rift.data.npz`` reads them) and a tar (optionally gzip, bzip2 or
xz compressed) of an ImageFolder tree. Nothing is extracted here: npz arrays are checked from their
``.npy`` headers (object arrays, which would unpickle code, are refused), tar members from their
headers (absolute paths, ``..``, links and device files are refused, so extraction cannot write
outside its folder).

An archive's image shape is read again at job time, from the store, to build the job's model: a
few ranged reads through :class:`StoredObjectReader`, not a download.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

import numpy as np

from persistence.storage import ObjectStore, StoreError
from rift.config import DatasetSpec
from rift.errors import DatasetError

# Images of the built-in datasets: (channels, height). Uploaded archives are inspected instead.
BUILTIN_GEOMETRY: dict[str, tuple[int, int]] = {
    "cifar10": (3, 32),
    "cifar100": (3, 32),
    "svhn": (3, 32),
    "mnist": (1, 28),
    "digits": (1, 8),
}
NPZ_KEYS = ("x", "y", "x_test", "y_test")
MAX_CHANNELS = 16  # the largest ArchitectureSpec.in_channels
#: How much larger than the archive its unpacked content may be (bounds zip/tar bombs).
MAX_EXPANSION = 20
MAX_TAR_MEMBERS = 5_000_000
#: The first image is decoded to learn the image size; a larger "image" is not read.
MAX_PROBE_IMAGE_BYTES = 64 * 1024 * 1024
#: Stands for a file name in the path prefixes kept while scanning a tar (see _marked).
FILE_MARK = "*"
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
HELD_OUT_FOLDERS = ("val", "test")


@dataclass(frozen=True)
class DatasetInspection:
    """A valid archive: its kind, the image shape (C, H, W) and the number of examples.

    ``image_shape`` is None for an ImageFolder tar whose first image could not be sized (the
    worker then reports the problem precisely); ``num_examples`` counts training images (npz
    ``x``) or image files (tar).
    """

    kind: str  # "npz" | "imagefolder"
    image_shape: tuple[int, int, int] | None
    num_examples: int
    num_classes: int | None


def sniff_kind(head: bytes) -> str | None:
    """``"npz"`` for a zip, ``"imagefolder"`` for a (possibly compressed) tar, else None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    compressed = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
    if any(head.startswith(m) for m in compressed):
        return "imagefolder"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "imagefolder"
    return None


def inspect_dataset_file(path: str, display_name: str, max_unpacked_bytes: int) -> DatasetInspection:
    """Validate the archive at ``path`` (named ``display_name`` in messages).

    ``max_unpacked_bytes`` bounds the total size of the archive's content once unpacked.

    Raises:
        DatasetError: not an npz or tar, corrupt, unsafe member, missing key, or wrong layout.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
        kind = sniff_kind(head)
        if kind is None and tarfile.is_tarfile(path):
            kind = "imagefolder"
        if kind == "npz":
            return _inspect_npz(path, display_name, max_unpacked_bytes)
        if kind == "imagefolder":
            with open(path, "rb") as handle:
                return _inspect_tar(handle, display_name, max_unpacked_bytes, full=True)
    except DatasetError:
        raise
    except Exception as exc:  # zlib, lzma, encrypted or exotic members: the upload's fault
        raise DatasetError(f"cannot read {display_name}: {type(exc).__name__}: {exc}") from exc
    raise DatasetError(
        f"{display_name} is neither an .npz file nor a tar archive of an ImageFolder tree"
    )


# --------------------------------------------------------------------------------------- npz


def _npy_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            header_end = member.tell()
        except ValueError as exc:
            raise DatasetError(f"key '{key}' is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise DatasetError(
            f"key '{key}' holds Python objects (dtype {dtype}); only numeric arrays are read, "
            "because object arrays would be unpickled"
        )
    expected = header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise DatasetError(
            f"key '{key}' is truncated or corrupt: shape {list(shape)} of {dtype} needs "
            f"{expected} bytes, the member has {info.file_size}"
        )
    return tuple(int(d) for d in shape), dtype


# The service takes images of at least ArchitectureSpec.image_size's lower bound (8 px, the size of
# sklearn's digits); the library itself only refuses empty images.
MIN_IMAGE_SIDE = 8


def npz_image_shape(shape: tuple[int, ...], dtype: np.dtype[Any], key: str) -> tuple[int, int, int]:
    """(C, H, W) of an npz image array, by the layout rules of ``rift.data.npz``: uint8 arrays are
    N×H×W×C, float arrays N×C×H×W, and N×H×W is one channel."""
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DatasetError(f"key '{key}' must be uint8 or float; got {dtype}")
    # Feature vectors (N, F), read by rift.data.npz as (N, F, 1, 1); issue 7 (beyond). The
    # validation helper's shared format-rules module supersedes this branch at merge.
    if len(shape) == 2 and np.issubdtype(dtype, np.floating) and shape[1] >= 1:
        return (shape[1], 1, 1)
    if len(shape) == 3:
        channels, height, width = 1, shape[1], shape[2]
    elif len(shape) != 4:
        raise DatasetError(
            f"key '{key}' must have 4 dimensions (uint8 N×H×W×C or float N×C×H×W); "
            f"got shape {list(shape)}")
    elif dtype == np.uint8:
        channels, height, width = shape[3], shape[1], shape[2]
    else:
        channels, height, width = shape[1], shape[2], shape[3]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DatasetError(
            f"key '{key}': shape {list(shape)} gives {height}×{width} images; each side must be "
            f"at least {MIN_IMAGE_SIDE} pixels")
    if not 1 <= channels <= MAX_CHANNELS:
        raise DatasetError(
            f"key '{key}': shape {list(shape)} has {channels} channels; at most {MAX_CHANNELS} "
            "(uint8 images are N×H×W×C, float images N×C×H×W)")
    return (channels, height, width)


def _label_count(shape: tuple[int, ...], dtype: np.dtype[Any], key: str) -> int:
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise DatasetError(f"key '{key}' must be 1-D (one label per image); got shape {list(shape)}")
    if not np.issubdtype(dtype, np.integer):
        raise DatasetError(f"key '{key}' must hold integers; got {dtype}")
    return shape[0]


def _open_zip(source: str | IO[bytes], display_name: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{display_name} is not a readable .npz (zip) file: {exc}") from exc


def _inspect_npz(path: str, display_name: str, max_unpacked_bytes: int) -> DatasetInspection:
    with _open_zip(path, display_name) as archive:
        infos = archive.infolist()
        unpacked = sum(i.file_size for i in infos)
        if unpacked > max_unpacked_bytes:
            raise DatasetError(
                f"{display_name} unpacks to {unpacked} bytes, more than the limit of "
                f"{max_unpacked_bytes} bytes")
        keys = {i.filename[: -len(".npy")] for i in infos if i.filename.endswith(".npy")}
        for key in ("x", "y"):
            if key not in keys:
                raise DatasetError(
                    f"{display_name} has no key '{key}' (keys: {sorted(keys)}); an npz dataset "
                    "needs 'x' (images) and 'y' (labels), optionally 'x_test' and 'y_test'")
        if ("x_test" in keys) != ("y_test" in keys):
            missing = "y_test" if "x_test" in keys else "x_test"
            raise DatasetError(f"{display_name} has no key '{missing}': give both 'x_test' and "
                               "'y_test' or neither")
        headers = {key: _npy_header(archive, key) for key in NPZ_KEYS if key in keys}
        image_shape = npz_image_shape(*headers["x"], "x")
        count = headers["x"][0][0]
        if count == 0:
            raise DatasetError(f"key 'x' in {display_name} holds no images")
        if _label_count(*headers["y"], "y") != count:
            raise DatasetError(f"key 'y' has {headers['y'][0][0]} labels but 'x' has {count} images")
        if "x_test" in headers:
            test_shape = npz_image_shape(*headers["x_test"], "x_test")
            if test_shape != image_shape or headers["x_test"][1] != headers["x"][1]:
                raise DatasetError(
                    f"key 'x_test' must match 'x' in image shape and dtype: "
                    f"{headers['x_test'][1]} {list(test_shape)} vs {headers['x'][1]} "
                    f"{list(image_shape)}")
            test_count = headers["x_test"][0][0]
            if _label_count(*headers["y_test"], "y_test") != test_count:
                raise DatasetError(f"key 'y_test' has {headers['y_test'][0][0]} labels but "
                                   f"'x_test' has {test_count} images")
        # Every member's CRC is checked: a corrupt upload is refused now, not by a worker later.
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DatasetError(f"{display_name} is corrupt: {exc}") from exc
        if bad is not None:
            raise DatasetError(f"{display_name} is corrupt: member {bad!r} fails its CRC check")
    num_classes = _npz_num_classes(path, ["y", "y_test"] if "y_test" in headers else ["y"])
    return DatasetInspection("npz", image_shape, count, num_classes)


def _npz_num_classes(path: str, keys: list[str]) -> int:
    largest = -1
    with np.load(path, allow_pickle=False) as archive:
        for key in keys:
            labels = archive[key]
            if labels.size and labels.min() < 0:
                raise DatasetError(f"key '{key}' holds negative labels (smallest {int(labels.min())})")
            if labels.size:
                largest = max(largest, int(labels.max()))
    return largest + 1


# --------------------------------------------------------------------------------------- tar


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    if ".." in PurePosixPath(name).parts:
        return "contains '..'"
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder (device, fifo, ...)"
    return None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))


def imagefolder_root(entries: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The folder inside the archive that holds the ImageFolder tree, given the path parts of its
    (non-hidden) files: archives often wrap the tree in one top folder (``tar czf d.tgz d/``), so
    a single top-level folder that holds folders is stepped into, once, as the worker does."""
    tops = {entry[0] for entry in entries}
    # Stepped into only when everything sits in it and it holds folders, not images directly.
    if (len(tops) == 1 and all(len(entry) > 1 for entry in entries)
            and any(len(entry) > 2 for entry in entries)):
        return (next(iter(tops)),)
    return ()


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _inspect_tar(
    handle: IO[bytes], display_name: str, max_unpacked_bytes: int, *, full: bool
) -> DatasetInspection:
    # Path prefixes, file names replaced by FILE_MARK: enough to find the root and the classes,
    # and bounded by the number of folders, not of files (an archive may hold millions).
    files: set[tuple[str, ...]] = set()
    entries: set[tuple[str, ...]] = set()
    num_images = 0
    unpacked = 0
    image_shape: tuple[int, int, int] | None = None
    try:
        with tarfile.open(fileobj=handle, mode="r|*") as archive:
            for count, member in enumerate(archive, start=1):
                problem = _member_problem(member)
                if problem is not None:
                    raise DatasetError(
                        f"{display_name}: member {member.name!r} {problem}; only plain files "
                        "and folders with relative paths are accepted")
                if count > MAX_TAR_MEMBERS:
                    raise DatasetError(f"{display_name} has more than {MAX_TAR_MEMBERS} members")
                unpacked += member.size
                if unpacked > max_unpacked_bytes:
                    raise DatasetError(
                        f"{display_name} unpacks to more than the limit of {max_unpacked_bytes} "
                        "bytes")
                parts = _parts(member.name)
                if not member.isfile() or not parts or any(p.startswith(".") for p in parts):
                    continue
                entries.add(_marked(parts)[:3])
                if _is_image(parts[-1]):
                    if image_shape is None and member.size <= MAX_PROBE_IMAGE_BYTES:
                        image_shape = _image_shape(archive.extractfile(member))
                        if not full:
                            return DatasetInspection("imagefolder", image_shape, 0, None)
                    files.add(_marked(parts)[:4])
                    num_images += 1
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"{display_name} is not a readable tar archive: {exc}") from exc
    return _imagefolder_layout(sorted(files), sorted(entries), num_images, display_name,
                               image_shape)


def _marked(parts: tuple[str, ...]) -> tuple[str, ...]:
    return (*parts[:-1], FILE_MARK)


def _imagefolder_layout(
    files: list[tuple[str, ...]],
    entries: list[tuple[str, ...]],
    num_images: int,
    display_name: str,
    image_shape: tuple[int, int, int] | None,
) -> DatasetInspection:
    if not files:
        raise DatasetError(
            f"{display_name} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    root = imagefolder_root(entries)
    files = [f for f in files if f[: len(root)] == root]
    inside = [f[len(root):] for f in files]
    has_train = any(len(f) > 2 and f[0] == "train" for f in inside)
    # rift.data.imagefolder reads train/ (plus val/ or test/) when there is a train/ folder.
    train = [f[1:] for f in inside if f[0] == "train"] if has_train else inside
    classes = sorted({f[0] for f in train if len(f) > 1})
    if not classes:
        where = "/".join((*root, "train")) if has_train else ("/".join(root) or "the top level")
        raise DatasetError(
            f"{display_name}: no class folders in {where}; expected <class>/<image> or "
            "train/<class>/<image>")
    return DatasetInspection("imagefolder", image_shape, num_images, len(classes))


def _image_shape(member: IO[bytes] | None) -> tuple[int, int, int] | None:
    # ImageFolder images are read as RGB by rift.data.imagefolder: 3 channels whatever the file.
    if member is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(member.read())) as image:
            width, height = image.size
    except Exception:  # undecodable or a decompression bomb: the worker reports it precisely
        return None
    return (3, height, width)


# ------------------------------------------------------------------- geometry for a job's model


class StoredObjectReader(io.RawIOBase):
    """A read-only, seekable file over an object in the store, read by byte ranges on demand;
    wrap it in ``io.BufferedReader`` so small reads become a few larger requests."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = store.size(key)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._size, self._position + len(view))
        if end <= self._position:
            return 0
        filled = 0
        for chunk in self._store.iter_range(self._key, self._position, end):
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        self._position += filled
        return filled


def stored_dataset_geometry(
    store: ObjectStore, storage_key: str, kind: str, spec: DatasetSpec
) -> tuple[int, int] | None:
    """(channels, height) of the images of an uploaded archive, read from the store with a few
    ranged reads; ``spec.image_size`` (ImageFolder resize) wins for the height. None when the
    first image cannot be sized."""
    try:
        return _stored_geometry(store, storage_key, kind, spec)
    except (DatasetError, StoreError):
        raise
    except Exception as exc:  # validated on upload; a failure here means damage since
        raise DatasetError(f"cannot read the stored dataset {storage_key}: {exc}") from exc


def _stored_geometry(
    store: ObjectStore, storage_key: str, kind: str, spec: DatasetSpec
) -> tuple[int, int] | None:
    if kind == "imagefolder" and spec.image_size:
        return 3, spec.image_size  # resized on load: the archive need not be read
    # Buffered, so the parsers' many small reads become a few ranged requests.
    with io.BufferedReader(StoredObjectReader(store, storage_key), 256 * 1024) as reader:
        if kind == "npz":
            with _open_zip(reader, storage_key) as archive:
                channels, height, _ = npz_image_shape(*_npy_header(archive, "x"), "x")
            return channels, height
        inspection = _inspect_tar(reader, storage_key, max_unpacked_bytes=2**62, full=False)
    if inspection.image_shape is None:
        return None
    return inspection.image_shape[0], inspection.image_shape[1]


def dataset_geometry(spec: DatasetSpec) -> tuple[int, int] | None:
    """(channels, height) of a built-in dataset's images; None for uploaded kinds."""
    return BUILTIN_GEOMETRY.get(spec.name)
