"""The files service's link table: the live file, markdown and html records by short code.

A `MirrorSink` filled from KV `trunk8_links` by a `KvMirror`; redirect records are left to
the redirector, and skipped while decoding: only a record's `type` is read for them, so a
million redirects cost this service nothing to hold; from the records snapshot it reads
only the values of the other links (`RecordsSnapshot.others`). `link_type` is this
service's finder for the `/{code}` dispatcher, and `live` is what a handler serves: both
check expiry at the moment they are asked.
"""

from __future__ import annotations

import logging
import time

import msgspec

from trunk8_shared.codes import from_kv_key
from trunk8_shared.records import LinkRecord, link_decoder
from trunk8_shared.snapshot import RecordsView

log = logging.getLogger("trunk8.files")

SERVED_TYPES = frozenset({"file", "markdown", "html"})


class LinkType(msgspec.Struct):
    """A link record's type alone (the decoder skips the other fields)."""

    type: str = ""


_type_decoder = msgspec.json.Decoder(LinkType)


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
        for key, value in entries.items():
            record = _decode(key, value)
            if record is not None:
                records[record.code] = record
        self.records = records
        self.updates += 1

    def replace_records(self, records: RecordsView) -> None:
        """Swap in a records snapshot: its file, markdown and html links alone."""
        self.replace_all(records.others)

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
