"""Packed, read-only links: a million links without a Python object per link.

A dict of a million codes to target strings costs about 180 bytes a link (two string
objects and a dict entry). `PackedLinks` keeps the same in about 75: every link is one
record, `code NUL meta NUL target LF`, in one UTF-8 blob (`meta` is empty for a plain
redirect, else the type of another link and/or `;expiry`), and an open-addressing array
maps `hash(code)` to the record's offset, tagged with more bits of the hash, at a load of
at most one half. A lookup reads a slot or two and the blob once (`bytes.startswith` at
an offset) when a tag matches: no scan, so unknown codes cost what known ones do, and
`hash` is keyed per process, so no client can aim collisions at it. Records are never
changed; the table keeps later changes beside them (`table.TableState`) and folds them
into new records now and then.
"""

from __future__ import annotations

import re
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, and_, ne, not_, or_

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

Link = tuple[str, str, float | None]  # (type, normalised Location or "", expiry or None)


def packable(code: str, link_type: str, target: str) -> bool:
    """Whether a record can hold this link (no separator where it would break one)."""
    fields = code + link_type + target
    return "\0" not in fields and "\n" not in fields and ";" not in link_type


def link_meta(link_type: str, expires_at: float | None) -> str:
    """A record's meta field: "" for a redirect without expiry."""
    meta = "" if link_type == REDIRECT else link_type
    return meta if expires_at is None else f"{meta};{expires_at!r}"


class PackedLinks:
    """Read-only links in one blob of records, found through an array of offsets."""

    __slots__ = ("blob", "mask", "size", "slots")

    def __init__(
        self,
        codes: Sequence[str],
        targets: Sequence[str],
        metas: dict[str, str] | None = None,
    ) -> None:
        """Records of `codes[i]` -> `targets[i]` ("" unless a redirect); `metas` by code."""
        count = len(codes)
        meta_column: Sequence[str] = (
            list(map(metas.get, codes, repeat(""))) if metas else [""] * count
        )
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

        self._pack(text, codes, sizes)

    def _pack(
        self,
        text: str,
        codes: Sequence[str],
        sizes: Callable[[Callable[[str], int]], Iterator[int]],
    ) -> None:
        """Keep `text` (one record a line, of `codes`) as the blob and index it.

        `sizes(measure)` gives each record's size, its strings measured by `measure`.
        """
        count = len(codes)
        if text.count("\n") != count or text.count("\0") != 2 * count:
            raise ValueError("a code, type or target holds a NUL or a line feed")
        blob = text.encode(_ENCODING, _ERRORS)
        ascii_only = len(blob) == len(text)  # then a character is a byte
        del text
        record_sizes = sizes(len if ascii_only else _utf8_size)
        self.blob = blob
        self.size = count - self._index(codes, list(accumulate(record_sizes, initial=0)))

    def _index(self, codes: Sequence[str], offsets: list[int]) -> int:
        """Fill the slots with the records' tagged offsets; returns how many were replaced."""
        size = 8
        while size < LOAD_INVERSE * len(codes):
            size *= 2
        if len(self.blob) >= _OFFSET_MASK:
            raise ValueError("over a terabyte of links")
        mask = self.mask = size - 1
        slots = self.slots = array("Q", [_EMPTY]) * size
        hashes = list(map(hash, codes))
        homes = list(map(mask.__and__, hashes))
        values = list(map(or_, map(and_, hashes, repeat(_TAG_BITS)), offsets))
        del hashes
        # Each record into its home slot in one pass at C speed (a later one overwrites an
        # earlier one); then only the records that lost their slot (about one in four) probe.
        deque(map(slots.__setitem__, homes, values), maxlen=0)
        lost = compress(range(len(homes)), map(ne, map(slots.__getitem__, homes), values))
        startswith, replaced = self.blob.startswith, 0
        for row in lost:
            value, slot = values[row], homes[row]
            tag, key = value & _TAG_BITS, b""
            while (other := slots[slot]) != _EMPTY:
                if other & _TAG_BITS == tag:  # rarely: the blob is read only then
                    key = key or self._code_at(value & _OFFSET_MASK) + b"\0"
                    if startswith(key, other & _OFFSET_MASK):
                        replaced += 1  # the same code again: the last record wins
                        if value > other:
                            slots[slot] = value
                        break
                slot = (slot + 1) & mask
            else:
                slots[slot] = value
        return replaced

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
        return self.blob[offset : self.blob.index(b"\0", offset)]

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
        """`base` with `changes` applied (None deletes): the records of a new table.

        At C speed but for the changes: the base's lines are split, not parsed one by one.
        """
        text = base.blob.decode(_ENCODING, _ERRORS)
        codes = _CODE.findall(text)  # one per line, replaced records included (see below)
        records = text.split("\n")
        records.pop()  # after the last line feed
        del text
        unchanged = list(map(not_, map(changes.__contains__, codes)))
        # A record another one of its code replaced comes back too, before it: the index
        # keeps the last one again.
        kept_codes = list(compress(codes, unchanged))
        kept = list(compress(records, unchanged))
        del codes, records, unchanged
        for code, link in changes.items():
            if link is not None:
                link_type, target, expires_at = link
                kept_codes.append(code)
                kept.append(f"{code}\0{link_meta(link_type, expires_at)}\0{target}")
        links = cls.__new__(cls)
        text = "\n".join(kept) + "\n" if kept else ""

        def sizes(measure: Callable[[str], int]) -> Iterator[int]:
            return map(add, map(measure, kept), repeat(1))  # + a LF

        links._pack(text, kept_codes, sizes)
        return links


def _utf8_size(text: str) -> int:
    return len(text.encode(_ENCODING, _ERRORS))


_CODE = re.compile(r"^([^\0\n]*)\0", re.MULTILINE)  # what starts each line of a blob


EMPTY_LINKS = PackedLinks([], [])
