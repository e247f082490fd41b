"""OpenAI's cursor pagination (``after``, ``before``, ``limit``, ``order``) as keyset SQL over (created_at, id).

``after`` is the last id of the previous page, ``before`` the first id of the next one; a cursor that is not
one of the listed objects (another tenant's, or gone) matches nothing, so the page is empty.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from retrieval.errors import InvalidRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
Order = Literal["asc", "desc"]


class InvalidPage(InvalidRequest):
    code = "invalid_value"


class PageQuery(msgspec.Struct, frozen=True):
    after: str | None = None
    before: str | None = None
    limit: int = DEFAULT_LIMIT
    order: Order = "desc"

    def check(self) -> PageQuery:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidPage(f"limit must be between 1 and {MAX_LIMIT}.", param="limit")
        if self.order not in ("asc", "desc"):
            raise InvalidPage("order must be 'asc' or 'desc'.", param="order")
        if any(c is not None and "\x00" in c for c in (self.after, self.before)):
            # Postgres text cannot hold NUL; no object's id does either, so the cursor matches nothing.
            return msgspec.structs.replace(
                self, after=_nothing(self.after), before=_nothing(self.before)
            )
        return self


def _nothing(cursor: str | None) -> str | None:
    return "" if cursor is not None and "\x00" in cursor else cursor


class Keyset(msgspec.Struct, frozen=True):
    """SQL pieces: ``where`` (AND-ed conditions, may be empty) with ``params``, ``order_by`` and ``reverse``
    (the rows were fetched backwards from ``before`` and must be reversed into the page's order)."""

    where: list[str]
    params: list[object]
    order_by: str
    reverse: bool


def keyset(page: PageQuery, key: str, cursor: str, cursor_params: list[object]) -> Keyset:
    """``key`` is the row's ``(created_at, id)`` expression; ``cursor`` a subquery with one ``%s`` more than
    ``cursor_params`` (the cursor's id) selecting that pair for the cursor object."""
    ascending = page.order == "asc"
    where: list[str] = []
    params: list[object] = []
    if page.after is not None:
        where.append(f"{key} {'>' if ascending else '<'} ({cursor})")
        params += [*cursor_params, page.after]
    if page.before is not None:
        where.append(f"{key} {'<' if ascending else '>'} ({cursor})")
        params += [*cursor_params, page.before]
    backwards = page.before is not None and page.after is None
    direction = "ASC" if ascending != backwards else "DESC"
    columns = key.strip("()").split(",")
    order_by = ", ".join(f"{c.strip()} {direction}" for c in columns)
    return Keyset(where, params, order_by, backwards)
