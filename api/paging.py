"""The query parameters of every cursor-paged list (``GET /v1/jobs``, ``/v1/checkpoints``,
``/v1/datasets``, ``/v1/webhooks``, a webhook's deliveries, ...), declared once so that
``limit`` and ``cursor`` take the same values and answer the same 422s everywhere. The paging
rule itself is :mod:`persistence.pages`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

#: Items per page: the default, and the most a page may hold (a bigger page is a 422 naming
#: ``limit``, not a silently shorter one).
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: A cursor this service issues is at most about 130 characters (with its list's binding); far longer
#: input is refused unread.
MAX_CURSOR_CHARS = 512

PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE,
                                 description=f"Items per page, 1 to {MAX_PAGE_SIZE}.")]
PageCursor = Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS,
                                         description="next_cursor of the previous page.")]
