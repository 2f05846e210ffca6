"""Cursor pages (:mod:`persistence.pages`): a cursor names the collection it pages, so one of
another list is refused instead of silently paging this one; job cursors issued before the tag
are still read; anything else is :class:`InvalidCursor`."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from persistence.pages import (
    CursorOfAnotherList,
    InvalidCursor,
    decode_cursor,
    encode_cursor,
    list_binding,
    page_of,
)

AT = datetime(2026, 11, 26, 8, 30, 0, 123456, tzinfo=UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_cursor_gives_back_its_row_for_its_own_collection_only() -> None:
    for collection in ("jobs", "checkpoints", "datasets"):
        cursor = encode_cursor(collection, AT, "a" * 32)
        assert decode_cursor(collection, cursor) == (AT, "a" * 32)
    cursor = encode_cursor("jobs", AT, "a" * 32)
    for other in ("checkpoints", "datasets"):
        with pytest.raises(InvalidCursor, match=f"for {other}: it pages jobs"):
            decode_cursor(other, cursor)


def test_job_cursors_from_before_the_tag_still_page_jobs() -> None:
    legacy = _b64(f"{AT.isoformat()}|{'b' * 32}".encode())
    assert decode_cursor("jobs", legacy) == (AT, "b" * 32)
    with pytest.raises(InvalidCursor):
        decode_cursor("checkpoints", legacy)


def test_a_cursor_is_bound_to_its_list_and_unbound_ones_still_read() -> None:
    mine, theirs = list_binding("project-a", None), list_binding("project-b", None)
    assert mine != theirs and mine != list_binding("project-a", "npz")
    cursor = encode_cursor("datasets", AT, "d" * 32, mine)
    assert decode_cursor("datasets", cursor, mine) == (AT, "d" * 32)
    with pytest.raises(CursorOfAnotherList, match="another list of datasets"):
        decode_cursor("datasets", cursor, theirs)
    # Another collection is still told as such (checked first).
    with pytest.raises(InvalidCursor, match="it pages datasets"):
        decode_cursor("checkpoints", cursor, mine)
    # Issued before the binding (three fields): read, not checked.
    unbound = encode_cursor("datasets", AT, "d" * 32)
    assert decode_cursor("datasets", unbound, theirs) == (AT, "d" * 32)


def test_an_offset_is_read_as_the_same_instant_in_utc() -> None:
    shifted = AT.astimezone(timezone(timedelta(hours=5)))
    at, _ = decode_cursor("datasets", encode_cursor("datasets", shifted, "c"))
    assert at == AT and at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("cursor", [
    "garbage!",
    _b64(b"checkpoints|2026-01-01T00:00:00|x"),  # no offset: not one we issued
    _b64(b"checkpoints|2026-01-01T00:00:00+00:00|"),
    _b64(b"checkpoints|2026-01-01T00:00:00+00:00|a\x00b"),
    _b64(b"checkpoints|2026-01-01T00:00:00+00:00|" + b"x" * 65),
    _b64(b"checkpoints|not-a-date|x"),
    _b64(b"checkpoints|0001-01-01T00:00:00+05:00|x"),  # before year 1 in UTC
    _b64(b"\xff\xfe"),
])
def test_cursors_this_service_did_not_issue_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor("checkpoints", cursor)


def test_a_page_has_a_cursor_only_when_a_row_follows() -> None:
    rows = [(AT - timedelta(seconds=i), f"id{i}") for i in range(3)]
    full = page_of("datasets", rows, 2, lambda row: row)
    assert full.items == rows[:2]
    assert full.next_cursor is not None
    assert decode_cursor("datasets", full.next_cursor) == rows[1]
    last = page_of("datasets", rows, 3, lambda row: row)
    assert last.items == rows and last.next_cursor is None
