"""Pages of a list: ``limit`` bounded by ``api.max_limit``, ``marker``, and next links.

Without a maximum, ``?limit=1000000`` (or no limit on a big list) makes one
request read and render everything. As in Nova, a ``limit`` over the maximum,
or none, gets the maximum; a full page carries a link to the next one, so
clients that follow links (openstacksdk, the CLI) still see every item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from core.common.faults import BadRequest

T = TypeVar("T")


def page_limit(query: Mapping[str, str], max_limit: int) -> int:
    """The page size asked for, at most ``max_limit``; a 400 naming ``limit`` if bad."""
    raw = query.get("limit")
    if raw is None or raw == "":
        return max_limit
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"Invalid input for query parameter 'limit': {raw!r} is not an "
                         "integer.") from None
    if limit < 0:
        raise BadRequest("Invalid input for query parameter 'limit': must be >= 0.")
    return min(limit, max_limit)


def after_marker(rows: Sequence[T], ids: Sequence[str], marker: str | None) -> Sequence[T]:
    """The rows after the one whose id is ``marker`` (all of them without a marker)."""
    if marker is None:
        return rows
    if marker not in ids:
        raise BadRequest(f"marker [{marker}] not found")
    return rows[ids.index(marker) + 1:]


def paginate(rows: Sequence[T], ids: Sequence[str], query: Mapping[str, str],
             max_limit: int) -> tuple[list[T], int]:
    """(this page's rows, the page size in force) for ``limit`` and ``marker`` in ``query``."""
    limit = page_limit(query, max_limit)
    return list(after_marker(rows, ids, query.get("marker")))[:limit], limit


def next_links(url: str, query: Mapping[str, str], limit: int, count: int,
               last_id: str | None) -> list[dict[str, Any]]:
    """Nova's ``<collection>_links``: a "next" link when the page is full."""
    if limit == 0 or count < limit or last_id is None:
        return []
    params = {k: v for k, v in query.items() if k not in ("limit", "marker")}
    params.update(limit=str(limit), marker=last_id)
    return [{"rel": "next", "href": f"{url}?{urlencode(params)}"}]
