"""The image geometry (or feature count) a job's model is built for.

Uploaded archives are checked completely on upload, in the sandboxed validator (``validator``
package), and their geometry is recorded on the dataset's row (an ImageFolder's channels as
``channels: "auto"`` reads it: 1 for an all-greyscale tree). Archives recorded before that
(rows without ``content``) are read again here, from the store: a few ranged reads through
:class:`StoredObjectReader`, not a download, and only headers (npz) or the first image (tar).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from persistence.models import Dataset
from persistence.storage import ObjectStore, StoreError
from rift.config import DatasetSpec
from rift.dataset_formats import SERVICE_MIN_IMAGE_SIDE, npz_layout
from rift.errors import DatasetError
from validator.dataset import open_zip, read_npz_header, scan_tar

# Images of the built-in datasets: (channels, height). Uploaded archives are inspected instead.
BUILTIN_GEOMETRY: dict[str, tuple[int, int]] = {
    "cifar10": (3, 32),
    "cifar100": (3, 32),
    "svhn": (3, 32),
    "mnist": (1, 28),
    "digits": (1, 8),
}
#: How much larger than the archive its unpacked content may be (bounds zip/tar bombs). Real
#: data sets stay far below it: a compressed npz of sparse binary float32 images unpacks to
#: about 21 times its size, float64 digits 13 times; deflate itself cannot pass about 1,030, so
#: a gzip or zip bomb (or one layer of it) is refused while no real data set is.
MAX_EXPANSION = 200
#: Archives smaller than this may still unpack to ``MAX_EXPANSION`` times this (50 MiB).
MIN_EXPANSION_BASE = 256 * 1024


def max_unpacked_bytes(archive_bytes: int) -> int:
    """How many bytes an archive of ``archive_bytes`` may unpack to: ``MAX_EXPANSION`` times its
    own size. (It was ``MAX_EXPANSION`` times ``MAX_DATASET_BYTES``, 160 GiB by default whatever
    the file, so a 10 MB gzip bomb of 100 GB was read through and accepted.)"""
    return max(archive_bytes, MIN_EXPANSION_BASE) * MAX_EXPANSION


@dataclass(frozen=True)
class Geometry:
    """What a job's model is built for: images of ``channels`` × ``image_size`` (height) ×
    ``image_width`` (None: square), or feature vectors of ``num_features`` values (the image
    fields then None). A size is None when it cannot be known before the job runs.
    ``channels_choosable``: an ImageFolder read with ``channels: "auto"``, which
    ``config.dataset.channels`` can set to 1 or 3 instead (error messages say so)."""

    channels: int | None = None
    image_size: int | None = None
    num_features: int | None = None
    image_width: int | None = None
    channels_choosable: bool = False

    @classmethod
    def of_images(cls, image_shape: tuple[int, ...] | None) -> Geometry:
        """The geometry of images of ``image_shape`` (C, H, W); empty when it is unknown."""
        if not image_shape:
            return cls()
        channels, height, width = image_shape
        return cls(channels, height, image_width=width)


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


def uploaded_dataset_geometry(store: ObjectStore, row: Dataset, spec: DatasetSpec) -> Geometry:
    """The geometry of the uploaded dataset ``row``: recorded on upload, or (older rows) read
    from the store. For an ImageFolder, ``spec.image_size`` (resize) wins for the image size and
    ``spec.channels`` (unless ``"auto"``) for the channels; sizes that cannot be known (an
    undecodable first image, or a grey first image of a tree stored before its geometry was
    recorded) are None."""
    if row.kind != "imagefolder":
        return _recorded_geometry(store, row)
    forced = None if spec.channels == "auto" else spec.channels
    if spec.image_size and (forced is not None or row.content is not None):
        recorded = Geometry(row.image_channels)  # resized on load: the archive need not be read
    else:
        recorded = _recorded_geometry(store, row)
    # Resized images are square: image_width None.
    return Geometry(forced or recorded.channels, spec.image_size or recorded.image_size,
                    image_width=None if spec.image_size else recorded.image_width,
                    channels_choosable=forced is None)


def _recorded_geometry(store: ObjectStore, row: Dataset) -> Geometry:
    if row.content == "features":
        return Geometry(num_features=row.num_features)
    if row.content == "images":
        return Geometry(row.image_channels, row.image_height, image_width=row.image_width)
    try:
        return _stored_geometry(store, row.storage_key, row.kind)
    except (DatasetError, StoreError):
        raise
    except Exception as exc:  # validated on upload; a failure here means damage since
        raise DatasetError(f"cannot read the stored dataset {row.storage_key}: {exc}") from exc


def _stored_geometry(store: ObjectStore, storage_key: str, kind: str) -> Geometry:
    # Buffered, so the parsers' many small reads become a few ranged requests.
    with io.BufferedReader(StoredObjectReader(store, storage_key), 256 * 1024) as reader:
        if kind == "npz":
            with open_zip(reader, storage_key) as archive:
                header = read_npz_header(archive, "x")
            layout = npz_layout(header.shape, header.dtype, "x", SERVICE_MIN_IMAGE_SIDE)
            if layout.image_shape is None:
                return Geometry(num_features=layout.num_features)
            return Geometry.of_images(layout.image_shape)
        scan = scan_tar(reader, storage_key, max_unpacked_bytes=2**62, full=False)
    if scan.first is None:
        return Geometry()
    # A colour first image makes the tree RGB; after a grey one, later images may be colour or
    # not, and only the whole tree (read by the worker) tells.
    return Geometry(None if scan.first.grey else 3, scan.first.height,
                    image_width=scan.first.width)


def dataset_geometry(spec: DatasetSpec) -> Geometry:
    """The geometry of a built-in dataset's images (empty for uploaded kinds)."""
    known = BUILTIN_GEOMETRY.get(spec.name)
    return Geometry(*known) if known else Geometry()
