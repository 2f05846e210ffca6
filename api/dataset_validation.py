"""The image geometry (or feature count) a job's model is built for.

Uploaded archives are checked completely on upload, in the sandboxed validator (``validator``
package), and their geometry is recorded on the dataset's row. Archives recorded before that
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
#: How much larger than the archive its unpacked content may be (bounds zip/tar bombs).
MAX_EXPANSION = 20


@dataclass(frozen=True)
class Geometry:
    """What a job's model is built for: images of ``channels`` × ``image_size`` (height) ×
    ``image_width`` (None: square), or feature vectors of ``num_features`` values (the image
    fields then None)."""

    channels: int | None = None
    image_size: int | None = None
    num_features: int | None = None
    image_width: int | None = None

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
    from the store. ``spec.image_size`` (ImageFolder resize) wins for the image size; sizes that
    cannot be known (an undecodable first image) are None."""
    if row.kind == "imagefolder" and spec.image_size:
        return Geometry(3, spec.image_size)  # resized on load: the archive need not be read
    if row.content == "features":
        return Geometry(num_features=row.num_features)
    if row.content == "images":
        return Geometry.of_images(row.image_shape)
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
    return Geometry.of_images(scan.image_shape)


def dataset_geometry(spec: DatasetSpec) -> Geometry:
    """The geometry of a built-in dataset's images (empty for uploaded kinds)."""
    known = BUILTIN_GEOMETRY.get(spec.name)
    return Geometry(*known) if known else Geometry()
