"""One owner's link records kept packed: compressed JSON chunks plus the changes since.

A million decoded `LinkRecord`s cost about 450 MB; the same records as zlib-compressed
JSON arrays cost a few tens of MB, and one owner's 10,000 records decode in a few
milliseconds when a page asks for them. Changes go to a small dict on top of the chunks
and are folded in once it grows past an eighth of the owner's links, so a put costs O(1)
amortised and never re-encodes the owner's links one by one. A load from the records
snapshot adopts the owner's values as they come (`adopt`: one blob, no step per record)
and compresses them later, off the event loop (`pack`).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Iterator

import msgspec

from trunk8_shared.records import LinkRecord

# Raw values gathered before they are compressed into a chunk (bytes of JSON).
CHUNK_BYTES = 256 * 1024
# Changes kept unpacked before they are folded into the chunks: at least this many...
MIN_CHANGES = 64
# ...and up to this fraction of the owner's links.
CHANGES_SHARE = 8

_records_decoder = msgspec.json.Decoder(list[LinkRecord])
_encoder = msgspec.json.Encoder()


def _chunk(values: list[bytes]) -> bytes:
    """A JSON array of the raw record values, compressed (level 1: fast, most of the gain)."""
    return compress(b",".join(values))


def compress(joined: bytes | memoryview) -> bytes:
    """Values joined by commas as one compressed JSON array (zlib releases the GIL)."""
    return zlib.compress(b"[" + joined + b"]", 1)


class OwnerLinks:
    """The live records of one owner: packed chunks, and changes (None = removed) on top."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        # Values adopted from a snapshot, joined by commas, until compressed into a chunk: a
        # view into the snapshot's buffer, which goes once every owner is compressed.
        self.raw: bytes | memoryview | None = None
        self._changes: dict[str, bytes | None] = {}
        self.types: Counter[str] = Counter()  # live links by type
        self.version = 0  # changes with every change: tells a decoded copy still current

    def __len__(self) -> int:
        return self.types.total()

    def load(self, values: list[bytes], types: Counter[str]) -> None:
        """A bulk load into an empty owner: the raw values of distinct codes, by type.

        Chunks hold an equal count of values, about `CHUNK_BYTES` each on average: cut
        without a Python step per value (a million of them are most of a warm restart).
        """
        self.version += 1
        self.types = types
        chunks = max(1, -(-sum(map(len, values)) // CHUNK_BYTES))
        size = -(-len(values) // chunks)
        self._chunks = [
            _chunk(values[start : start + size]) for start in range(0, len(values), size)
        ]

    def adopt(self, joined: bytes | memoryview, types: Counter[str]) -> None:
        """A bulk load into an empty owner: its values joined by commas, as a snapshot has them."""
        self.version += 1
        self.types = types
        self.raw = joined or None

    async def pack(self) -> None:
        """Compress the adopted values in a worker thread (zlib releases the GIL).

        Nothing here keeps a view of them afterwards: the snapshot's buffer goes with the
        last one.
        """
        raw = self.raw
        if raw is None:
            return
        chunk = await asyncio.get_running_loop().run_in_executor(None, compress, raw)
        if self.raw is raw:  # not folded or replaced meanwhile
            self._chunks.append(chunk)
            self.raw = None

    def put(self, code: str, value: bytes, link_type: str, old_type: str | None) -> None:
        """Add or replace the record of `code` (`old_type`: its type if it was held)."""
        self.version += 1
        if old_type is not None:
            self.types[old_type] -= 1
        self.types[link_type] += 1
        self._changes[code] = value
        self._maybe_fold()

    def remove(self, code: str, old_type: str) -> None:
        """Drop the record of `code`, which is held with type `old_type`."""
        self.version += 1
        self.types[old_type] -= 1
        self._changes[code] = None
        self._maybe_fold()

    def get(self, code: str) -> LinkRecord | None:
        """The record of `code`, if this owner holds it (decodes the chunks when not changed)."""
        if code in self._changes:
            value = self._changes[code]
            return _records_decoder.decode(b"[" + value + b"]")[0] if value is not None else None
        return next((r for r in self._packed() if r.code == code), None)

    def records(self) -> list[LinkRecord]:
        """Every live record, decoded (in no particular order)."""
        changes = self._changes
        records = [r for r in self._packed() if r.code not in changes]
        fresh = [value for value in changes.values() if value is not None]
        if fresh:
            records += _records_decoder.decode(b"[" + b",".join(fresh) + b"]")
        return records

    def _packed(self) -> Iterator[LinkRecord]:
        if self.raw is not None:
            yield from _records_decoder.decode(b"[" + self.raw + b"]")
        for chunk in self._chunks:
            yield from _records_decoder.decode(zlib.decompress(chunk))

    def _maybe_fold(self) -> None:
        if len(self._changes) > max(MIN_CHANGES, len(self) // CHANGES_SHARE):
            records = self.records()
            self._chunks, self._changes, self.raw = [], {}, None
            for start in range(0, len(records), 4096):
                part = records[start : start + 4096]
                self._chunks.append(zlib.compress(_encoder.encode(part), 1))
