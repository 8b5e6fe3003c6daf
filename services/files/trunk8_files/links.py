"""The files service's link table: the live file, markdown and html records by short code.

A `MirrorSink` filled from KV `trunk8_links` by a `KvMirror`; redirect records are left to
the redirector, and skipped while decoding: only a record's `type` is read for them, so a
million redirects cost this service nothing to hold. `link_type` is this service's finder
for the `/{code}` dispatcher, and `live` is what a handler serves: both check expiry at
the moment they are asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from itertools import compress
from operator import attrgetter

import msgspec

from trunk8_shared.codes import from_kv_key
from trunk8_shared.records import LinkRecord, link_decoder

log = logging.getLogger("trunk8.files")

SERVED_TYPES = frozenset({"file", "markdown", "html"})
# Records whose types are read in one call while a whole state is loaded.
LOAD_BATCH = 50_000


class LinkType(msgspec.Struct, gc=False):
    """A link record's type alone (the decoder skips the other fields)."""

    type: str = ""


_type_decoder = msgspec.json.Decoder(LinkType)
_types_decoder = msgspec.json.Decoder(list[LinkType])
_type_of = attrgetter("type")


def _served_keys(entries: dict[str, bytes]) -> Iterator[str]:
    """The keys whose records may be of a served type (every key of an unreadable batch).

    The types are read a batch per decoder call: at a million redirects, one call per
    record cost half a second of a warm restart for nothing kept.
    """
    keys, values = list(entries), list(entries.values())
    for start in range(0, len(keys), LOAD_BATCH):
        batch = keys[start : start + LOAD_BATCH]
        try:
            joined = b"[" + b",".join(values[start : start + LOAD_BATCH]) + b"]"
            types = _types_decoder.decode(joined)
        except msgspec.DecodeError:  # a bad record: each one is decoded alone, and logged
            yield from batch
            continue
        yield from compress(batch, map(SERVED_TYPES.__contains__, map(_type_of, types)))


class FileLinks:
    """Short code -> record, for the link types this service serves."""

    def __init__(self) -> None:
        self.records: dict[str, LinkRecord] = {}
        self.updates = 0  # changes applied since start, snapshots included

    def __len__(self) -> int:
        return len(self.records)

    def live(self, code: str) -> LinkRecord | None:
        """The record of `code` if it is ours and not expired now, else None."""
        record = self.records.get(code)
        if record is None:
            return None
        if record.expires_at is not None and time.time() > record.expires_at:
            return None
        return record

    def link_type(self, code: str) -> str | None:
        """The type of a live code of ours, or None (a `TypeFinder`)."""
        record = self.live(code)
        return record.type if record is not None else None

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a full snapshot of the links bucket."""
        records: dict[str, LinkRecord] = {}
        for key in _served_keys(entries):
            value = entries[key]
            record = _decode(key, value)
            if record is not None:
                records[record.code] = record
        self.records = records
        self.updates += 1

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one put (value) or delete (None)."""
        self.updates += 1
        record = _decode(key, value) if value is not None else None
        if record is None:
            self.records.pop(from_kv_key(key), None)
        else:
            self.records[record.code] = record


def _decode(key: str, value: bytes) -> LinkRecord | None:
    try:
        if _type_decoder.decode(value).type not in SERVED_TYPES:
            return None
        return link_decoder.decode(value)
    except msgspec.DecodeError as err:  # ValidationError included
        log.warning("ignoring undecodable record for key %r: %s", key, err)
        return None
