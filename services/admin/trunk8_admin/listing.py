"""The `/links` table: search, filter by type and owner, sort, and one page of results.

Works on the link index in memory, one owner's records at a time: one pass to filter,
then only the page is kept (a partial sort). With 10,000 links that is a few
milliseconds, and nothing is read from disk.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from trunk8_shared.records import LinkRecord

SORTS = {
    "owner": "Owner",
    "code": "Short code",
    "type": "Type",
    "target": "Target",
    "expiry": "Expiry",
    "uploaded": "Upload date",
}
TYPE_LABELS = {"redirect": "Redirect", "file": "File", "markdown": "Markdown", "html": "HTML"}
MAX_QUERY = 200
# Matching records gathered before all but the ones up to the page are dropped.
POOL_MAX = 50_000


@dataclass(frozen=True)
class LinkQuery:
    """What the visitor asked of the list."""

    search: str = ""
    link_type: str = ""
    owner: str = ""
    sort: str = "owner"
    descending: bool = False
    page: int = 1
    page_size: int = 50

    @classmethod
    def from_request(cls, request: web.Request, page_size: int) -> LinkQuery:
        """Read the query string; anything unknown falls back to the defaults."""
        params = request.query
        sort = params.get("sort", "owner")
        try:
            page = max(1, min(int(params.get("page", "1")), 1_000_000))
        except ValueError:
            page = 1
        return cls(
            search=params.get("q", "").strip()[:MAX_QUERY],
            link_type=params.get("type", "") if params.get("type", "") in TYPE_LABELS else "",
            owner=params.get("owner", "")[:MAX_QUERY],
            sort=sort if sort in SORTS else "owner",
            descending=params.get("dir", "") == "desc",
            page=page,
            page_size=page_size,
        )

    def params(self, **changes: object) -> dict[str, str]:
        """Query parameters for a link to this list with some values changed."""
        values = {
            "q": self.search,
            "type": self.link_type,
            "owner": self.owner,
            "sort": self.sort,
            "dir": "desc" if self.descending else "",
            "page": str(self.page),
        }
        values.update({k: str(v) for k, v in changes.items()})
        return {k: v for k, v in values.items() if v and not (k == "page" and v == "1")}


@dataclass(frozen=True)
class LinkPage:
    """One page of matching links, and how many matched in all."""

    links: list[LinkRecord]
    total: int


class LinkSource(Protocol):
    """Where the list reads links: counts without decoding, one owner's records on demand."""

    def count(self, owner: str) -> int:
        """How many links `owner` has."""

    def records(self, owner: str) -> list[LinkRecord]:
        """The records of one owner, decoded."""


def _matches(record: LinkRecord, needle: str) -> bool:
    return any(
        needle in value.casefold()
        for value in (record.code, record.url, record.original_filename, record.path)
        if value
    )


def list_links(
    source: LinkSource, owners: Iterable[str], query: LinkQuery, owner_order: dict[str, int]
) -> LinkPage:
    """Filter, sort and slice the links of `owners` as `query` says.

    Owners are decoded one at a time, so a million links never stand decoded at once; the
    default order (by owner) decodes only the owners the page shows when nothing filters.
    """
    if query.owner:
        owners = [query.owner] if query.owner in owners else []
    needle = query.search.casefold()

    def chosen(records: list[LinkRecord]) -> list[LinkRecord]:
        if not needle and not query.link_type:
            return records
        return [
            r
            for r in records
            if (not query.link_type or r.type == query.link_type)
            and (not needle or _matches(r, needle))
        ]

    start = (query.page - 1) * query.page_size
    if query.sort == "owner":
        return _by_owner(source, owners, query, owner_order, chosen, start)
    key = _SORT_KEYS[query.sort]
    want = start + query.page_size
    pick = heapq.nlargest if query.descending else heapq.nsmallest
    pool: list[LinkRecord] = []
    total = 0
    for owner in owners:
        found = chosen(source.records(owner))
        total += len(found)
        pool += found
        if len(pool) > max(2 * want, POOL_MAX):
            # Keep only the best `want`: memory stays bounded with a million links. Codes
            # are unique, so every key is distinct and these equal a full sort's head.
            pool = pick(want, pool, key=key)
    pool.sort(key=key, reverse=query.descending)
    return LinkPage(pool[start:want], total)


_SORT_KEYS: dict[str, Callable[[LinkRecord], Any]] = {
    "code": lambda r: (r.code.casefold(), r.code),
    "type": lambda r: (r.type, r.code),
    "target": lambda r: ((r.url or r.original_filename or r.path or "").casefold(), r.code),
    "expiry": lambda r: (r.expires_at if r.expires_at is not None else float("inf"), r.code),
    "uploaded": lambda r: (r.upload_date or "", r.code),
}


def _by_owner(
    source: LinkSource,
    owners: Iterable[str],
    query: LinkQuery,
    owner_order: dict[str, int],
    chosen: Callable[[list[LinkRecord]], list[LinkRecord]],
    start: int,
) -> LinkPage:
    """Order by (owner's place in users.toml, code): owner by owner, skipping whole owners."""
    last = len(owner_order)
    blocks: dict[int, list[str]] = {}  # owners outside users.toml share the last place
    for owner in owners:
        blocks.setdefault(owner_order.get(owner, last), []).append(owner)
    filtered = bool(query.search or query.link_type)
    page: list[LinkRecord] = []
    total = 0
    for place in sorted(blocks, reverse=query.descending):
        names = blocks[place]
        want = start + query.page_size - total  # records still to reach the page's end
        if not filtered and (len(page) == query.page_size or want <= 0):
            total += sum(source.count(name) for name in names)
            continue
        if not filtered and start >= total + sum(source.count(name) for name in names):
            total += sum(source.count(name) for name in names)
            continue
        found = [r for name in names for r in chosen(source.records(name))]
        found.sort(key=lambda r: r.code, reverse=query.descending)
        first = max(0, start - total)
        page += found[first : first + query.page_size - len(page)]
        total += len(found)
    return LinkPage(page, total)


def type_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Summary counts: total and by type (T8-059)."""
    return {"total": sum(counts.values()), **{t: counts.get(t, 0) for t in TYPE_LABELS}}


def is_expired(record: LinkRecord, now: float | None = None) -> bool:
    """Whether the link is past its expiry."""
    return record.expires_at is not None and record.expires_at < (now or time.time())
