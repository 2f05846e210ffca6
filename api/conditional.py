"""Conditional GET for stored files (RFC 9110 §13): ``If-Match`` / ``If-Unmodified-Since``
answer 412 when the file is not the one the client names, ``If-None-Match`` /
``If-Modified-Since`` 304 when the client's copy is current, and ``If-Range`` decides whether a
``Range`` is honoured. One home for these rules, so every download route answers alike.

An artifact's strong ETag is its quoted SHA-256 and its ``Last-Modified`` its row's
``created_at``, rounded down to the second as HTTP dates are: a file re-recorded under the same
name (``persistence.stages``, ``persistence.materializations``) replaces the row with its own
SHA-256 and a new ``created_at``, so both validators change with the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime


def http_date(moment: datetime) -> str:
    """``moment`` as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``); naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP date as an aware UTC datetime, or None when absent or not a date (RFC 9110
    §13.1.3: an invalid date is ignored, never an error)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _opaque(tag: str) -> str:
    """The quoted tag without a weak prefix: If-None-Match compares weakly (§8.8.3.2)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def none_match(header: str, etag: str) -> bool:
    """Whether ``If-None-Match: header`` matches ``etag``: ``*`` or any listed tag, weakly."""
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(","))


def strong_match(header: str, etag: str) -> bool:
    """Whether ``If-Match: header`` matches ``etag``: ``*`` or a listed tag compared strongly
    (§8.8.3.2: a weak tag never matches)."""
    if header.strip() == "*":
        return True
    return any(tag.strip() == etag for tag in header.split(","))


def precondition_failed_by(if_match: str | None, if_unmodified_since: datetime | None, *,
                           etag: str, last_modified: datetime | None) -> str | None:
    """The header whose condition fails (412, §13.2.2 steps 1-2), None when none does.

    ``If-Unmodified-Since`` (already parsed: None when absent or not a valid date) is ignored
    beside ``If-Match``, and for a resource without a ``last_modified``; naive means UTC."""
    if if_match is not None:
        return None if strong_match(if_match, etag) else "If-Match"
    if if_unmodified_since is None or last_modified is None:
        return None
    if last_modified.tzinfo is None:
        last_modified = last_modified.replace(tzinfo=UTC)
    if last_modified.astimezone(UTC).replace(microsecond=0) > if_unmodified_since:
        return "If-Unmodified-Since"
    return None


def failed_precondition(headers: Mapping[str, str], *, etag: str,
                        last_modified: datetime) -> str | None:
    """:func:`precondition_failed_by` for a file's request headers.

    A client resuming a download with ``If-Match`` (or ``If-Unmodified-Since``) asks for bytes
    of the file it began: the answer must not be bytes of another file under the same name."""
    return precondition_failed_by(headers.get("if-match"),
                                  parse_http_date(headers.get("if-unmodified-since")),
                                  etag=etag, last_modified=last_modified)


def is_not_modified(headers: Mapping[str, str], *, etag: str, last_modified: datetime) -> bool:
    """Whether a GET/HEAD with these request headers gets 304 Not Modified.

    ``If-None-Match`` decides when present; ``If-Modified-Since`` is then ignored (§13.1.3), as
    it also is when it is not a valid date."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    since = parse_http_date(headers.get("if-modified-since"))
    if since is None:
        return False
    return last_modified.astimezone(UTC).replace(microsecond=0) <= since


def range_allowed(headers: Mapping[str, str], *, etag: str, last_modified: datetime) -> bool:
    """Whether a ``Range`` may be honoured under ``If-Range`` (§13.1.5): no ``If-Range``, the
    same strong ETag (a weak one never matches), or exactly the ``Last-Modified`` date.
    False means "send the whole file" (200), never an error."""
    if_range = headers.get("if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return if_range == etag
    date = parse_http_date(if_range)
    return date is not None and date == parse_http_date(http_date(last_modified))
