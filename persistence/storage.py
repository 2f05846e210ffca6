"""The object store: where uploaded checkpoints, datasets and job artifacts live as bytes.

Two implementations share one behaviour: :class:`LocalObjectStore` (a folder, the embedded default)
and :class:`persistence.storage_s3.S3ObjectStore` (any S3-speaking server: AWS, MinIO, moto).
Objects are addressed by keys such as ``checkpoints/<id>.safetensors``: ``/``-separated segments,
none empty, ``.`` or ``..``, none starting with ``.`` (reserved for uploads in progress), none over
200 bytes (a file name, with the local store's temporary affixes, must fit in 255).

Every write streams: the SHA-256 and the size are computed while the bytes pass through, a size
limit stops the upload as soon as it is crossed, and a failed or over-size upload leaves nothing
stored under its key (an earlier object under the same key stays as it was).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

if TYPE_CHECKING:
    from persistence.storage_s3 import S3ObjectStore

DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB: large enough to amortise syscalls, small enough to stream
MAX_KEY_LENGTH = 1024  # S3's limit (bytes of UTF-8); applied to both stores so keys stay portable
#: Bytes of UTF-8 per ``/``-separated segment: a file name holds 255, and the local store's
#: temporary ``.<name>.<random>.part`` adds about 15. S3 has no such limit; applied to both so a
#: key S3 accepts is never refused by the local folder as a 503 "cannot be written".
MAX_SEGMENT_LENGTH = 200

ByteSource = Iterable[bytes] | BinaryIO


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class StoreError(Exception):
    """Base class of the object store's errors. ``code`` is stable; the API maps it to a status."""

    code: str = "store_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ObjectNotFound(StoreError):
    """No object is stored under ``key``."""

    code = "object_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no object is stored under key {key!r}")
        self.key = key


class ObjectTooLarge(StoreError):
    """More than ``limit`` bytes arrived; the upload was stopped and nothing was stored."""

    code = "object_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


class InvalidKey(StoreError):
    """The key is malformed or would address something outside the store."""

    code = "invalid_key"

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class InvalidRange(StoreError):
    """A byte range that does not fit the object (an HTTP 416)."""

    code = "invalid_range"

    def __init__(self, key: str, start: int, end: int | None, size: int) -> None:
        super().__init__(
            f"byte range start={start} end={end} does not fit object {key!r} of {size} bytes"
        )
        self.key = key
        self.start = start
        self.end = end
        self.size = size


class StoreUnavailable(StoreError):
    """The store cannot be reached or used (server down, bucket missing, folder not writable)."""

    code = "store_unavailable"


class StoreMisconfigured(StoreUnavailable):
    """The store answers but refuses this deployment's settings (its S3 bucket is missing, its
    keys are refused): not an outage that passes by itself, so a starting process stops on it
    (:mod:`persistence.startup`). Answered like any unavailable store (503)."""


class StoreConfigError(StoreError, ValueError):
    """The store's settings are incomplete or contradictory (names the setting at fault)."""

    code = "store_config"


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredObject:
    """What a write stored: its key, size in bytes, hex SHA-256 of the content and content type."""

    key: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object as a listing shows it: key, size in bytes, time of its last write (UTC)."""

    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PartialUpload:
    """A write that never finished: a local ``.part`` file (``handle`` is its path) or an S3
    multipart upload (``handle`` is its upload id), with the time it was started (UTC)."""

    key: str
    handle: str
    started: datetime


class ObjectStore(Protocol):
    """The operations the API and the workers use; both stores implement all of them."""

    def put_stream(
        self,
        key: str,
        chunks: ByteSource,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Store the bytes of ``chunks`` (an iterable of bytes or a binary file) under ``key``."""
        ...

    def put_file(
        self, key: str, path: str | Path, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> StoredObject:
        """Store the content of the local file ``path`` under ``key``."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> StoredObject:
        """Store ``data`` under ``key``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (only for small objects: JSON, CSV)."""
        ...

    def download_to(self, key: str, path: str | Path) -> Path:
        """Write the object to the local file ``path`` (atomically) and return the path."""
        ...

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of the object in chunks of at most ``chunk_size`` bytes."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""
        ...

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Remove every object of ``keys`` (missing ones are not an error); returns the keys that
        could not be removed, each with the reason. InvalidKey before anything is removed."""
        ...

    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        """A short-lived URL a client can GET the object from, or None if the store has none."""
        ...

    def check(self) -> None:
        """Readiness probe: returns when the store is usable, else raises StoreUnavailable."""
        ...

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with ``prefix`` and is a valid key (others in
        the bucket or folder are skipped), for housekeeping, not hot paths."""
        ...

    def list_partial_uploads(self) -> Iterator[PartialUpload]:
        """Writes that were started and never finished nor aborted (a process died mid-way)."""
        ...

    def abort_partial_upload(self, upload: PartialUpload) -> None:
        """Free what ``upload`` holds; a missing one is not an error."""
        ...


# --------------------------------------------------------------------------------------------
# Helpers shared by the implementations
# --------------------------------------------------------------------------------------------
def validate_key(key: str) -> str:
    """Return ``key`` if it is a well-formed relative object key, else raise :class:`InvalidKey`.

    The rules are the same for every store so that a key accepted by one is accepted by all.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(str(key), "the key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"the key is longer than {MAX_KEY_LENGTH} bytes")
    if key.startswith("/"):
        raise InvalidKey(key, "the key must be relative (it starts with '/')")
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidKey(key, "the key contains a backslash or a control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(key, f"the segment {segment!r} is not allowed (empty, '.' or '..')")
        if segment.startswith("."):
            raise InvalidKey(key, f"the segment {segment!r} starts with '.', which is reserved")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_LENGTH:
            raise InvalidKey(key, f"a segment is longer than {MAX_SEGMENT_LENGTH} bytes")
    return key


def is_valid_key(key: str) -> bool:
    """Whether :func:`validate_key` accepts ``key``. Listings yield only such keys: a bucket or
    folder may hold others (the MinIO and AWS consoles' ``name/`` folder markers, files other
    tools wrote), and a caller that deletes what it lists must not stop on InvalidKey."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def iter_source(source: ByteSource, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the bytes of an iterable of chunks or of a binary file object, never all at once."""
    if isinstance(source, bytes | bytearray | memoryview):
        # Iterating bytes would yield ints; a whole buffer is one chunk.
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if callable(read):
        while True:
            chunk = read(chunk_size)
            if not chunk:
                return
            yield bytes(chunk)
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


class SizeLimitedDigest:
    """Counts and hashes the bytes of an upload; raises :class:`ObjectTooLarge` past ``limit``."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"max_bytes must be >= 0, got {limit}")
        self.limit = limit
        self.size = 0
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        """Account for ``chunk``; raises before hashing it if the total would pass the limit."""
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise ObjectTooLarge(self.limit)
        self._sha256.update(chunk)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes seen so far."""
        return self._sha256.hexdigest()

    def stored(self, key: str, content_type: str) -> StoredObject:
        """The record of a completed write of these bytes under ``key``."""
        return StoredObject(key=key, size=self.size, sha256=self.sha256, content_type=content_type)


def resolve_range(key: str, start: int, end: int | None, size: int) -> tuple[int, int]:
    """Turn ``[start, end)`` into concrete bounds for an object of ``size`` bytes.

    ``end`` past the object is clamped to its size (as HTTP does for ranges); ``start`` beyond
    the object or ``end < start`` raise :class:`InvalidRange`.
    """
    stop = size if end is None else min(end, size)
    if start < 0 or start > size or stop < start:
        raise InvalidRange(key, start, end, size)
    return start, stop


class BaseObjectStore(ABC):
    """Behaviour common to every store, written once on top of the primitive operations."""

    @abstractmethod
    def put_stream(
        self,
        key: str,
        chunks: ByteSource,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Store the bytes of ``chunks`` under ``key`` while computing their size and SHA-256.

        ``chunks`` is an iterable of bytes or a binary file object; it is consumed once and never
        held whole in memory. If more than ``max_bytes`` bytes arrive, the upload stops at once,
        nothing is stored under ``key`` (a previous object stays) and :class:`ObjectTooLarge` is
        raised. The same holds if ``chunks`` raises: its error propagates, nothing is stored.
        """

    @abstractmethod
    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The bytes ``[start, end)`` (end exclusive; None = to the end) in chunks.

        Checks happen when called, not on first iteration: :class:`ObjectNotFound` for a missing
        key, :class:`InvalidRange` when ``start`` lies beyond the object or ``end < start``.
        ``end`` past the object is clamped. An HTTP range ``bytes=a-b`` is ``start=a, end=b + 1``.
        """

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes; :class:`ObjectNotFound` if missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error (cleanup is idempotent)."""

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Remove every object of ``keys``; returns ``{key: reason}`` for those the store could not
        remove (the others are gone). Every key is validated first: one invalid key raises
        :class:`InvalidKey` and nothing is removed. This one deletes key by key; the S3 store
        sends up to 1,000 keys per request."""
        batch = [validate_key(key) for key in dict.fromkeys(keys)]
        failed: dict[str, str] = {}
        for key in batch:
            try:
                self.delete(key)
            except StoreError as exc:
                failed[key] = exc.message
        return failed

    @abstractmethod
    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        """A short-lived GET URL for the object (``filename`` sets the download name), or None."""

    @abstractmethod
    def check(self) -> None:
        """Readiness probe: returns if the store is usable, else raises StoreUnavailable."""

    def put_file(
        self, key: str, path: str | Path, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> StoredObject:
        """Store the content of the local file ``path`` under ``key`` (streamed)."""
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, content_type=content_type)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> StoredObject:
        """Store ``data`` under ``key``."""
        return self.put_stream(key, [data], content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects (JSON, CSV). ObjectNotFound if missing."""
        return b"".join(self.iter_range(key))

    def download_to(self, key: str, path: str | Path) -> Path:
        """Write the object to ``path`` and return it; the file appears whole or not at all."""
        target = Path(path)
        chunks = self.iter_range(key)  # raises ObjectNotFound before any file is created
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target


# --------------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------------
#: Errors of the local store's folder that may pass by themselves (a full disk or quota, an I/O
#: error of a network mount): an outage for ``/readyz``, not a setting to fix at start.
PASSING_LOCAL_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ETIMEDOUT,
                                  errno.ESTALE})


class LocalObjectStore(BaseObjectStore):
    """Objects as files under ``root`` (``root/<key>``): the embedded default.

    Writes go to a temporary file in the destination folder, are fsynced, then moved into place with
    ``os.replace``, so a crash never leaves a partial object under its key and readers see either
    the old or the new object. Keys that would resolve outside ``root`` (``..``, symlinks) are
    rejected with :class:`InvalidKey`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        validate_key(key)
        try:
            root = self.root.resolve()
            path = (root / key).resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop under the root: broken store
            raise StoreUnavailable(f"the local object store cannot resolve {key!r} ({exc}); "
                                   "check STORE_ROOT") from exc
        # resolve() follows symlinks, so a link inside the root that points out is caught too.
        if not path.is_relative_to(root) or path == root:
            raise InvalidKey(key, f"the key resolves outside the store root {str(root)!r}")
        return path

    def put_stream(
        self,
        key: str,
        chunks: ByteSource,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        max_bytes: int | None = None,
    ) -> StoredObject:
        path = self._path(key)
        digest = SizeLimitedDigest(max_bytes)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            if not self.root.is_dir():
                raise self._unwritable(exc) from exc
            raise InvalidKey(key, "a prefix of the key is already an object") from exc
        except OSError as exc:
            raise self._unwritable(exc) from exc
        try:
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                            suffix=".part")
        except OSError as exc:
            raise self._unwritable(exc) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                # Only the writes are translated: an OSError of the source (a client's
                # connection reset) is the source's and propagates as it is.
                for chunk in iter_source(chunks):
                    digest.update(chunk)
                    with self._writing():
                        fh.write(chunk)
                with self._writing():
                    fh.flush()
                    # Without fsync a power loss after the rename could leave an empty file.
                    os.fsync(fh.fileno())
            try:
                os.replace(tmp_name, path)
            except IsADirectoryError as exc:
                raise InvalidKey(key, "the key is a prefix of other objects") from exc
            except OSError as exc:
                raise self._unwritable(exc) from exc
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest.stored(key, content_type)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk, a read-only or vanished mount: the store's state, not the request's."""
        try:
            yield
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _unreadable(self, exc: OSError) -> StoreUnavailable:
        return StoreUnavailable(f"the local object store cannot be read "
                                f"({exc.strerror or type(exc).__name__}); check STORE_ROOT")

    def _unwritable(self, exc: OSError) -> StoreUnavailable:
        return StoreUnavailable(f"the local object store cannot be written "
                                f"({exc.strerror or type(exc).__name__}); check STORE_ROOT")

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[bytes]:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:  # permissions, an I/O error of the disk: the store's state
            raise self._unreadable(exc) from exc
        try:
            # fstat of the open handle: the size of exactly the version being read, even if a
            # writer replaces the object meanwhile.
            first, stop = resolve_range(key, start, end, os.fstat(fh.fileno()).st_size)
        except BaseException:
            fh.close()
            raise
        return _read_file_range(fh, first, stop, chunk_size)

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise self._unreadable(exc) from exc
        if not path.is_file():
            raise ObjectNotFound(key)
        return stat.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            with self._writing():
                path.unlink(missing_ok=True)

    def presigned_url(self, key: str, *, filename: str | None = None) -> str | None:
        """Always None: a folder has no URLs, so the API streams the object itself."""
        self._path(key)
        return None

    def check(self) -> None:
        """Creates the root if needed and proves it writable with a probe file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            message = (f"the local object store root {str(self.root)!r} is not a writable "
                       f"folder: {exc}; check STORE_ROOT")
            if exc.errno in PASSING_LOCAL_ERRORS:
                raise StoreUnavailable(message) from exc
            # A file in the way, no permission, a read-only mount: the setting is wrong and a
            # process started on it would answer every upload 503 until someone fixes it.
            raise StoreMisconfigured(message) from exc


    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Files under the root whose key starts with ``prefix``; names starting with '.'
        (writes in progress, probes) are not objects and are skipped."""
        if not self.root.is_dir():
            return
        for directory, folders, files in os.walk(self.root):
            folders[:] = [name for name in folders if not name.startswith(".")]
            base = Path(directory)
            for name in files:
                if name.startswith("."):
                    continue
                key = (base / name).relative_to(self.root).as_posix()
                if not key.startswith(prefix) or not is_valid_key(key):
                    continue
                try:
                    stat = (base / name).stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def list_partial_uploads(self) -> Iterator[PartialUpload]:
        """The ``.<name>.<random>.part`` files :meth:`put_stream` and :meth:`download_to` write
        before their rename; one outlives its write only if the process was killed."""
        if not self.root.is_dir():
            return
        for path in self.root.rglob(".*.part"):
            try:
                modified = path.stat().st_mtime
            except FileNotFoundError:
                continue
            name = path.name[1:].rsplit(".", 2)[0]
            key = path.parent.joinpath(name).relative_to(self.root).as_posix()
            yield PartialUpload(key, str(path), datetime.fromtimestamp(modified, UTC))

    def abort_partial_upload(self, upload: PartialUpload) -> None:
        path = Path(upload.handle)
        if path.resolve().is_relative_to(self.root.resolve()):
            path.unlink(missing_ok=True)


def _read_file_range(fh: BinaryIO, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    """Yield bytes ``[start, stop)`` of the open file ``fh`` and close it when done."""
    try:
        fh.seek(start)
        remaining = stop - start
        while remaining > 0:
            chunk = fh.read(min(chunk_size, remaining))
            if not chunk:
                break  # the file was truncated under us; the caller sees a short read
            remaining -= len(chunk)
            yield chunk
    finally:
        fh.close()


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------
def build_object_store(
    kind: Literal["local", "s3"],
    *,
    local_root: str | Path | None = None,
    s3_bucket: str | None = None,
    s3_endpoint_url: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str = "us-east-1",
    s3_public_endpoint_url: str | None = None,
    s3_presign_expiry_s: int = 300,
    s3_create_bucket: bool = False,
) -> ObjectStore:
    """Build the store the settings ask for (``STORE_KIND``); the settings class calls this once.

    ``s3_public_endpoint_url`` is the address clients use for presigned URLs when it differs from
    the one the service reaches (e.g. ``http://minio:9000`` inside compose, ``localhost`` outside).
    Raises :class:`StoreConfigError` naming the missing setting.
    """
    if kind == "local":
        if local_root is None:
            raise StoreConfigError("store kind 'local' needs local_root (the folder to store in)")
        return LocalObjectStore(local_root)
    if kind == "s3":
        if not s3_bucket:
            raise StoreConfigError("store kind 's3' needs s3_bucket (the bucket name)")
        from persistence.storage_s3 import S3ObjectStore  # boto3 is only imported when used

        store: S3ObjectStore = S3ObjectStore(
            s3_bucket,
            endpoint_url=s3_endpoint_url or None,
            access_key=s3_access_key or None,
            secret_key=s3_secret_key or None,
            region=s3_region,
            presign_expiry_s=s3_presign_expiry_s,
            public_endpoint_url=s3_public_endpoint_url or None,
            create_bucket=s3_create_bucket,
        )
        return store
    raise StoreConfigError(f"unknown store kind {kind!r}; expected 'local' or 's3'")
