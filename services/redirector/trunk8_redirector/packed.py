"""Packed, read-only links: a million links without a Python object per link.

A dict of a million codes to target strings costs about 180 bytes a link (two string
objects and a dict entry). `PackedLinks` keeps the same in about 75: every link is one
record, `code NUL meta NUL target LF`, in one UTF-8 blob (`meta` is empty for a plain
redirect, else the type of another link and/or `;expiry`), and an open-addressing array
maps `hash(code)` to the record's offset, tagged with more bits of the hash, at a load of
at most one half. A lookup reads a slot or two and the blob once (`bytes.startswith` at
an offset) when a tag matches: no scan, so unknown codes cost what known ones do, and
`hash` is keyed per process, so no client can aim collisions at it.

Records are never changed; the table keeps later changes beside them (`table.TableState`)
and folds them into new records now and then with a `Fold`, which builds the new table a
bounded step at a time so that the serving loop can run between steps. Building (a
`Builder`) has two implementations of its bulk steps: the compiled `_packed.c` (a million
links in 0.4-0.5 s on a busy 2-core machine, against 2-4 s) and the Python below, used
where the extension could not be built (a differential test holds them to the same tables).
"""

from __future__ import annotations

import mmap
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, chain, compress, islice, repeat
from operator import add, and_, ne, not_, or_
from types import ModuleType
from typing import NamedTuple, TypeAlias

try:
    from . import _packed

    COMPILED: ModuleType | None = _packed
except ImportError:  # no C compiler where it was installed: the Python steps do it all
    COMPILED = None

# Codes keep lone surrogates (a request path may decode to one): the round trip is exact.
_ENCODING, _ERRORS = "utf-8", "surrogatepass"
REDIRECT = "redirect"
# Slots per link, at least: at a load under a half, most unknown codes find an empty slot
# at once, and a slot of another code is told apart by its tag (8 bytes a slot: 16 MB at a
# million links).
LOAD_INVERSE = 2
# A slot holds a record's offset in its low 40 bits and, above, the same 24 bits of its
# code's hash (the slot's number comes from the low bits).
_OFFSET_MASK = (1 << 40) - 1
_TAG_BITS = ((1 << 64) - 1) ^ _OFFSET_MASK
_EMPTY = (1 << 64) - 1  # no record is that far into a blob
# A fold's steps, each under 2 ms on a slow core (measured: docs/benchmarks.md): blob bytes
# of records kept, changes packed or added, empty slots filled. Python's steps do less.
FOLD_STEP_BYTES = {True: 64 * 1024, False: 16 * 1024}
FOLD_STEP_CHANGES = {True: 1024, False: 256}
FOLD_STEP_SLOTS = 128 * 1024  # 1 MB of fresh pages: the kernel maps each on first write
RELEASE_STEP = 8 * 1024 * 1024  # bytes of a dead table's pages handed back per step

Link = tuple[str, str, float | None]  # (type, normalised Location or "", expiry or None)
# An array built at once, or room set aside and filled a step at a time (a fold's).
Slots: TypeAlias = "array[int] | memoryview"


def packable(code: str, link_type: str, target: str) -> bool:
    """Whether a record can hold this link (no separator where it would break one)."""
    fields = code + link_type + target
    return "\0" not in fields and "\n" not in fields and ";" not in link_type


def link_meta(link_type: str, expires_at: float | None) -> str:
    """A record's meta field: "" for a redirect without expiry."""
    meta = "" if link_type == REDIRECT else link_type
    return meta if expires_at is None else f"{meta};{expires_at!r}"


def slot_count(links: int) -> int:
    """The number of slots for up to `links` links: a power of 2, at least twice as many."""
    size = 8
    while size < LOAD_INVERSE * links:
        size *= 2
    return size


class PackedLinks:
    """Read-only links in one blob of records, found through an array of offsets."""

    __slots__ = ("blob", "mask", "size", "slots")

    blob: bytes | bytearray
    mask: int
    size: int
    slots: Slots

    def __init__(
        self,
        codes: Sequence[str],
        targets: Sequence[str],
        metas: dict[str, str] | None = None,
        compiled: bool = True,
    ) -> None:
        """Records of `codes[i]` -> `targets[i]` ("" unless a redirect); `metas` by code.

        `compiled`: use the compiled steps when they were built (False: the Python ones).
        """
        builder = Builder(len(codes), compiled)
        deque(builder.allocate(builder.size), maxlen=0)
        meta_column = list(map(metas.get, codes, repeat(""))) if metas else None
        builder.add_columns(_listed(codes), _listed(targets), meta_column)
        built = builder.finish()
        self.blob, self.slots, self.mask = built.blob, built.slots, built.mask
        self.size = built.size

    def __len__(self) -> int:
        return self.size

    def get(self, code: str) -> Link | None:
        """The link of `code`, or None."""
        slots, mask = self.slots, self.mask
        code_hash = hash(code)
        slot = code_hash & mask
        value = slots[slot]
        if value == _EMPTY:
            return None  # most unknown codes end here
        tag = code_hash & _TAG_BITS
        key = b""
        while True:
            # A slot of another tag holds another code: no need to read the blob for it.
            if value & _TAG_BITS == tag:
                key = key or code.encode(_ENCODING, _ERRORS) + b"\0"
                offset = value & _OFFSET_MASK
                if self.blob.startswith(key, offset):
                    if "\0" in code:  # "a\0" + NUL would match the record of "a"
                        return None
                    return self._link(offset + len(key))
            slot = (slot + 1) & mask
            value = slots[slot]
            if value == _EMPTY:
                return None

    def _code_at(self, offset: int) -> bytes:
        return bytes(self.blob[offset : self.blob.index(b"\0", offset)])

    def _link(self, start: int) -> Link:
        """The link of the record whose meta field starts at `start`."""
        blob = self.blob
        meta_end = blob.index(b"\0", start)
        end = blob.index(b"\n", meta_end)
        target = blob[meta_end + 1 : end].decode(_ENCODING, _ERRORS)
        if meta_end == start:
            return REDIRECT, target, None
        link_type, _, expiry = blob[start:meta_end].decode(_ENCODING, _ERRORS).partition(";")
        return link_type or REDIRECT, target, float(expiry) if expiry else None

    def items(self) -> Iterator[tuple[str, Link]]:
        """Every link as (code, link), in no particular order."""
        for value in self.slots:
            if value != _EMPTY:
                offset = value & _OFFSET_MASK
                code = self._code_at(offset)
                yield code.decode(_ENCODING, _ERRORS), self._link(offset + len(code) + 1)

    @classmethod
    def merged(cls, base: PackedLinks, changes: dict[str, Link | None]) -> PackedLinks:
        """`base` with `changes` applied (None deletes), built at once."""
        fold = Fold(base, changes)
        deque(fold.steps(), maxlen=0)
        return fold.result()


class Records(NamedTuple):
    """Records packed and not added yet: their codes, bytes, and sizes (Python steps only)."""

    codes: list[str]
    records: bytes
    sizes: list[int] | None  # None: the compiled steps find each record's end themselves


def slot_room(count: int, compiled: ModuleType | None) -> memoryview:
    """Room for `count` slots, set aside at once and not written: the kernel maps its pages
    as they are first written (a fold fills them a step at a time)."""
    room = compiled.reserve(8 * count) if compiled is not None else mmap.mmap(-1, 8 * count)
    return memoryview(room).cast("Q")


class Builder:
    """A `PackedLinks` being built: slots allocated, then records added a batch at a time.

    Records are appended to one blob in the order added and indexed as they come; a code
    added again replaces its earlier record (which stays in the blob, unreachable). A fold
    sets room aside first (`allocate` in steps, `reserve`), so that every later step copies
    only its own records: `copied` counts the bytes written, `regrown` the records appended
    past the room set aside (the blob grown, copied whole whenever `realloc` moves it; never
    in a fold with the compiled steps).
    """

    def __init__(self, capacity: int, compiled: bool = True) -> None:
        self.compiled = COMPILED if compiled else None
        self.size = slot_count(capacity)
        self.slots: Slots = array("Q")
        self.blob: bytes | bytearray = b""
        self.length = 0  # bytes of records in the blob (room set aside may follow)
        self.count = 0  # records added
        self.replaced = 0  # of which replaced by a later one of the same code
        self.copied = 0  # bytes written into the slots and the blob, so far
        self.regrown = 0

    def allocate(self, step: int | None = None) -> Iterator[None]:
        """Allocate the empty slots, `step` (or `FOLD_STEP_SLOTS`) at a time, yielding after
        each step."""
        block = array("Q", [_EMPTY]) * min(step or FOLD_STEP_SLOTS, self.size)  # powers of 2
        if len(block) == self.size:
            self.slots = block  # at once: no copy (freed copies leave the heap fragmented)
            return
        # The whole array set aside first: an array grown a step at a time is copied whole
        # each time it outgrows its allocation (12-15 ms at a million links).
        slots = slot_room(self.size, self.compiled)
        for start in range(0, self.size, len(block)):
            slots[start : start + len(block)] = block
            self.copied += 8 * len(block)
            yield
        self.slots = slots

    def reserve(self, size: int) -> None:
        """Set aside room for `size` bytes of records, before any is added.

        Compiled steps only: Python has no bytearray left unwritten, and zero-filling 60 MB
        at once would hold the loop 60 ms; there the blob grows as records come, copied
        whenever `realloc` moves it.
        """
        if self.length:
            raise RuntimeError("room is set aside before the first records")
        if self.compiled is not None:
            self.blob = self.compiled.reserve(size)

    def pack(self, codes: list[str], targets: list[str], metas: list[str] | None = None) -> Records:
        """The records `codes[i]` -> `targets[i]` with `metas[i]` ("" when None), unadded."""
        if self.compiled is not None:
            return Records(codes, self.compiled.pack_records(codes, metas, targets), None)
        meta_column: Sequence[str] = metas or [""] * len(codes)
        # One join of the columns interleaved with the separators: no string per record.
        text = "".join(
            chain.from_iterable(
                zip(codes, repeat("\0"), meta_column, repeat("\0"), targets, repeat("\n"))
            )
        )

        def sizes(measure: Callable[[str], int]) -> Iterator[int]:
            lengths = map(add, map(measure, codes), map(measure, targets))
            if metas:
                lengths = map(add, lengths, map(measure, meta_column))
            return map(add, lengths, repeat(3))  # + two NULs and a LF

        return _encoded(codes, text, sizes)

    def add_columns(
        self, codes: list[str], targets: list[str], metas: list[str] | None = None
    ) -> None:
        """Add the records `codes[i]` -> `targets[i]` with `metas[i]` ("" when None)."""
        self.add(self.pack(codes, targets, metas))

    def add_kept(
        self, blob: bytes | bytearray, start: int, stop: int, drop: dict[str, Link | None]
    ) -> None:
        """Add the records of blob[start:stop] (whole ones) whose code `drop` does not hold."""
        if self.compiled is not None:
            codes, records = self.compiled.kept_records(blob, start, stop, drop)
            self.add(Records(codes, records, None))
            return
        text = blob[start:stop].decode(_ENCODING, _ERRORS)
        codes = _CODE.findall(text)
        lines = text.split("\n")
        lines.pop()  # after the last line feed
        del text
        kept = list(map(not_, map(drop.__contains__, codes)))
        codes = list(compress(codes, kept))
        lines = list(compress(lines, kept))

        def sizes(measure: Callable[[str], int]) -> Iterator[int]:
            return map(add, map(measure, lines), repeat(1))  # + a LF

        self.add(_encoded(codes, "\n".join(lines) + "\n" if lines else "", sizes))

    def add(self, packed: Records) -> None:
        """Append packed records to the blob and index them."""
        codes, records, sizes = packed
        start, end = self.length, self.length + len(records)
        if end >= _OFFSET_MASK:
            raise ValueError("over a terabyte of links")
        blob = self.blob
        if not blob:
            self.blob = records  # a table built at once keeps these bytes: no copy
        elif isinstance(blob, bytearray) and end <= len(blob):
            blob[start:end] = records  # into the room set aside: these records only
            self.copied += len(records)
        else:  # no room set aside: the blob grows, copied whole whenever it is reallocated
            grown = blob if isinstance(blob, bytearray) else bytearray(blob)
            del grown[start:]
            grown += records
            self.blob = grown
            self.copied += len(records)
            self.regrown += 1
        self.length = end
        self.count += len(codes)
        if sizes is None:
            assert self.compiled is not None
            written = memoryview(self.blob)[:end]  # not the room after: never written yet
            self.replaced += self.compiled.index_records(self.slots, written, start, codes)
            written.release()
        else:
            self.replaced += self._index(codes, accumulate(sizes, initial=start))

    def _index(self, codes: list[str], offsets: Iterable[int]) -> int:
        """Place the records at `offsets` in the slots; returns how many were replaced."""
        slots = self.slots
        mask = len(slots) - 1
        hashes = list(map(hash, codes))
        homes = list(map(mask.__and__, hashes))
        values = list(map(or_, map(and_, hashes, repeat(_TAG_BITS)), offsets))
        del hashes
        # Each record into its home slot, if empty, in one pass at C speed (a later one
        # overwrites an earlier one); then only the records that lost their slot probe.
        free = list(map(_EMPTY.__eq__, map(slots.__getitem__, homes)))
        deque(map(slots.__setitem__, compress(homes, free), compress(values, free)), maxlen=0)
        lost = compress(range(len(homes)), map(ne, map(slots.__getitem__, homes), values))
        startswith, replaced = self.blob.startswith, 0
        for row in lost:
            value, slot = values[row], homes[row]
            tag = value & _TAG_BITS
            key: bytes | bytearray = b""
            while (other := slots[slot]) != _EMPTY:
                if other & _TAG_BITS == tag:  # rarely: the blob is read only then
                    if not key:
                        offset = value & _OFFSET_MASK
                        key = self.blob[offset : self.blob.index(b"\0", offset) + 1]
                    if startswith(key, other & _OFFSET_MASK):
                        replaced += 1  # the same code again: the last record wins
                        if value > other:
                            slots[slot] = value
                        break
                slot = (slot + 1) & mask
                if slot == homes[row]:  # round the whole table: more records than slots
                    raise ValueError("no free slot: the slots are full")
            else:
                slots[slot] = value
        return replaced

    def finish(self) -> PackedLinks:
        """The table built (the slots must have been allocated)."""
        if len(self.slots) != self.size:
            raise RuntimeError("slots not allocated")
        if len(self.blob) > self.length and isinstance(self.blob, bytearray):
            # Room set aside for records that were dropped: never written, so the pages
            # were never mapped; a bytearray over half used keeps its allocation (no copy).
            del self.blob[self.length :]
        links = object.__new__(PackedLinks)
        links.blob, links.slots, links.mask = self.blob, self.slots, self.size - 1
        links.size = self.count - self.replaced
        return links


class Fold:
    """`base` with `changes` applied (None deletes), built by `steps` a bounded step at a time.

    The changes must not be modified until the fold is done. At C speed a million links
    fold in about a quarter of a second, in steps of a millisecond or two; the records of
    `base` are copied, not parsed into objects.
    """

    def __init__(
        self,
        base: PackedLinks,
        changes: dict[str, Link | None],
        capacity: int | None = None,
        compiled: bool = True,
    ) -> None:
        """`capacity`: how many links the new table will hold (at most), if known."""
        self.base = base
        self.changes = changes
        self.builder = Builder(capacity or len(base) + len(changes), compiled)

    def steps(self) -> Iterator[None]:
        """Build the new table, yielding after each step; then `result` returns it."""
        builder, blob, changes = self.builder, self.base.blob, self.changes
        fast = builder.compiled is not None
        yield from builder.allocate()
        # The changes are packed first, so the new blob's room is known and set aside at
        # once (the records kept take at most the old blob's bytes): no step regrows it.
        packed: deque[Records] = deque()
        live = ((code, link) for code, link in changes.items() if link is not None)
        while batch := list(islice(live, FOLD_STEP_CHANGES[fast])):
            codes = [code for code, _ in batch]
            targets = [link[1] for _, link in batch]
            metas = [link_meta(link[0], link[2]) for _, link in batch]
            packed.append(builder.pack(codes, targets, metas))
            yield
        builder.reserve(len(blob) + sum(len(records.records) for records in packed))
        step, start = FOLD_STEP_BYTES[fast], 0
        while start < len(blob):
            stop = blob.find(b"\n", min(start + step, len(blob)) - 1) + 1
            if stop <= start:
                raise ValueError("a blob that does not end with a record")
            builder.add_kept(blob, start, stop, changes)
            start = stop
            yield
        while packed:
            builder.add(packed.popleft())
            yield

    def result(self) -> PackedLinks:
        """The new table, once `steps` ran to its end."""
        return self.builder.finish()


def released(buffer: bytes | bytearray | Slots) -> Iterator[None]:
    """Hand a dead table's buffer back to the kernel a step at a time (compiled only).

    Whoever calls this must hold the only reference: the pages read as zeros afterwards.
    Its final free then unmaps next to nothing, where 60 MB at once take the loop 4-5 ms.
    """
    if COMPILED is None:
        return
    size = len(buffer) * (8 if isinstance(buffer, (array, memoryview)) else 1)
    for start in range(0, size, RELEASE_STEP):
        COMPILED.release_pages(buffer, start, start + RELEASE_STEP)
        yield


def _listed(column: Sequence[str]) -> list[str]:
    return column if isinstance(column, list) else list(column)


def _encoded(
    codes: list[str], text: str, sizes: Callable[[Callable[[str], int]], Iterator[int]]
) -> Records:
    """The records of `text` (one a line, of `codes`); `sizes(measure)` gives each size."""
    count = len(codes)
    if text.count("\n") != count or text.count("\0") != 2 * count:
        raise ValueError("a code, type or target holds a NUL or a line feed")
    records = text.encode(_ENCODING, _ERRORS)
    ascii_only = len(records) == len(text)  # then a character is a byte
    del text
    return Records(codes, records, list(sizes(len if ascii_only else _utf8_size)))


def _utf8_size(text: str) -> int:
    return len(text.encode(_ENCODING, _ERRORS))


_CODE = re.compile(r"^([^\0\n]*)\0", re.MULTILINE)  # what starts each line of a blob


EMPTY_LINKS = PackedLinks([], [])
