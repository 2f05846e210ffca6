"""The steps a client call takes, as data: the "sans-I/O" core shared by the two clients.

Every call of :class:`~rift_client.client.RiftClient` and
:class:`~rift_client.async_client.AsyncRiftClient` is written once, in
:mod:`rift_client.core`, as a *flow*: a generator that yields the I/O it needs (an effect
below: send a request, read a line of a streamed answer, sleep, hand an item to the caller)
and is resumed with the result, or has the I/O's exception thrown into it. The request
building, answer parsing, error mapping and retry decisions therefore live in one place; each
client only performs the effects, one with httpx's blocking client and ``time.sleep``, the other
with ``httpx.AsyncClient`` and ``asyncio.sleep``, so the two cannot drift apart.

A driver keeps every streamed answer it opened and closes them all when the flow ends, however
it ends (an item loop the caller leaves early closes the flow with ``GeneratorExit``, and a
generator may not yield while it is being closed): a flow yields :class:`Close` only to free a
connection before it goes on (a reconnection).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import httpx

from rift_client.arguments import Sendable
from rift_client.errors import FileChangedError

T = TypeVar("T")

#: A flow that ends with a ``T`` (its ``return`` value).
Flow = Generator[Any, Any, T]
#: ``progress(done_bytes, total_bytes)`` called as an upload or a download advances.
ProgressCallback = Callable[[int, int], None]

#: Bytes read from a file at a time: large enough for throughput, small enough for progress
#: bars that move.
CHUNK_BYTES = 1 << 20


class _End:
    """The value of :class:`Next` once the iterator is exhausted."""

    def __repr__(self) -> str:
        return "END"


END: Any = _End()


@dataclass(frozen=True)
class Send:
    """Send a request; resumes with the ``httpx.Response`` (its body read unless ``stream``).
    ``body``: a file sent as the streamed request body (then ``content`` is not used)."""

    method: str
    url: str
    timeout: httpx.Timeout
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    body: FileBody | None = None
    stream: bool = False
    follow_redirects: bool = False


@dataclass(frozen=True)
class ReadBody:
    """Read the rest of a streamed answer's body (to raise the error it carries)."""

    response: httpx.Response


@dataclass(frozen=True)
class Close:
    """Close a streamed answer now (its connection is wanted back)."""

    response: httpx.Response


@dataclass(frozen=True)
class Lines:
    """Resumes with an iterator of the streamed answer's text lines (for :class:`Next`)."""

    response: httpx.Response


@dataclass(frozen=True)
class Chunks:
    """Resumes with an iterator of the streamed answer's body, chunks as they arrive."""

    response: httpx.Response


@dataclass(frozen=True)
class Next:
    """Resumes with the iterator's next item, or :data:`END`."""

    iterator: Any


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Blocking:
    """Call ``call()`` (blocking work on a file: a downloaded chunk written); resumes with its
    result. The blocking client calls it in place, the asyncio one in a worker thread, so that a
    slow disk does not hold up the event loop."""

    call: Callable[[], Any]


@dataclass(frozen=True)
class Emit:
    """Hand ``item`` to the caller of an iterating call (resumes with None once it asks for the
    next one)."""

    item: Any


def next_item(flow: Flow[Any]) -> Flow[Any]:
    """Run the iterating ``flow`` until it emits; return the item, or :data:`END` once it has
    ended. The other effects pass through to the driver, their results and errors back."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            effect = flow.send(value) if error is None else flow.throw(error)
        except StopIteration:
            return END
        if isinstance(effect, Emit):
            return effect.item
        try:
            value, error = (yield effect), None
        except GeneratorExit:
            flow.close()
            raise
        except Exception as exc:  # the effect's own failure: the inner flow decides
            value, error = None, exc


@dataclass
class FileBody:
    """An upload's ``source`` (a file, or a binary stream from its start position) sent as a
    request body in chunks, between an optional ``prefix`` and ``suffix`` (the parts of a
    multipart form around it): hashes the source's bytes and reports ``progress(sent, size)``.
    Each pass starts from the beginning (a retried request sends the file again: a stream is
    rewound, and left open) and sends at most the ``size`` bytes counted in ``length``. (It has
    no ``read`` method: httpx would take it for a file and read it whole, bypassing the hashing.)

    A source that changes during a pass raises :class:`FileChangedError` before the pass's last
    chunk, so the service receives an incomplete body and stores nothing: one that shrank (no
    bytes where ``size`` promised some), grew (bytes past ``size``: before, the first ``size``
    bytes were sent, their hash matched the service's, and a checkpoint still being written was
    stored cut short without a word), or was written to (its modification time moved, for a
    source with a file descriptor: a file rewritten in place was stored half old, half new)."""

    source: Sendable
    progress: ProgressCallback | None = None
    prefix: bytes = b""
    suffix: bytes = b""
    sha256: Any = field(default_factory=hashlib.sha256)
    #: The source's modification time when this pass opened it (None: it has no descriptor).
    _opened_mtime_ns: int | None = field(default=None, init=False, repr=False)

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def length(self) -> int:
        return len(self.prefix) + self.size + len(self.suffix)

    def open_pass(self) -> IO[bytes]:
        """Begin a pass: a fresh hash, and the source opened (or rewound) at its start."""
        self.sha256 = hashlib.sha256()
        if self.source.stream is not None:
            handle = self.source.stream
            handle.seek(self.source.start)
        else:
            assert self.source.path is not None
            handle = self.source.path.open("rb")
        self._opened_mtime_ns = _mtime_ns(handle)
        return handle

    def end_pass(self, handle: IO[bytes]) -> None:
        """End a pass: the file closed (a caller's stream stays open)."""
        if handle is not self.source.stream:
            handle.close()

    def read_chunk(self, handle: IO[bytes], sent: int) -> bytes:
        """The next chunk after ``sent`` bytes of the source, hashed; the last one only once the
        source is known not to have changed since the pass began."""
        chunk = handle.read(min(CHUNK_BYTES, self.size - sent))
        if not chunk:
            raise FileChangedError(self.source.label, "shrank")
        if sent + len(chunk) >= self.size:
            if handle.read(1):
                raise FileChangedError(self.source.label, "grew")
            if _mtime_ns(handle) != self._opened_mtime_ns:
                raise FileChangedError(self.source.label, "was written to")
        self.sha256.update(chunk)
        return chunk

    def sent(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count, self.size)

    def __iter__(self) -> Iterator[bytes]:
        handle = self.open_pass()
        try:
            if self.prefix:
                yield self.prefix
            sent = 0
            while sent < self.size:
                chunk = self.read_chunk(handle, sent)
                sent += len(chunk)
                yield chunk
                self.sent(sent)
            if self.suffix:
                yield self.suffix
        finally:
            self.end_pass(handle)


def _mtime_ns(handle: IO[bytes]) -> int | None:
    """The modification time of the file behind ``handle``; None for a stream without one
    (``io.BytesIO``)."""
    try:
        return os.fstat(handle.fileno()).st_mtime_ns
    except (OSError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None


def advance(flow: Flow[Any], value: Any, error: Exception | None) -> tuple[bool, Any]:
    """Resume ``flow`` with ``value`` (or throw ``error`` into it): ``(False, effect)`` for the
    next effect it yields, ``(True, result)`` once it has returned ``result``."""
    try:
        return False, (flow.send(value) if error is None else flow.throw(error))
    except StopIteration as stop:
        return True, stop.value
