"""The redirector's packed link table: the same answers as a dict would give, in less memory.

No NATS here: the table is fed snapshot payloads and bucket values directly, as the KV
mirror does (the mirror's own tests run it against a real nats-server).
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
import tracemalloc
from collections.abc import Callable

import msgspec
import pytest

from trunk8_redirector import table as table_module
from trunk8_redirector.packed import PackedLinks
from trunk8_redirector.table import HandOver, LinkTable
from trunk8_shared.records import LinkRecord
from trunk8_shared.snapshot import SnapshotError, TableSnapshot, encode_snapshot


def snapshot(
    codes: list[str],
    locations: list[str],
    others: dict[str, str] | None = None,
    expiring: dict[str, float] | None = None,
) -> bytearray:
    table = TableSnapshot(
        revision=7,
        bucket_created="t",
        codes=codes,
        locations=locations,
        others=others or {},
        expiring=expiring or {},
    )
    return bytearray(encode_snapshot(table))


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the loop run until `condition` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.001)


def loaded(payload: bytearray) -> LinkTable:
    table = LinkTable()
    state, revision, _ = table.stage(payload)
    assert revision == 7
    state.install()
    return table


def record(
    code: str, url: str = "", type: str = "redirect", expires_at: float | None = None
) -> bytes:
    link = LinkRecord(code=code, owner="u", type=type, url=url or None, expires_at=expires_at)
    return msgspec.json.encode(link)


def location(table: LinkTable, code: str) -> str | None:
    answer = table.lookup(code)
    return dict(answer.headers).get("Location") if answer.status == 302 else None


def test_packed_records_answer_every_code_as_given() -> None:
    codes = ["a", "é-ü", "日本", "x" * 200, "\udcff", "b"]
    targets = ["https://a.example/", "https://b.example/%C3%A9", "", "https://c/", "https://d/", ""]
    metas = {"日本": "file;0.0", "b": "markdown", "x" * 200: ";1234.5"}
    rows = PackedLinks(codes, targets, metas)
    assert len(rows) == 6
    assert rows.get("a") == ("redirect", "https://a.example/", None)
    assert rows.get("é-ü") == ("redirect", "https://b.example/%C3%A9", None)
    assert rows.get("日本") == ("file", "", 0.0)  # an expiry of 0 is a (past) expiry
    assert rows.get("x" * 200) == ("redirect", "https://c/", 1234.5)
    assert rows.get("\udcff") == ("redirect", "https://d/", None)
    assert rows.get("b") == ("markdown", "", None)
    for unknown in ("", "A", "a\0", "é", "日", "x" * 199, "bb", "\udcfe"):
        assert rows.get(unknown) is None
    assert dict(rows.items()) == {code: rows.get(code) for code in codes}
    changes = {"a": None, "b": ("html", "", 9.5), "新": ("redirect", "https://n/", None)}
    merged = PackedLinks.merged(rows, changes)
    assert dict(merged.items()) == {
        **{code: rows.get(code) for code in codes if code not in changes},
        "b": ("html", "", 9.5),
        "新": ("redirect", "https://n/", None),
    }
    assert len(merged) == 6 and merged.get("a") is None


def test_a_repeated_code_keeps_its_last_record() -> None:
    rows = PackedLinks(["a", "b", "a"], ["https://1/", "https://2/", "https://3/"])
    assert len(rows) == 2
    assert rows.get("a") == ("redirect", "https://3/", None)
    assert sorted(code for code, _ in rows.items()) == ["a", "b"]
    merged = PackedLinks.merged(rows, {"b": None})  # the replaced record is not revived
    assert len(merged) == 1 and merged.get("a") == ("redirect", "https://3/", None)


def test_a_separator_in_a_snapshot_is_refused_and_the_bucket_read_instead() -> None:
    with pytest.raises(SnapshotError):
        LinkTable().stage(snapshot(["a", "b"], ["https://a/", "https://b/\nX-Evil: 1"]))
    with pytest.raises(SnapshotError):
        LinkTable().stage(snapshot(["a\0"], ["https://a/"]))


async def test_snapshot_then_changes_serve_what_the_bucket_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_module, "COMPACT_MIN", 4)  # fold changes in often
    codes = [f"c{i}" for i in range(50)]
    payload = snapshot(
        codes,
        [f"https://t.example/{i}" for i in range(50)],
        others={"f": "file", "m": "markdown"},
        expiring={"c4": 1e12, "f": 5.0},
    )
    table = loaded(payload)
    folder = asyncio.create_task(table.keep_folded())
    expected = {code: f"https://t.example/{i}" for i, code in enumerate(codes)}
    assert len(table) == 52
    assert isinstance(table.lookup("f"), HandOver) is False  # expired at 5.0: not found
    assert table.lookup("f").status == 404
    assert table.link_type("m") == "markdown"
    for round_ in range(3):  # enough changes to be folded into new records several times
        for i in range(0, 50, 3):
            table.apply(f"c{i}", record(f"c{i}", f"https://new.example/{round_}/{i}"))
            expected[f"c{i}"] = f"https://new.example/{round_}/{i}"
        for i in range(1, 50, 7):
            table.apply(f"c{i}", None)
            expected.pop(f"c{i}", None)
        table.apply(f"n{round_}", record(f"n{round_}", "https://n.example/"))
        expected[f"n{round_}"] = "https://n.example/"
        table.apply("ghost", None)  # deleting an unknown code changes nothing
        await wait_until(lambda folds=round_: table.folds > folds, what="a fold")
    folder.cancel()
    table.apply("m", record("m", type="html", expires_at=1e12))
    assert {code: location(table, code) for code in [*codes, "n0", "n1", "n2"]} == {
        code: expected.get(code) for code in [*codes, "n0", "n1", "n2"]
    }
    assert len(table) == len(expected) + 2  # plus "f" (expired, still held) and "m"
    assert table.link_type("m") == "html"
    assert table.lookup("c4").expires_at == 1e12  # kept through the foldings
    assert table._state.rows.get("n0") is not None  # folded into the records at least once


def test_a_bucket_read_ends_in_packed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_module, "COMPACT_MIN", 10)
    table = LinkTable()
    entries = {f"k{i}": record(f"k{i}", f"https://k.example/{i}") for i in range(40)}
    entries["bad"] = b"not json"
    entries["wrong"] = record("other", "https://x/")  # stored under another code's key
    entries["semi"] = record("semi", type="file;0")  # would break a record's meta field
    table.replace_all(entries)
    assert len(table) == 40 and not table._state.changes
    assert location(table, "k39") == "https://k.example/39"
    for unusable in ("bad", "wrong", "semi"):
        assert table.lookup(unusable).status == 404
    table.apply("semi", record("semi", type="html;x"))  # live, too: skipped, nothing breaks
    assert table.lookup("semi").status == 404 and len(table) == 40


def test_expiry_is_checked_at_every_lookup() -> None:
    now = [1000.0]
    table = LinkTable(clock=lambda: now[0])
    table.replace_all({"e": record("e", "https://e/", expires_at=math.nextafter(1000.0, 2000.0))})
    assert table.lookup("e").status == 302
    now[0] = 1001.0
    assert table.lookup("e").status == 404  # the cached answer expires too


def test_a_hundred_thousand_links_cost_under_100_bytes_each() -> None:
    count = 100_000
    codes = [f"u{i // 1000:03d}c{i:07d}" for i in range(count)]
    locations = [f"https://example.com/user{i // 1000:03d}/{i}?src=bench" for i in range(count)]
    payload = snapshot(codes, locations)
    del codes, locations
    gc.collect()
    tracemalloc.start()
    try:
        table = loaded(payload)
        del payload
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == count
    # A dict of code -> target held about 180 bytes a link; the targets alone are 45.
    assert held / count < 100, f"{held / count:.0f} bytes a link"
    assert location(table, "u099c0099999") == "https://example.com/user099/99999?src=bench"


def test_a_table_not_yet_loaded_answers_503_and_a_loaded_one_404() -> None:
    table = LinkTable()
    starting = table.lookup("docs")
    assert starting.status == 503 and ("Retry-After", "1") in starting.headers
    assert table.link_type("docs") == table_module.NOT_LOADED
    table.replace_all({})  # a first load, even an empty one, makes a miss an answer
    assert table.lookup("docs").status == 404 and table.link_type("docs") is None
