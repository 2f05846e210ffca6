"""Cursor pages, newest first: the one rule every listed collection (jobs, checkpoints, datasets,
webhooks, a job's materializations, a webhook's deliveries) pages by, so that ``limit`` and
``cursor`` mean the same everywhere.

A page is ordered by ``(created_at, id)`` descending; its cursor is the last row's pair, so the
next page is the rows strictly before it in that order (keyset pagination: a row inserted
meanwhile never shifts a page, and no page repeats or skips a row, which OFFSET would).

A cursor names the collection it was issued for (``jobs|<created_at>|<id>``, base64url): one of
another collection would otherwise be accepted and silently list the rows older than some
unrelated row. Job cursors issued before the tag existed (``<created_at>|<id>``) are still read
as job cursors, so a client paging through jobs across an upgrade is not cut off.

A cursor is also bound to its list: ``jobs|<created_at>|<id>|<binding>``, the binding a short
digest of what selects the list's rows (the project, the filters: :func:`list_binding`). One
from another project's list, or from the same list under other filters, paged this list from
an unrelated position; it is now :class:`CursorOfAnotherList` (HTTP 400 naming ``cursor``).
Cursors issued before the binding (three fields) are still read, unchecked, for the same reason
as the untagged job cursors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar, get_args

from sqlalchemy import ColumnElement, Select, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from persistence.transactions import PersistenceError

#: The collections that are paged; each tags its cursors with its name.
Collection = Literal["jobs", "checkpoints", "datasets", "webhooks", "materializations",
                     "deliveries", "audit_events"]
#: The longest row id a cursor may carry (ids are 32 characters: a longer one names no row).
MAX_CURSOR_ID_CHARS = 64


class InvalidCursor(PersistenceError):
    """A ``cursor`` this service did not issue for this collection (HTTP 422 naming ``cursor``)."""

    code = "invalid_cursor"

    def __init__(self, cursor: str, detail: str = "") -> None:
        super().__init__(f"the pagination cursor {cursor[:80]!r} is not one this service issued"
                         + (f" {detail}" if detail else ""))


class CursorOfAnotherList(InvalidCursor):
    """A cursor issued for another list of the same collection (another project's, or under
    other filters): HTTP 400 naming ``cursor``."""

    code = "cursor_of_another_list"

    def __init__(self, cursor: str, collection: str) -> None:
        PersistenceError.__init__(
            self, f"the pagination cursor {cursor[:80]!r} was issued for another list of "
            f"{collection} (another project's, or under other filters); page this list from its "
            "first page, without cursor")


#: Hex digits of a cursor's binding: 48 bits tell lists apart (it is no secret, and guessing
#: one gains nothing: a cursor only says where to start, within the caller's own rows).
BINDING_CHARS = 12


def list_binding(*selectors: object) -> str:
    """The binding of the list that ``selectors`` (its project or parent id, its filters, in a
    fixed order; None for a filter not given) select."""
    text = "\x1f".join("" if part is None else str(part) for part in selectors)
    return hashlib.sha256(text.encode()).hexdigest()[:BINDING_CHARS]


Row = TypeVar("Row")
#: Where a row stands in newest-first order: its (created_at, id).
SortKey = Callable[[Row], tuple[datetime, str]]


@dataclass(frozen=True)
class Page(Generic[Row]):
    """Up to ``limit`` rows, newest first; ``next_cursor`` is None on the last page."""

    items: list[Row]
    next_cursor: str | None


def encode_cursor(collection: Collection, created_at: datetime, row_id: str,
                  binding: str = "") -> str:
    """The cursor of the page that follows the row (``created_at``, ``row_id``) in
    ``collection``, in the list ``binding`` names (:func:`list_binding`; empty: unbound)."""
    fields = [collection, created_at.isoformat(), row_id, *([binding] if binding else [])]
    raw = "|".join(fields).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(collection: Collection, cursor: str, binding: str = "") -> tuple[datetime, str]:
    """(created_at, id) of a cursor :func:`encode_cursor` issued for ``collection``; else
    :class:`InvalidCursor` (also for a cursor of another collection, naming it), or
    :class:`CursorOfAnotherList` for one bound to another list than ``binding``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        parts = raw.split("|", 3)
        if len(parts) == 2 and collection == "jobs":
            parts = ["jobs", *parts]  # a job cursor from before the tag (see the docstring)
        if len(parts) == 3:
            parts.append("")  # from before the binding (see the docstring): not checked
        if len(parts) != 4:
            raise ValueError("not a cursor this service issued")
        tag, created, row_id, issued_for = parts
        created_at = datetime.fromisoformat(created)
        # The id goes to the database: bytes it refuses with an error (NUL) must stop here.
        if created_at.tzinfo is None or not row_id or len(row_id) > MAX_CURSOR_ID_CHARS \
                or not row_id.isascii() or not row_id.isprintable():
            raise ValueError("not a cursor this service issued")
        # Normalise here: an offset that pushes the instant past year 1 or 9999 must be a
        # cursor error, not an overflow when the database binds the value.
        created_at = created_at.astimezone(UTC)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidCursor(cursor) from None
    if tag != collection:
        known = tag if tag in get_args(Collection) else "another list"
        raise InvalidCursor(cursor, f"for {collection}: it pages {known}")
    if issued_for and binding and issued_for != binding:
        raise CursorOfAnotherList(cursor, collection)
    return created_at, row_id


def before_cursor(collection: Collection, cursor: str, created_at: InstrumentedAttribute[Any],
                  row_id: InstrumentedAttribute[Any], binding: str = "") -> ColumnElement[bool]:
    """The condition "after the cursor's row in newest-first order" on these two columns, for
    a cursor of the list ``binding`` names."""
    at, last_id = decode_cursor(collection, cursor, binding)
    return older_than(created_at, row_id, at, last_id)


def older_than(created_at: InstrumentedAttribute[Any], row_id: InstrumentedAttribute[Any],
               at: Any, last_id: Any) -> ColumnElement[bool]:
    """``(created_at, row_id) < (at, last_id)`` as one row comparison. Postgres bounds an index
    scan on ``(..., created_at, id)`` with it, so a page after a cursor reads its ``limit`` rows;
    the equivalent ``created_at < at OR (created_at = at AND id < last_id)`` is no index bound,
    and a cursor page read (and sorted) every row older than the cursor: a project's second page
    cost as much as all its jobs (bench/api_load.py). SQLite reads row values too (3.15+)."""
    return tuple_(created_at, row_id) < tuple_(_operand(at, created_at),
                                               _operand(last_id, row_id))


def _operand(value: Any, column: Any) -> Any:
    # A column (a correlated comparison) as it is; a value bound with its column's type, so
    # that UTCDateTime stores it as it stores the column's values (naive UTC text on SQLite).
    if isinstance(value, ColumnElement) or hasattr(value, "__clause_element__"):
        return value
    return literal(value, column.type)


def page_of(collection: Collection, rows: Sequence[Row], limit: int,
            key: SortKey[Row], binding: str = "") -> Page[Row]:
    """The page from ``rows``, read with ``LIMIT limit + 1``: the extra row only tells that a
    next page exists (one statement instead of a count). ``key`` gives a row's place;
    ``binding`` the list's (:func:`list_binding`), which its next cursor carries."""
    items = list(rows[:limit])
    if len(rows) <= limit:
        return Page(items, None)
    return Page(items, encode_cursor(collection, *key(items[-1]), binding))


def newest_first(session: Session, collection: Collection, query: Select[Any],
                 created_at: InstrumentedAttribute[Any], row_id: InstrumentedAttribute[Any],
                 limit: int, cursor: str | None, binding: str = "") -> Page[Any]:
    """The page of ``query``'s rows (one table's, ``created_at`` and ``row_id`` its columns)
    after ``cursor``, ``limit`` of them, newest first, in the list ``binding`` names. One
    statement."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if cursor is not None:
        query = query.where(before_cursor(collection, cursor, created_at, row_id, binding))
    query = query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
    rows = list(session.execute(query).scalars())
    return page_of(collection, rows, limit,
                   lambda row: (getattr(row, created_at.key), getattr(row, row_id.key)), binding)
