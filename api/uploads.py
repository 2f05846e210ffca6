"""Receiving uploads: the request body is streamed to a scratch file, hashed and size-checked as
it arrives, and never held whole in memory.

Two request shapes are accepted: ``multipart/form-data`` (one file part plus small text fields,
parsed incrementally with python-multipart's streaming parser, so the size limit stops the upload
at the first byte past it) and a raw body (``application/octet-stream``; the file name comes from
the ``filename`` query parameter or a ``Content-Disposition`` header). The scratch file is needed
anyway: checkpoints and archives can only be validated with random access, and validating before
anything reaches the object store is what guarantees that a rejected upload leaves nothing behind.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, BinaryIO
from urllib.parse import unquote

from fastapi import Query
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import (
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    quote,
    scratch_unavailable,
)
from api.request_input import is_json_media_type
from persistence.settings import Settings

MIB = 1024 * 1024
#: Text fields of a multipart upload (e.g. the job spec) are held in memory, so they are small.
MAX_FIELD_BYTES = MIB
#: Bytes of multipart framing (boundaries, part headers) allowed beyond the file and the fields.
_MULTIPART_OVERHEAD = 64 * 1024
#: After refusing an over-size upload, read (and drop) at most this much more of the body so the
#: client, still sending, can read the 413 instead of seeing its connection reset.
_DRAIN_LIMIT = 32 * MIB
_MAX_FILENAME = 255


@dataclass
class UploadedFile:
    """The file part of an upload, as a scratch file. ``sha256`` is hex; ``size`` in bytes."""

    path: Path
    size: int
    sha256: str
    filename: str
    content_type: str


@dataclass
class ReceivedUpload:
    """What :func:`receive_upload` read. Use as a context manager: the scratch file is removed on
    exit, whether or not it was stored."""

    file: UploadedFile | None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the scratch file (idempotent)."""
        if self.file is not None:
            self.file.path.unlink(missing_ok=True)

    def __enter__(self) -> ReceivedUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


#: RFC 6266's ``filename*=charset'lang'percent-encoded`` (RFC 8187), which python-multipart's
#: header parser drops: a client naming a non-ASCII file this way lost the name.
_EXTENDED_FILENAME = re.compile(rb"""filename\*\s*=\s*([A-Za-z0-9!#$&+\-^_`{}~]+)'[^']*'([^;\s]+)""",
                                re.IGNORECASE)
#: RFC 8187 §3.2.1: the charsets ``filename*`` must support, the only ones read here (by their
#: codec's name, so aliases such as ``utf8`` or ``latin-1`` count).
_EXTENDED_CHARSETS = frozenset({"utf-8", "iso8859-1"})


def disposition_filename(header: bytes | None, options: dict[bytes, bytes]) -> str | None:
    """The file name of a ``Content-Disposition`` header whose parameters are ``options``:
    ``filename*`` when given (RFC 6266 prefers it), else ``filename``; None without either."""
    match = _EXTENDED_FILENAME.search(header or b"")
    if match is not None:
        # Only the two charsets RFC 8187 asks for: the name went to Python's codec registry
        # as sent, whose codecs include ones that raise for errors="replace" ('idna',
        # 'undefined': a 500) or read escapes ('unicode_escape',
        # 'utf-7'). Another charset falls back to the plain parameter.
        charset = _codec_name(match.group(1).decode("ascii"))
        if charset in _EXTENDED_CHARSETS:
            return unquote(match.group(2).decode("ascii"), encoding=charset, errors="replace")
    raw = options.get(b"filename")
    return raw.decode("utf-8", "replace") if raw else None


def _codec_name(charset: str) -> str | None:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


def safe_filename(name: str | None, default: str = "upload") -> str:
    """The last path segment of a client-supplied file name, without control characters, at
    most 255 characters; ``default`` when nothing usable is left."""
    if not name:
        return default
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return default
    return name[-_MAX_FILENAME:]


class _ScratchFile:
    """A scratch file being written: counts, hashes, and refuses bytes past ``limit``."""

    def __init__(self, directory: Path, limit: int, field_name: str) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".part")
        except OSError as exc:
            raise scratch_unavailable(exc) from exc
        self.path = Path(name)
        self._handle: BinaryIO = os.fdopen(fd, "wb")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.field_name = field_name

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(
                f"the file in '{self.field_name}' is larger than the limit of {self.limit} bytes",
                field=self.field_name,
                details={"limit_bytes": self.limit},
            )
        self._sha256.update(data)
        try:
            self._handle.write(data)
        except OSError as exc:
            raise scratch_unavailable(exc) from exc

    def close(self) -> None:
        self._handle.close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class _MultipartReader:
    """Callbacks for python-multipart's streaming parser: one file part to a scratch file, a few
    small text fields in memory, anything else refused with the field named."""

    def __init__(
        self,
        *,
        file_field: str,
        text_fields: Collection[str],
        scratch_dir: Path,
        max_file_bytes: int,
        max_field_bytes: int,
    ) -> None:
        self.file_field = file_field
        self.text_fields = set(text_fields)
        self.scratch_dir = scratch_dir
        self.max_file_bytes = max_file_bytes
        self.max_field_bytes = max_field_bytes
        self.fields: dict[str, str] = {}
        self.file: UploadedFile | None = None
        self.scratch: _ScratchFile | None = None
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_filename: str | None = None
        self._part_type = ""
        self._text: bytearray | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _expected(self) -> str:
        return ", ".join(repr(n) for n in [self.file_field, *sorted(self.text_fields)])

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_name = self._header_value = b""
        self._part_name = self._part_filename = None
        self._text = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower().strip()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        header = self._headers.get(b"content-disposition")
        disposition, options = parse_options_header(header)
        if disposition != b"form-data" or b"name" not in options:
            raise BadRequest("a multipart part lacks 'Content-Disposition: form-data; name=...'",
                             field="body")
        name = options[b"name"].decode("utf-8", "replace")
        self._part_name = name
        self._part_type = self._headers.get(b"content-type", b"").decode("latin-1")
        if name == self.file_field:
            if self.scratch is not None or self.file is not None:
                raise InvalidInput(f"the form field '{name}' is given twice", field=name)
            self._part_filename = disposition_filename(header, options)
            self.scratch = _ScratchFile(self.scratch_dir, self.max_file_bytes, name)
        elif name in self.text_fields:
            if name in self.fields:
                raise InvalidInput(f"the form field '{name}' is given twice", field=name)
            self._text = bytearray()
        else:
            raise InvalidInput(
                f"unexpected form field '{name}'; expected {self._expected()}", field=name
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self._text += data[start:end]
            if len(self._text) > self.max_field_bytes:
                raise PayloadTooLarge(
                    f"the form field '{self._part_name}' is larger than the limit of "
                    f"{self.max_field_bytes} bytes",
                    field=self._part_name,
                    details={"limit_bytes": self.max_field_bytes},
                )
        elif self.scratch is not None:
            self.scratch.write(data[start:end])

    def _part_end(self) -> None:
        name = self._part_name or ""
        if self._text is not None:
            try:
                self.fields[name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"the form field '{name}' is not UTF-8 text", field=name) from exc
            self._text = None
        elif self.scratch is not None and self.file is None:
            self.scratch.close()
            self.file = UploadedFile(
                path=self.scratch.path,
                size=self.scratch.size,
                sha256=self.scratch.sha256,
                filename=safe_filename(self._part_filename),
                content_type=self._part_type or "application/octet-stream",
            )

    def _end(self) -> None:
        self.finished = True

    def discard(self) -> None:
        if self.scratch is not None:
            self.scratch.close()
            self.scratch.path.unlink(missing_ok=True)


async def _drain(request: Request) -> None:
    # Read (and drop) what the client is still sending, up to a bound, so it sees our answer.
    drained = 0
    try:
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > _DRAIN_LIMIT:
                return
    except (ClientDisconnect, RuntimeError):
        return


def declared_file_bytes(request: Request) -> int:
    """The fewest bytes the request's file can have, from its Content-Length (0 without one).

    A multipart body's length counts its framing (boundaries, part headers) too, up to
    ``_MULTIPART_OVERHEAD``: a check before the body is read (the stored-bytes quota) that took
    the whole length for the file refused a file that fits, and named the framing as bytes to
    store. The exact size is checked once the file is received."""
    value = request.headers.get("content-length")
    if value is None or not value.isascii() or not value.isdigit():
        return 0
    media_type, _ = parse_options_header(request.headers.get("content-type"))
    framing = _MULTIPART_OVERHEAD if media_type == b"multipart/form-data" else 0
    return max(0, int(value) - framing)


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError as exc:
        raise BadRequest("the Content-Length header is not a number",
                         field="Content-Length") from exc
    return length if length >= 0 else None


async def receive_upload(
    request: Request,
    *,
    file_field: str,
    max_file_bytes: int,
    scratch_dir: Path,
    text_fields: Collection[str] = (),
    max_field_bytes: int = MAX_FIELD_BYTES,
    allow_raw: bool = True,
) -> ReceivedUpload:
    """Stream the request's file (and small text fields) into a scratch file under ``scratch_dir``.

    ``file_field`` names the multipart file part (and is the field errors name); ``text_fields``
    are the other form fields allowed. With ``allow_raw`` a non-multipart body is the file itself.

    Raises:
        PayloadTooLarge: the file passed ``max_file_bytes`` (or a field ``max_field_bytes``);
            the upload is stopped there and the scratch file removed.
        BadRequest: malformed multipart body, or the body ended early.
        UnsupportedMediaType: a raw body where only multipart is accepted.
        InvalidInput: an unknown or repeated form field.
    """
    media_type, options = parse_options_header(request.headers.get("content-type"))
    length = _content_length(request)
    if media_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("the multipart Content-Type header has no boundary",
                             field="Content-Type")
        budget = max_file_bytes + max_field_bytes * len(text_fields) + _MULTIPART_OVERHEAD
        if length is not None and length > budget:
            raise PayloadTooLarge(
                f"the request is {length} bytes; the limit for '{file_field}' is "
                f"{max_file_bytes} bytes",
                field=file_field,
                details={"limit_bytes": max_file_bytes},
            )
        return await _receive_multipart(
            request, boundary, file_field, text_fields, scratch_dir, max_file_bytes,
            max_field_bytes,
        )
    if not allow_raw:
        raise UnsupportedMediaType(
            "send multipart/form-data with the fields "
            + ", ".join(repr(n) for n in [file_field, *text_fields]), field="Content-Type"
        )
    if media_type == b"application/x-www-form-urlencoded":
        # What `curl -d @file` sends: curl strips the file's line breaks, so the bytes are not
        # the file's; a form body is never a raw upload.
        raise UnsupportedMediaType(
            "a form-encoded body is not a file (curl -d alters its bytes): send the file as "
            f"multipart (-F {file_field}=@PATH) or as the raw body (--data-binary @PATH with "
            "Content-Type: application/octet-stream)", field="Content-Type")
    _check_raw_media_type(media_type, file_field)
    if length is not None and length > max_file_bytes:
        raise PayloadTooLarge(
            f"the file is {length} bytes, larger than the limit of {max_file_bytes} bytes",
            field=file_field,
            details={"limit_bytes": max_file_bytes},
        )
    return await _receive_raw(request, file_field, scratch_dir, max_file_bytes)


#: A media type as RFC 9110 writes one (token "/" token). A raw upload's Content-Type is stored
#: with the file and sent back with it on download, so it must at least be one.
_MEDIA_TYPE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_raw_media_type(media_type: bytes, file_field: str) -> None:
    """Refuse a raw body whose Content-Type is no media type (``application/``, ``\\xff``) or
    is JSON: before, either was read as the file and refused for its content (422 on the file,
    "neither safetensors nor a PyTorch file"), where the request's type was what was wrong."""
    how = (f"send the file as multipart (-F {file_field}=@PATH) or as the raw body with "
           "Content-Type: application/octet-stream")
    if media_type and not _MEDIA_TYPE.fullmatch(media_type):
        raise UnsupportedMediaType(
            f"the Content-Type {quote(media_type.decode('latin-1'))} is not a media type "
            f"(type/subtype); {how}", field="Content-Type")
    if is_json_media_type(media_type.decode("latin-1")):
        raise UnsupportedMediaType(f"a JSON body is not a file; {how}", field="Content-Type")


def _raw_filename(request: Request) -> str:
    name = request.query_params.get("filename")
    if not name:
        header = request.headers.get("content-disposition")
        raw_header = header.encode("latin-1") if header else None
        _, options = parse_options_header(raw_header)
        name = disposition_filename(raw_header, options)
    return safe_filename(name)


async def _receive_raw(
    request: Request, file_field: str, scratch_dir: Path, max_file_bytes: int
) -> ReceivedUpload:
    scratch = _ScratchFile(scratch_dir, max_file_bytes, file_field)
    try:
        async for chunk in request.stream():
            scratch.write(chunk)
    except PayloadTooLarge:
        scratch.close()
        scratch.path.unlink(missing_ok=True)
        await _drain(request)
        raise
    except ClientDisconnect as exc:
        scratch.close()
        scratch.path.unlink(missing_ok=True)
        raise BadRequest("the client closed the connection before the upload ended",
                         field="body") from exc
    except BaseException:
        scratch.close()
        scratch.path.unlink(missing_ok=True)
        raise
    scratch.close()
    content_type = request.headers.get("content-type") or "application/octet-stream"
    return ReceivedUpload(
        UploadedFile(scratch.path, scratch.size, scratch.sha256, _raw_filename(request),
                     content_type)
    )


async def _receive_multipart(
    request: Request,
    boundary: bytes,
    file_field: str,
    text_fields: Collection[str],
    scratch_dir: Path,
    max_file_bytes: int,
    max_field_bytes: int,
) -> ReceivedUpload:
    reader = _MultipartReader(
        file_field=file_field,
        text_fields=text_fields,
        scratch_dir=scratch_dir,
        max_file_bytes=max_file_bytes,
        max_field_bytes=max_field_bytes,
    )
    try:
        parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    except (FormParserError, ValueError) as exc:
        raise BadRequest(f"malformed multipart boundary: {exc}", field="Content-Type") from exc
    try:
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except PayloadTooLarge:
            await _drain(request)
            raise
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}", field="body") from exc
        except ClientDisconnect as exc:
            raise BadRequest("the client closed the connection before the upload ended",
                             field="body") from exc
        if not reader.finished:
            raise BadRequest("the multipart body ended before its closing boundary",
                             field="body")
    except BaseException:
        reader.discard()
        raise
    return ReceivedUpload(reader.file, reader.fields)


def scratch_dir(settings: Settings) -> Path:
    """Where uploads are spooled while they are checked (swept by ``persistence.janitor``)."""
    return settings.upload_scratch_dir


#: The ``?filename=`` of a raw-body upload, declared by the upload routes so that it is
#: documented and accepted by the query check of :mod:`api.request_input`;
#: :func:`receive_upload` reads it from the request itself.
RawFilename = Annotated[str | None, Query(
    description="The file's name for a raw-body upload (else Content-Disposition's filename).")]


def upload_request_body(file_field: str, text_fields: dict[str, str] | None = None,
                        raw: bool = True) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an upload route (its body is parsed by hand, as a stream)."""
    properties: dict[str, Any] = {file_field: {"type": "string", "format": "binary"}}
    for name, description in (text_fields or {}).items():
        properties[name] = {"type": "string", "description": description}
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": properties, "required": list(properties)}
        }
    }
    if raw:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}
