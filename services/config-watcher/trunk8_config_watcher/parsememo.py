"""What each links file was parsed into, remembered across restarts under `<data>/.trunk8/`.

Per file: the SHA-256 of its bytes, its codes in file order, its refused links with their
reasons, and the SHA-256 of its records as published. At a warm start a file whose bytes
are unchanged takes its links from the published state (the records snapshot), undecoded,
instead of being parsed, but only when the published records of its codes hash to what
the file produced: a code served from another user's file, or a publication that never
happened, makes that file parsed again. The memo is a cache: a missing, unreadable or other-version
memo only means every file is parsed, as on a first start.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from trunk8_shared.records import LinkRecord, json_encoder
from trunk8_shared.snapshot import OwnerRecords, kv_keys

from .catalog import RememberedLinks

log = logging.getLogger("trunk8.config_watcher")

MEMO_FILE = "parsed.msgpack"
# 2: records digested as one JSON array (version 1 hashed each record with its length).
MEMO_VERSION = 2


class FileMemo(msgspec.Struct, array_like=True):
    """One links file: its bytes' digest, what it produced, and those records' digest."""

    digest: str
    codes: list[str]
    refused: dict[str, str]
    records: str


class ParseMemo(msgspec.Struct, kw_only=True):
    """Every remembered links file, by path relative to the data directory."""

    v: int = MEMO_VERSION
    files: dict[str, FileMemo] = {}


_decoder = msgspec.msgpack.Decoder(ParseMemo)
_encoder = msgspec.msgpack.Encoder()


def records_digest(encoded: Iterable[bytes]) -> str:
    """The digest of a file's published records, in file order.

    Each record is a JSON object, so the records joined by commas parse back as one JSON
    array in exactly one way: hashing that text needs no per-record framing, and a warm
    start keeps the same bytes and decodes them in one call when needed (`RememberedLinks`).
    """
    return hashlib.sha256(b",".join(encoded)).hexdigest()


def digest_of(links: dict[str, LinkRecord]) -> str:
    """The digest of the records a file produced, as they are published."""
    return records_digest(json_encoder.encode(record) for record in links.values())


def load_memo(path: Path) -> ParseMemo:
    """The memo on disk; an empty one when missing, unreadable or of another version."""
    try:
        memo = _decoder.decode(path.read_bytes())
    except FileNotFoundError:
        return ParseMemo()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
        log.warning("ignoring the parse memo %s (%s); parsing every file", path, err)
        return ParseMemo()
    return memo if memo.v == MEMO_VERSION else ParseMemo()


def save_memo(path: Path, memo: ParseMemo) -> None:
    """Write the memo atomically (a crash leaves the old one or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(_encoder.encode(memo))
    os.replace(temporary, path)


@dataclass(frozen=True)
class PublishedLinks:
    """The links bucket as a warm start read it: every key's value, and the records
    snapshot's per-owner records with the keys changed since that snapshot."""

    values: Mapping[str, bytes]
    owners: Mapping[str, OwnerRecords] = field(default_factory=dict)
    changed: Set[str] = frozenset()

    def records_of(self, owner: str) -> OwnerRecords | None:
        """The owner's records in the snapshot, if the bucket changed none of them since."""
        links = self.owners.get(owner)
        if links is None or (self.changed and not self.changed.isdisjoint(kv_keys(links.codes))):
            return None
        return links


def remembered_links(
    memo: FileMemo | None, digest: str, owner: str, published: PublishedLinks | None
) -> RememberedLinks | None:
    """The file's links as published, undecoded, when its bytes and records match; else None.

    Taken as they are from the snapshot's records of the owner when they are current (one
    digest, no per-record step), else gathered from the bucket's values.
    """
    if memo is None or published is None or memo.digest != digest:
        return None
    snapshot = published.records_of(owner)
    if snapshot is not None:
        links = verified(memo, RememberedLinks(memo.codes, snapshot.records), snapshot.codes)
        if links is not None:
            return links
    try:  # `[]` rather than `.get`: no pass over the values looking for a None
        joined = b",".join(map(published.values.__getitem__, kv_keys(memo.codes)))
    except KeyError:
        return None
    return verified(memo, RememberedLinks(memo.codes, joined))


def verified(
    memo: FileMemo, links: RememberedLinks, codes: list[str] | None = None
) -> RememberedLinks | None:
    """`links` when they are what the file produced (its codes, records of the memo's digest).

    `codes`: the codes the records come with, when not `links.codes`. The digest is of the
    records this watcher made from the file, each naming its code and owner, so a match
    proves both without decoding a record.
    """
    listed = links.codes if codes is None else codes
    if listed != memo.codes or hashlib.sha256(links.records).hexdigest() != memo.records:
        return None
    return links
