"""The admin's compact link index and its list, against plain dicts and a full sort.

The index keeps per code only the owner and type and packs each owner's records; these
tests feed it random puts, owner changes and deletes (past the point where changes are
folded into the packed chunks) and compare every answer with a dict of decoded records.
The list's partial sort and owner skipping are compared with sorting everything.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterable

import pytest
from conftest import wait_until

from trunk8_admin import listing, ownerlinks
from trunk8_admin.linkindex import LinkIndex
from trunk8_admin.listing import SORTS, TYPE_LABELS, LinkQuery, list_links
from trunk8_files.links import FileLinks
from trunk8_shared.codes import kv_key
from trunk8_shared.records import LinkRecord, json_encoder
from trunk8_shared.snapshot import OwnerRecords, RecordsSnapshot

OWNERS = ["alice", "bob", "carol", "ghost"]  # ghost is not in users.toml
TYPES = list(TYPE_LABELS)


def _record(rng: random.Random, code: str) -> LinkRecord:
    link_type = rng.choice(TYPES)
    expires = rng.choice([None, None, 1.0, 4e9])
    return LinkRecord(
        code=code,
        owner=rng.choice(OWNERS),
        type=link_type,
        url=f"https://example.com/{rng.randrange(50)}" if link_type == "redirect" else None,
        path=f"{rng.randrange(50)}.bin" if link_type != "redirect" else None,
        original_filename=f"File{rng.randrange(9)}.txt" if link_type == "file" else None,
        upload_date=f"2024-01-{rng.randrange(1, 28):02d}" if link_type != "redirect" else None,
        expires_at=expires,
        expiration_date="2099-01-01T00:00" if expires else None,
    )


def _check(index: LinkIndex, model: dict[str, LinkRecord]) -> None:
    assert len(index) == len(model)
    for owner in OWNERS:
        mine = {r.code: r for r in model.values() if r.owner == owner}
        assert {r.code: r for r in index.records(owner)} == mine
        assert index.count(owner) == len(mine)
        assert +index.type_counts(owner) == +_counts(mine.values())
    assert +index.type_counts() == +_counts(model.values())
    for code in [*list(model)[:20], "missing"]:
        assert (code in index) == (code in model)
        assert index.get(code) == model.get(code)
    expired = {r.code for r in model.values() if r.expires_at is not None and r.expires_at < 2.0}
    assert {c for codes in index.expired(2.0).values() for c in codes} == expired
    assert dict(index.code_owners()) == {code: r.owner for code, r in model.items()}


def _counts(records: Iterable[LinkRecord]) -> Counter[str]:
    return Counter(r.type for r in records)


def test_index_follows_puts_moves_and_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownerlinks, "CHUNK_BYTES", 2048)  # several chunks per owner
    monkeypatch.setattr(ownerlinks, "MIN_CHANGES", 8)  # folds happen often
    rng = random.Random(7)
    model = {f"c{i:04d}": _record(rng, f"c{i:04d}") for i in range(600)}
    index = LinkIndex()
    entries = {kv_key(c): json_encoder.encode(r) for c, r in model.items()}
    entries["bad"] = b"{not json"
    index.replace_all(entries)
    del entries["bad"]
    _check(index, model)
    for _round in range(4):
        _random_changes(index, model, rng, 150)
        _check(index, model)


def _random_changes(
    index: LinkIndex, model: dict[str, LinkRecord], rng: random.Random, count: int
) -> None:
    """`count` random puts and deletes, applied to the index and the model alike."""
    for _ in range(count):
        code = f"c{rng.randrange(800):04d}"
        if rng.random() < 0.3:
            model.pop(code, None)
            index.apply(kv_key(code), None)
        else:
            model[code] = _record(rng, code)
            index.apply(kv_key(code), json_encoder.encode(model[code]))


def _snapshot(model: dict[str, LinkRecord]) -> RecordsSnapshot:
    """The records snapshot of `model`, laid out per owner as the config-watcher does."""
    owners: dict[str, OwnerRecords] = {}
    for code, record in model.items():
        links = owners.setdefault(record.owner, OwnerRecords([], b""))
        links.codes.append(code)
        links.records += (b"," if links.records else b"") + json_encoder.encode(record)
    return RecordsSnapshot(
        revision=1,
        bucket_created="c",
        owners=owners,
        others={
            kv_key(c): json_encoder.encode(r) for c, r in model.items() if r.type != "redirect"
        },
        expiring={c: r.expires_at for c, r in model.items() if r.expires_at is not None},
    )


async def test_index_loaded_per_owner_follows_changes_while_it_packs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ownerlinks, "MIN_CHANGES", 8)  # folds happen often
    rng = random.Random(11)
    model = {f"c{i:04d}": _record(rng, f"c{i:04d}") for i in range(600)}
    model["ünï"] = _record(rng, "ünï")
    index = LinkIndex()
    index.replace_records(_snapshot(model))
    settling = asyncio.ensure_future(index.settle_load())
    try:
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # some owners indexed by the task, not all
        assert index._unindexed
        for owner in OWNERS:  # answered per owner, before any indexing is forced
            mine = {r.code: r for r in model.values() if r.owner == owner}
            assert {r.code: r for r in index.records(owner)} == mine
            assert +index.type_counts(owner) == +_counts(mine.values())
        _check(index, model)  # asks for codes: indexes the rest at once
        for _round in range(4):
            _random_changes(index, model, rng, 60)
            _check(index, model)
            await asyncio.sleep(0.01)  # packing goes on between the rounds
        await wait_until(lambda: _packed(index))
        _check(index, model)
    finally:
        settling.cancel()


async def _packed(index: LinkIndex) -> bool:
    return all(links.raw is None for links in index._owners.values())


def test_a_code_listed_under_two_owners_stays_with_the_first() -> None:
    """A damaged snapshot (the watcher lists a code once): one owner, never both."""
    snapshot = _snapshot({"a": LinkRecord(code="a", owner="x", type="redirect", url="https://a/")})
    snapshot.owners["y"] = snapshot.owners["x"]
    index = LinkIndex()
    index.replace_records(snapshot)
    assert index.owner_of("a") == "x" and len(index) == 1
    assert [r.code for r in index.records("x")] == ["a"] and index.records("y") == []
    assert index.count("y") == 0


def _reference(records: list[LinkRecord], query: LinkQuery, order: dict[str, int]) -> list:
    """The list as one full sort gives it (the former implementation)."""
    needle = query.search.casefold()
    last = len(order)
    keys = {
        "owner": lambda r: (order.get(r.owner, last), r.code),
        "code": lambda r: (r.code.casefold(), r.code),
        "type": lambda r: (r.type, r.code),
        "target": lambda r: ((r.url or r.original_filename or r.path or "").casefold(), r.code),
        "expiry": lambda r: (r.expires_at if r.expires_at is not None else float("inf"), r.code),
        "uploaded": lambda r: (r.upload_date or "", r.code),
    }
    chosen = [
        r
        for r in records
        if (not query.link_type or r.type == query.link_type)
        and (not query.owner or r.owner == query.owner)
        and (
            not needle
            or any(
                needle in v.casefold() for v in (r.code, r.url, r.original_filename, r.path) if v
            )
        )
    ]
    chosen.sort(key=keys[query.sort], reverse=query.descending)
    return chosen


def test_list_pages_equal_a_full_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "POOL_MAX", 10)  # trims the gathered matches often
    rng = random.Random(3)
    model = {f"K{i:03d}": _record(rng, f"K{i:03d}") for i in range(300)}
    index = LinkIndex()
    index.replace_all({kv_key(c): json_encoder.encode(r) for c, r in model.items()})
    order = {"carol": 0, "alice": 1, "bob": 2}
    records = list(model.values())
    for sort in SORTS:
        for descending in (False, True):
            for search, link_type, owner in [("", "", ""), ("file", "", ""), ("", "file", "bob")]:
                for page in (1, 2, 5, 30):
                    query = LinkQuery(
                        search=search,
                        link_type=link_type,
                        owner=owner,
                        sort=sort,
                        descending=descending,
                        page=page,
                        page_size=13,
                    )
                    full = _reference(records, query, order)
                    got = list_links(index, index.owners(), query, order)
                    start = (page - 1) * 13
                    assert got.total == len(full), query
                    assert got.links == full[start : start + 13], query


def test_files_mirror_keeps_only_the_types_it_serves() -> None:
    rng = random.Random(5)
    model = {f"f{i:03d}": _record(rng, f"f{i:03d}") for i in range(200)}
    links = FileLinks()
    links.replace_all({kv_key(c): json_encoder.encode(r) for c, r in model.items()})
    served = {c: r for c, r in model.items() if r.type != "redirect"}
    assert links.records == served
    code = next(c for c, r in model.items() if r.type == "redirect")
    links.apply(kv_key(code), b'{"type": 3}')  # undecodable: ignored, nothing raised
    assert code not in links.records
