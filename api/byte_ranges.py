"""HTTP ``Range`` requests of a stored file (RFC 9110 §14): which byte ranges a header asks for,
and the ``multipart/byteranges`` body (§14.6) that answers several at once.

Rules, chosen so that every answer is one a client can rely on:

- No header, another unit than ``bytes``, or any range-spec that is not valid syntax
  (``bytes=9-3``, ``bytes=a-b``): the header is ignored and the whole file sent (200), as §14.2
  allows; a partly-understood header is never half-honoured.
- More than :data:`MAX_RANGES` range-specs: ignored the same way (200). §14.2 lets a server
  ignore "many small ranges" as a likely denial of service; the whole file is an answer every
  client understands, where a 416 would wrongly say the ranges lie outside the file.
- Range-specs that lie outside the file are dropped; if none is left, 416 with
  ``Content-Range: bytes */<size>``.
- Ranges that overlap or touch are coalesced (§14.6 allows it; it also stops a header from
  asking for the same bytes many times over). The rest keep the order they were asked in.
- One range left: a plain 206 with ``Content-Range``; several: a 206
  ``multipart/byteranges`` body, one part per range, each with its own ``Content-Type`` and
  ``Content-Range`` (§14.6 forbids a multipart answer for a single range).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator

from api.errors import RangeNotSatisfiable

#: Range-specs one header may hold before it is ignored (the whole file sent).
MAX_RANGES = 16

_UNIT = re.compile(r"^\s*bytes\s*=(.*)$", re.IGNORECASE | re.DOTALL)
_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
#: Digits read of a range bound: any longer number is past every object this service stores.
#: A cap, not int() of the whole string: int() refuses strings of over 4,300 digits (a 500),
#: and refusing the header in the regex made such a range an ignored one (the whole file, 200)
#: where a shorter start past the end is a 416.
_RANGE_DIGITS = 18

ByteRange = tuple[int, int]  # [start, end): end exclusive


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The byte ranges ``[start, end)`` a ``Range`` header asks of an object of ``size`` bytes,
    coalesced, in the order asked (see the module's rules).

    None means "send everything" (no header, or one this server ignores).

    Raises:
        RangeNotSatisfiable: no range lies inside the object (HTTP 416).
    """
    if not header:
        return None
    unit = _UNIT.match(header)
    if unit is None:
        return None
    body = unit.group(1)
    if body.count(",") >= 4 * MAX_RANGES:  # before splitting a long header: far too many
        return None
    specs = [spec for spec in body.split(",") if spec.strip()]  # empty list items are allowed
    if not specs or len(specs) > MAX_RANGES:
        return None
    asked: list[ByteRange | None] = []
    for spec in specs:
        match = _SPEC.match(spec)
        if match is None:
            return None
        first_text, last_text = match.groups()
        if not first_text and not last_text:
            return None
        if first_text and last_text and _bound(last_text) < _bound(first_text):
            return None  # syntactically invalid: the whole header is ignored
        asked.append(_resolve(first_text, last_text, size))
    satisfiable = [byte_range for byte_range in asked if byte_range is not None]
    if not satisfiable:
        raise _unsatisfiable(header, size)
    return coalesce(satisfiable)


def _resolve(first_text: str, last_text: str, size: int) -> ByteRange | None:
    """One range-spec within an object of ``size`` bytes, or None if it lies outside."""
    if not first_text:  # a suffix: the last N bytes
        length = _bound(last_text)
        if length == 0 or size == 0:
            return None
        return max(0, size - length), size
    start = _bound(first_text)
    if start >= size:
        return None
    return start, size if not last_text else min(_bound(last_text) + 1, size)


def _bound(digits: str) -> int:
    """A range bound's value, capped at :data:`_RANGE_DIGITS` nines (still past any object)."""
    digits = digits.lstrip("0") or "0"
    return int("9" * _RANGE_DIGITS if len(digits) > _RANGE_DIGITS else digits)


def coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """Merge the ranges that overlap or touch; each merged range takes the place of the first
    of its members asked, the others keep their order (at most :data:`MAX_RANGES`: quadratic is
    fine)."""
    groups = [(index, start, end) for index, (start, end) in enumerate(ranges)]
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                index_a, start_a, end_a = groups[a]
                index_b, start_b, end_b = groups[b]
                if start_a <= end_b and start_b <= end_a:  # overlapping or adjacent
                    groups[a] = (min(index_a, index_b), min(start_a, start_b), max(end_a, end_b))
                    del groups[b]
                    merged = True
                    break
            if merged:
                break
    return [(start, end) for _, start, end in sorted(groups)]


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiable:
    shown = header if len(header) <= 80 else header[:77] + "..."
    return RangeNotSatisfiable(f"the range '{shown}' lies outside the {size}-byte file",
                               field="Range", headers={"Content-Range": f"bytes */{size}"})


class MultipartRanges:
    """The ``multipart/byteranges`` answer to several ranges of one object: its content type
    (with a random boundary), exact length, and body read range by range with ``read(start,
    end)`` (one store read per range, each opened only when its part is reached, so an S3
    store holds one GET at a time)."""

    def __init__(self, ranges: list[ByteRange], size: int, content_type: str,
                 boundary: str | None = None) -> None:
        # 32 random hex digits: a boundary that occurs in the file by chance is not a concern.
        self.boundary = boundary or secrets.token_hex(16)
        self.ranges, self.size = ranges, size
        # Each part after the first starts on a new line: the CRLF before a delimiter is the
        # delimiter's, not the previous part's data.
        self._heads = [
            (b"" if i == 0 else b"\r\n")
            + (f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
               f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n").encode("latin-1")
            for i, (start, end) in enumerate(ranges)]
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("latin-1")

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return (sum(len(head) for head in self._heads) + len(self._tail)
                + sum(end - start for start, end in self.ranges))

    def body(self, read: Callable[[int, int], Iterator[bytes]],
             first: Iterator[bytes] | None = None) -> Iterator[bytes]:
        """The body; ``first``: the first range's bytes already opened (so that a missing
        object is found before the answer starts), else read like the others."""
        for i, (head, (start, end)) in enumerate(zip(self._heads, self.ranges, strict=True)):
            yield head
            yield from (first if i == 0 and first is not None else read(start, end))
        yield self._tail
