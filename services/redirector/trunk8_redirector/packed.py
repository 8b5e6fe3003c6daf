"""Packed, read-only links: a million links without a Python object per link.

A dict of a million codes to target strings costs about 180 bytes a link (two string
objects and a dict entry). `PackedLinks` keeps the same in about 65: every link is one
record, `code NUL meta NUL target LF`, in one UTF-8 blob (`meta` is empty for a plain
redirect, else the type of another link and/or `;expiry`), and an open-addressing array
maps `hash(code)` to the record's offset at a load of at most one half. A lookup is a
probe or two, each one `bytes.startswith` at an offset: no scan, so unknown codes cost
what known ones do, and `hash` is keyed per process, so no client can aim collisions at
it. Records are never changed; the table keeps later changes beside them
(`table.TableState`) and folds them into new records now and then.
"""

from __future__ import annotations

import re
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, ne, not_

# Codes keep lone surrogates (a request path may decode to one): the round trip is exact.
_ENCODING, _ERRORS = "utf-8", "surrogatepass"
REDIRECT = "redirect"
# Slots per link, at least: at a load of a quarter, three unknown codes in four find an
# empty slot at once (4 bytes a slot: 16 MB at a million links).
LOAD_INVERSE = 4

Link = tuple[str, str, float | None]  # (type, normalised Location or "", expiry or None)


def packable(code: str, link_type: str) -> bool:
    """Whether a record can hold this code and type (no separator in either)."""
    return not (
        "\0" in code or "\n" in code or "\0" in link_type or "\n" in link_type or ";" in link_type
    )


def link_meta(link_type: str, expires_at: float | None) -> str:
    """A record's meta field: "" for a redirect without expiry."""
    meta = "" if link_type == REDIRECT else link_type
    return meta if expires_at is None else f"{meta};{expires_at!r}"


class PackedLinks:
    """Read-only links in one blob of records, found through an array of offsets."""

    __slots__ = ("blob", "empty", "mask", "size", "slots")

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
        columns = (codes, meta_column, targets)

        def sizes(measure: Callable[[str], int]) -> Iterator[int]:
            lengths = [map(measure, column) for column in columns]
            return map(sum, zip(*lengths, repeat(3), strict=False))  # + two NULs and a LF

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
        """Fill the slots with the records' offsets; returns how many replaced an earlier one."""
        size = 8
        while size < LOAD_INVERSE * len(codes):
            size *= 2
        typecode = "I" if len(self.blob) < 2**32 - 1 else "Q"
        empty = self.empty = 2 ** (8 * array(typecode).itemsize) - 1
        mask = self.mask = size - 1
        slots = self.slots = array(typecode, [empty]) * size
        # Each record into its home slot in one pass at C speed (a later one overwrites an
        # earlier one); then only the records that lost their slot (about one in nine) probe.
        homes = list(map(mask.__and__, map(hash, codes)))
        deque(map(slots.__setitem__, homes, offsets), maxlen=0)
        lost = compress(range(len(homes)), map(ne, map(slots.__getitem__, homes), offsets))
        startswith, replaced = self.blob.startswith, 0
        for row in lost:
            offset, slot = offsets[row], homes[row]
            key = self._code_at(offset) + b"\0"
            while (other := slots[slot]) != empty:
                if startswith(key, other):  # the same code again: the last record wins
                    replaced += 1
                    if offset > other:
                        slots[slot] = offset
                    break
                slot = (slot + 1) & mask
            else:
                slots[slot] = offset
        return replaced

    def __len__(self) -> int:
        return self.size

    def get(self, code: str) -> Link | None:
        """The link of `code`, or None."""
        slots, mask, empty = self.slots, self.mask, self.empty
        slot = hash(code) & mask
        offset = slots[slot]
        if offset == empty:
            return None
        key = code.encode(_ENCODING, _ERRORS) + b"\0"
        startswith = self.blob.startswith
        while not startswith(key, offset):
            slot = (slot + 1) & mask
            offset = slots[slot]
            if offset == empty:
                return None
        if "\0" in code:  # "a\0" + NUL would match the record of "a"
            return None
        return self._link(offset + len(key))

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
        empty = self.empty
        for offset in self.slots:
            if offset != empty:
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
