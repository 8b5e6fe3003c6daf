"""The packed table's compiled steps against its Python ones, and folds that never hold the loop.

No NATS here: tables are built from columns and fed bucket values directly, as the KV
mirror does. The compiled `_packed` must have been built (`make install`): a table built
by Python only is several times slower to join with, so a missing extension fails here.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from array import array
from collections import deque

import msgspec
import pytest

from trunk8_redirector import packed
from trunk8_redirector import table as table_module
from trunk8_redirector.packed import Fold, Link, PackedLinks, link_meta
from trunk8_redirector.table import LinkTable, TableState
from trunk8_shared.records import LinkRecord

# Codes of every width a str can have, a lone surrogate among them, and some repeated.
ALPHABET = "ab-_.~7é日\U0001f600\udcff"


def random_links(rng: random.Random, count: int) -> tuple[list[str], list[str], dict[str, str]]:
    codes = ["".join(rng.choices(ALPHABET, k=rng.randint(1, 6))) for _ in range(count)]
    targets = [f"https://t.example/{rng.choice(ALPHABET)}{i}" for i in range(count)]
    metas = {}
    for code in rng.sample(codes, count // 5):
        link_type = rng.choice(["redirect", "file", "markdown"])
        expiry = rng.choice([None, 0.0, 1e12, 1234.5])
        metas[code] = link_meta(link_type, expiry)
    return codes, targets, metas


def random_changes(rng: random.Random, rows: PackedLinks, count: int) -> dict[str, Link | None]:
    known = [code for code, _ in rows.items()]
    changes: dict[str, Link | None] = {}
    for i in range(count):
        roll = rng.random()
        if roll < 0.4 and known:
            changes[rng.choice(known)] = None  # a delete
        elif roll < 0.45:
            changes[f"gone{i}"] = None  # a delete of a code never there
        else:
            code = rng.choice(known) if roll < 0.7 and known else f"new{rng.choice(ALPHABET)}{i}"
            changes[code] = (rng.choice(["redirect", "html"]), f"https://c/{i}", None)
    return changes


def contents(rows: PackedLinks) -> dict[str, Link]:
    listed = dict(rows.items())
    assert len(listed) == len(rows)
    assert all(rows.get(code) == link for code, link in listed.items())
    return listed


def test_the_compiled_steps_are_built() -> None:
    assert packed.COMPILED is not None, "run `make install`: trunk8_redirector._packed is missing"


@pytest.mark.parametrize("seed", range(6))
def test_compiled_and_python_steps_build_the_same_tables(seed: int) -> None:
    rng = random.Random(seed)
    codes, targets, metas = random_links(rng, rng.choice([0, 1, 50, 3000]))
    fast = PackedLinks(codes, targets, metas)
    slow = PackedLinks(codes, targets, metas, compiled=False)
    assert bytes(fast.blob) == bytes(slow.blob)  # the same records, byte for byte
    expected = contents(slow)
    assert contents(fast) == expected
    last = dict(zip(codes, targets, strict=True))  # a repeated code keeps its last record
    assert {code: link[1] for code, link in expected.items()} == last
    for unknown in ("", "zz", "a\0", "\udcfe", "日本語"):
        if unknown not in last:
            assert fast.get(unknown) is None and slow.get(unknown) is None
    changes = random_changes(rng, slow, rng.choice([1, 40, 2000]))
    folded = {
        **{code: link for code, link in expected.items() if code not in changes},
        **{code: link for code, link in changes.items() if link is not None},
    }
    for compiled in (True, False):
        fold = Fold(fast if compiled else slow, changes, compiled=compiled)
        deque(fold.steps(), maxlen=0)
        assert contents(fold.result()) == folded


def test_both_steps_refuse_a_separator_and_a_broken_blob() -> None:
    for compiled in (True, False):
        for codes, targets in ((["a", "b"], ["https://a/", "x\ny"]), (["a\0"], ["https://a/"])):
            with pytest.raises(ValueError, match="NUL or a line feed"):
                PackedLinks(codes, targets, compiled=compiled)
    assert packed.COMPILED is not None
    with pytest.raises(ValueError, match="whole records"):
        packed.COMPILED.kept_records(b"a\0\0https://a/", 0, 13, {})
    with pytest.raises(ValueError, match="fewer records"):
        packed.COMPILED.index_records(array("Q", [2**64 - 1]) * 8, b"a\0\0x", 0, ["a"])


def test_both_steps_refuse_more_records_than_slots() -> None:
    for compiled in (True, False):
        builder = packed.Builder(4, compiled=compiled)  # 8 slots
        deque(builder.allocate(), maxlen=0)
        codes = [f"code{i}" for i in range(9)]
        with pytest.raises(ValueError, match="slots are full"):
            builder.add_columns(codes, ["https://a/"] * 9)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_fold_step_copies_only_its_own_records(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for the new table is set aside once: no step copies what earlier steps wrote
    (a buffer regrown and copied whole), each copies at most a step's worth of bytes (the
    slots of the Python steps too; their blob grows)."""
    monkeypatch.setattr(packed, "FOLD_STEP_SLOTS", 16 * 1024)  # 16 steps of slots
    rng = random.Random(3)
    count = 100_000
    codes = [f"c{i}" for i in range(count)]
    targets = [f"https://t.example/{'x' * rng.randrange(80)}/{i}" for i in range(count)]
    base = PackedLinks(codes, targets, compiled=compiled)
    changes: dict[str, Link | None] = {f"c{i}": None for i in range(0, count, 7)}
    changes.update({f"n{i}": ("redirect", f"https://n.example/{i}", None) for i in range(9000)})
    longest = max(len(line) + 1 for line in bytes(base.blob).split(b"\n"))
    bound = max(
        8 * packed.FOLD_STEP_SLOTS,
        packed.FOLD_STEP_BYTES[compiled] + longest,
        packed.FOLD_STEP_CHANGES[compiled] * longest,
    )
    fold = Fold(base, changes, compiled=compiled)
    builder, copied, allocations, steps = fold.builder, 0, set(), 0
    for _ in fold.steps():
        steps += 1
        assert builder.copied - copied <= bound, f"step {steps} copied {builder.copied - copied}"
        copied = builder.copied
        if isinstance(builder.blob, bytearray):  # set aside: its allocation never changes
            allocations.add(builder.blob.__alloc__())
    if compiled:  # the Python steps have no room left unwritten: their blob grows
        assert builder.regrown == 0 and len(allocations) == 1
    assert copied > 20 * bound  # the bound is far below the whole (about 8 MB)
    result = fold.result()
    assert len(result.blob) == builder.length  # the room left over is handed back
    assert len(result) == count - len(range(0, count, 7)) + 9000
    assert result.get("n8999") == ("redirect", "https://n.example/8999", None)
    assert result.get("c7") is None and result.get("c8") == base.get("c8")


def test_old_rows_held_elsewhere_keep_their_records_after_a_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fold hands the old rows' pages back only when nothing else holds them."""
    monkeypatch.setattr(packed, "RELEASE_STEP", 4096)  # many release steps, if any
    count = 20_000
    codes = [f"c{i}" for i in range(count)]
    table = LinkTable()
    state = TableState(
        table, PackedLinks(codes, [f"https://old/{'o' * 40}{i}" for i in range(count)])
    )
    held = state.rows
    expected = contents(held)
    for i in range(count // 2):
        state.apply(f"c{i}", record(f"c{i}", f"https://new/{i}"))
    deque(state.fold_steps(), maxlen=0)
    assert state.rows is not held and not state.changes
    assert contents(held) == expected  # still readable: not handed back
    assert state.rows.get("c1") == ("redirect", "https://new/1", None)


def test_a_fold_that_fails_gives_every_change_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "FOLD_STEP_CHANGES", {True: 1, False: 1})  # one a step
    table = LinkTable()
    state = TableState(table, PackedLinks(["a", "b"], ["https://a/", "https://b/"]))
    state.apply("a", record("a", "https://a2/"))
    state.apply("b", None)
    state.changes["bad"] = ("redirect", "https://x/\nX-Evil: 1", None)  # never from apply
    steps = state.fold_steps()
    next(steps)  # under way: the changes set aside, new ones beside them
    state.apply("c", record("c", "https://c/"))
    state.apply("a", record("a", "https://a3/"))
    with pytest.raises(ValueError, match="NUL or a line feed"):
        deque(steps, maxlen=0)
    assert not state.folding and state.rows.get("b") is not None
    assert state.find("a") == ("redirect", "https://a3/", None)  # the later change wins
    assert state.find("b") is None and state.find("c") == ("redirect", "https://c/", None)
    assert set(state.changes) == {"a", "b", "bad", "c"}


def test_released_pages_read_as_zeros() -> None:
    assert packed.COMPILED is not None
    blob = bytearray(b"x" * (1 << 20))
    packed.COMPILED.release_pages(blob, 0, len(blob))
    assert blob.count(0) >= len(blob) - 2 * 4096  # all but the partial pages at each end
    assert not blob.strip(b"x").strip(b"\0")  # one run of zeros, inside the range


def record(code: str, url: str) -> bytes:
    return msgspec.json.encode(LinkRecord(code=code, owner="u", type="redirect", url=url))


def location(table: LinkTable, code: str) -> str | None:
    answer = table.lookup(code)
    return dict(answer.headers).get("Location") if answer.status == 302 else None


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_a_fold_runs_in_short_steps_and_loses_no_change(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100,000 links and 30,000 changes: the fold takes many steps of a few ms at most,
    and changes made before, during and after it are all served, deletes included."""
    if not compiled:
        monkeypatch.setattr(packed, "COMPILED", None)
    count = 100_000
    codes = [f"c{i}" for i in range(count)]
    table = LinkTable()
    state = TableState(table, PackedLinks(codes, [f"https://old/{i}" for i in range(count)]))
    state.install()
    expected: dict[str, str | None] = {code: f"https://old/{i}" for i, code in enumerate(codes)}
    rng = random.Random(9)

    def change(code: str, url: str | None) -> None:
        table.apply(code, None if url is None else record(code, url))
        expected[code] = url

    longest_gap, probing = 0.0, True

    async def probe() -> None:  # the loop's longest pause while the fold runs
        nonlocal longest_gap
        last = time.perf_counter()
        while probing:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest_gap, last = max(longest_gap, now - last), now

    # The test process holds far more objects than a redirector: a full collection of them
    # (100 ms here) is not the fold's, so they are kept out of the collector's way.
    gc.collect()
    gc.freeze()
    folder = asyncio.create_task(table.keep_folded())
    for i in range(30_000):  # before the fold: updates, deletes and new codes
        pick = rng.randrange(count)
        change(f"c{pick}" if i % 3 else f"n{i}", None if i % 5 == 0 else f"https://before/{i}")
    prober = asyncio.create_task(probe())
    try:
        deadline = time.monotonic() + 60
        during = 0
        while table.folds == 0:  # during the fold: a few changes per turn of the loop
            assert time.monotonic() < deadline, "the fold did not finish within 60 s"
            if table._state.folding:
                for _ in range(3):
                    during += 1
                    pick = rng.randrange(count)
                    url = None if during % 4 == 0 else f"https://during/{during}"
                    change(f"c{pick}" if during % 2 else f"d{during}", url)
                sample = f"c{rng.randrange(count)}"
                assert location(table, sample) == expected[sample]
            await asyncio.sleep(0)
    finally:
        probing = False
        await prober
        folder.cancel()
        gc.unfreeze()
    assert during > 50  # the fold took many turns of the loop
    assert table.longest_fold_step < 0.02, f"a fold step took {table.longest_fold_step:.3f} s"
    assert longest_gap < 0.25, f"the loop paused {longest_gap:.3f} s"
    # The new rows hold the changes made before; the ones made during it stay beside them.
    assert table._state.rows.get(f"n{3}") is not None or expected.get("n3") is None
    assert len(table._state.changes) <= 3 * during
    for i in range(200):  # after the fold
        change(f"c{i}", None if i % 2 else f"https://after/{i}")
    assert {code: location(table, code) for code in expected} == expected
    assert len(table) == sum(url is not None for url in expected.values())


async def test_a_fold_given_up_when_a_whole_load_replaces_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table_module, "COMPACT_MIN", 10)
    table = LinkTable()
    TableState(table, PackedLinks(["a"], ["https://a/"])).install()
    folder = asyncio.create_task(table.keep_folded())
    try:
        for i in range(40):
            table.apply(f"k{i}", record(f"k{i}", f"https://k/{i}"))
        old = table._state
        for _ in range(1000):  # the fold starts at the task's next turn
            if old.folding:
                break
            await asyncio.sleep(0)
        assert old.folding
        table.replace_all({"z": record("z", "https://z/")})  # a resync mid-fold
        await asyncio.sleep(0.05)
        assert table.folds == 0 and location(table, "z") == "https://z/"
        assert location(table, "k1") is None and len(table) == 1
        assert not old.folding and len(old.changes) == 40  # given back, nothing lost
    finally:
        folder.cancel()
