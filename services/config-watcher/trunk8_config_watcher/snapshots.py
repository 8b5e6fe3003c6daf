"""Publishing the links snapshot: the link table and the records, tagged with their revision.

After the first full sync, and whenever the changes since the last snapshot reach a share
of the links, the watcher encodes the published state (under its lock, so the state and
the revision match) and writes both snapshot objects (outside it, so reloads never wait
for the upload). A snapshot only has to be consistent with its own revision: readers
follow the bucket from there, so an older snapshot is slower to join from, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from itertools import compress, repeat
from operator import eq, is_not
from typing import cast

from trunk8_shared.background import Backoff
from trunk8_shared.codes import kv_key
from trunk8_shared.location import location_header
from trunk8_shared.records import LinkRecord
from trunk8_shared.snapshot import (
    MIN_CHANGES,
    RECORDS_OBJECT,
    TABLE_OBJECT,
    OwnerRecords,
    RecordsSnapshot,
    SnapshotError,
    TableSnapshot,
    encode_snapshot,
    kv_keys,
    put_snapshot,
    read_snapshot_tag,
    settle_snapshot,
)

from .publisher import PUBLISH_ERRORS
from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")

SNAPSHOT_ERRORS: tuple[type[BaseException], ...] = (*PUBLISH_ERRORS, SnapshotError, OSError)
# A new snapshot once MIN_CHANGES changes, or this share of the links, arrived since the last.
CHANGED_SHARE = 0.1


def encode_snapshots(
    served: dict[str, LinkRecord],
    by_owner: dict[str, dict[str, LinkRecord]],
    known: dict[str, bytes],
    revision: int,
    created: str,
) -> tuple[bytes, bytes]:
    """The table and records objects for the served links at `revision`.

    `by_owner` is each user's links in file order (`LinkCatalog.links_by_user`); `known`
    what the bucket holds (or will hold) by key: the records carry those bytes.
    """
    codes: list[str] = []
    locations: list[str] = []
    others: dict[str, str] = {}
    expiring: dict[str, float] = {}
    for code, record in served.items():
        if record.type == "redirect":
            codes.append(code)
            locations.append(location_header(record.url or ""))
        else:
            others[code] = record.type
        if record.expires_at is not None:
            expiring[code] = record.expires_at
    table = TableSnapshot(
        revision=revision,
        bucket_created=created,
        codes=codes,
        locations=locations,
        others=others,
        expiring=expiring,
    )
    records = RecordsSnapshot[bytes](
        revision=revision,
        bucket_created=created,
        owners={owner: owner_records(links, served, known) for owner, links in by_owner.items()},
        others={key: known[key] for key in map(kv_key, others) if key in known},
        expiring=expiring,
    )
    return encode_snapshot(table), encode_snapshot(records)


def owner_records(
    links: dict[str, LinkRecord], served: dict[str, LinkRecord], known: dict[str, bytes]
) -> OwnerRecords[bytes]:
    """One owner's codes that it serves and the bucket holds, in file order, and their values.

    Compared in C, code by code: a million at a time.
    """
    codes = list(compress(links, map(eq, map(served.get, links), links.values())))
    values = list(map(known.get, kv_keys(codes)))
    if None in values:  # served but not (yet) in the bucket: not in its snapshot either
        codes = list(compress(codes, map(is_not, values, repeat(None))))
        values = [value for value in values if value is not None]
    return OwnerRecords(codes, b",".join(cast(list[bytes], values)))


class SnapshotPublisher:
    """Decides when a snapshot is due and publishes it."""

    def __init__(self, watcher: ConfigWatcher) -> None:
        self.watcher = watcher
        self.revision = 0  # revision of the stored snapshot, 0 until known
        # The plan of a snapshot published ahead of its bulk write, until replaced.
        self.plan = ""

    def due(self) -> bool:
        """Whether enough changed since the stored snapshot to publish another."""
        watcher = self.watcher
        if self.plan and watcher.publisher.links.landed_plan != self.plan:
            return True  # its bulk write failed: readers need a snapshot of the bucket
        current = watcher.publisher.links.revision
        if current == self.revision:
            return False
        if not self.revision:
            return True
        threshold = max(MIN_CHANGES, CHANGED_SHARE * watcher.catalog.link_count())
        return watcher.changes_since_snapshot >= threshold

    async def publish(self) -> bool:
        """Publish a snapshot of the current state unless the stored one is it already."""
        watcher = self.watcher
        writer = watcher.publisher.links
        js = watcher.bus.js
        if not self.revision:
            # A stored snapshot of this bucket, a few changes behind, is as good as a new
            # one (readers follow from its revision): a restart need not publish 180 MB.
            stored = await read_snapshot_tag(js, TABLE_OBJECT)
            behind = writer.revision - stored[0] if stored is not None else -1
            if stored is not None and stored[1] == str(writer.created) and 0 <= behind:
                self.revision = stored[0]
                watcher.changes_since_snapshot = behind
                if not self.due():
                    return False
        async with watcher.lock:
            revision, created = writer.revision, str(writer.created)
            loop = asyncio.get_running_loop()
            # The snapshot holds every record: remembered users' are needed decoded now.
            await loop.run_in_executor(None, watcher.catalog.decode_all)
            served, known = dict(watcher.catalog.served), writer.known
            by_owner = dict(watcher.catalog.links_by_user)
            watcher.changes_since_snapshot = 0
            table, records = await loop.run_in_executor(
                None, encode_snapshots, served, by_owner, known, revision, created
            )
            del by_owner
        del served
        # Records first: a reader of the table never needs them, so the table is last.
        await put_snapshot(js, RECORDS_OBJECT, records, revision, created)
        await put_snapshot(js, TABLE_OBJECT, table, revision, created)
        self.revision, self.plan = revision, ""
        log.info(
            "published a snapshot of %d links at revision %d (%.1f MB)",
            watcher.catalog.link_count(), revision, (len(table) + len(records)) / 1e6,
        )  # fmt: skip
        return True

    async def publish_ahead(
        self, served: dict[str, LinkRecord], known: dict[str, bytes], revision: int, created: str
    ) -> str:
        """Publish the outcome of a bulk write before it starts; returns the write's mark.

        Called by the full sync, under the watcher's lock, with the revision the bucket
        will have once every write landed and the values it will hold. Readers load it
        at once and check later that the writes landed (`trunk8_shared.kvmirror`).
        """
        watcher = self.watcher
        plan = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        by_owner = dict(watcher.catalog.links_by_user)
        table, records = await loop.run_in_executor(
            None, encode_snapshots, dict(served), by_owner, known, revision, created
        )
        del by_owner
        js = watcher.bus.js
        await put_snapshot(js, RECORDS_OBJECT, records, revision, created, plan)
        await put_snapshot(js, TABLE_OBJECT, table, revision, created, plan)
        self.revision, self.plan = revision, plan
        watcher.changes_since_snapshot = 0
        watcher.snapshot_stored.set()  # `trunk8 up` starts its services on it
        log.info(
            "published a snapshot of %d links at revision %d ahead of writing them",
            len(served), revision,
        )  # fmt: skip
        return plan

    async def settle(self) -> None:
        """Once the bulk write of a snapshot published ahead of it landed, say so in its tag.

        Readers then take it as any other snapshot: the message that proved the write
        landed is replaced when its key next changes.
        """
        plan, writer = self.plan, self.watcher.publisher.links
        if not plan or writer.landed_plan != plan:
            return
        created = str(writer.created)
        js = self.watcher.bus.js
        await settle_snapshot(js, RECORDS_OBJECT, self.revision, created)
        await settle_snapshot(js, TABLE_OBJECT, self.revision, created)
        if self.plan == plan:
            self.plan = ""


async def keep_snapshots(watcher: ConfigWatcher, snapshots: SnapshotPublisher) -> None:
    """Publish a snapshot whenever one is due, until cancelled."""
    backoff = Backoff()
    await watcher.ready.wait()
    watcher.snapshot_due.set()
    while True:
        await watcher.snapshot_due.wait()
        await watcher.ready.wait()  # only the active watcher publishes snapshots
        watcher.snapshot_due.clear()
        try:
            await snapshots.settle()
            if snapshots.due():
                await snapshots.publish()
            watcher.snapshot_stored.set()
        except SNAPSHOT_ERRORS as err:
            log.warning("publishing a snapshot failed (%s: %s); retrying", type(err).__name__, err)
            await backoff.wait()
            watcher.snapshot_due.set()
            continue
        backoff.reset()
