"""Writing the catalog to NATS: KV puts and deletes, then the matching domain events.

`Publisher` remembers what it knows to be in each bucket, so a normal reload writes only
its differences; a full sync (at start, after any failure or reconnect) first reads the
buckets back, then writes whatever differs from the wanted state, deletes included, and
removes foreign keys (ones this service never writes). A failed write names its keys.

Only the lease holder writes (`lease.py`), and NATS enforces it: a full sync starts with
`Publisher.take_over`, which fences both buckets, and every later write expects the
bucket's last sequence as this writer left it. A write refused for that reason means
another watcher wrote since: this one steps down (`NotActiveError`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from itertools import islice
from typing import TypeVar

import msgspec
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from trunk8_shared.buckets import (
    BUS_ERRORS,
    WrongLastSequenceError,
    create_buckets,
    ensure_bucket,
    fence_bucket,
    write_batched,
)
from trunk8_shared.bus import Bus
from trunk8_shared.codes import code_of_key, kv_key
from trunk8_shared.kvmirror import RecordsStage, read_bucket_stage
from trunk8_shared.records import (
    LINKS_BUCKET,
    USERS_BUCKET,
    Event,
    LinkCreated,
    LinkDeleted,
    LinkRecord,
    LinksBulkChanged,
    LinkUpdated,
    UserCreated,
    UserDeleted,
    UserRecord,
    UserUpdated,
    event_subject,
    json_encoder,
    link_decoder,
)
from trunk8_shared.snapshot import PLAN_HEADER, SnapshotError

from .lease import Lease, NotActiveError
from .progress import Progress

log = logging.getLogger("trunk8.config_watcher")

# More link events than this in one sync become one `link.bulk` event (an import, a restore).
BULK_EVENTS = 1000
# Writes in one step of a large publication (an import): a progress line may follow each.
PROGRESS_STEP = 50_000
# Failed keys named in a PublishError message.
REPORTED_FAILURES = 3
# Keys handled between two yields to the event loop (about 10 ms) when diffing or
# recording a large publication: a first import's million in one go held the loop for
# 4-6 s, so the lease renewal (which takes a few loop turns) could not run and the lease
# ran out (5 s TTL), again at each retry.
SLICE = 2_000

T = TypeVar("T")


async def in_slices(items: Iterable[T]) -> AsyncIterator[list[T]]:
    """`items` in lists of `SLICE`, yielding to the event loop between two lists."""
    iterator = iter(items)
    while chunk := list(islice(iterator, SLICE)):
        yield chunk
        await asyncio.sleep(0)


# A full sync writing at least this many keys (an import) publishes a snapshot of its
# outcome first, so readers load that instead of following the writes one by one.
EARLY_SNAPSHOT_WRITES = 1000

# Publishes a snapshot of (served records, bucket values, revision, bucket creation time)
# ahead of the bulk write that brings the bucket there; returns the write's plan mark.
BulkSnapshot = Callable[[dict[str, LinkRecord], dict[str, bytes], int, str], Awaitable[str]]


class PublishError(Exception):
    """Some writes of a batch failed; the message names which keys and why."""

    def __init__(self, bucket: str, failures: list[tuple[str, BaseException]], total: int):
        shown = "; ".join(
            f"{key!r}: {type(err).__name__}: {err}" for key, err in failures[:REPORTED_FAILURES]
        )
        more = len(failures) - REPORTED_FAILURES
        super().__init__(
            f"{len(failures)} of {total} writes to {bucket} failed ({shown}"
            + (f"; and {more} more)" if more > 0 else ")")
        )
        self.failures = failures


class BucketReplacedError(Exception):
    """The bucket was deleted and created again since it was read: sync it whole."""


class UnfencedError(Exception):
    """The writer does not know the bucket's last sequence (a write failed): sync it whole."""


# What a write to NATS may fail with: retried by a full sync (by the active watcher), never
# a crash. NotActiveError: this watcher stands by now, and the lease loop takes it from there.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    PublishError,
    BucketReplacedError,
    UnfencedError,
    NotActiveError,
    *BUS_ERRORS,
)


def decode_link(value: bytes) -> LinkRecord | None:
    """A link record from the bucket, or None for a value this version cannot read."""
    try:
        return link_decoder.decode(value)
    except msgspec.DecodeError:
        return None


class BucketWriter:
    """Writes key/value differences to one bucket and remembers what is there."""

    def __init__(self, bus: Bus, bucket: str, lease: Lease, replicas: int = 1) -> None:
        self.bus = bus
        self.bucket = bucket
        self.lease = lease
        self.replicas = replicas
        self.known: dict[str, bytes] = {}
        self.created: datetime | None = None  # the bucket's creation time, as last seen
        self.revision = 0  # the stream's last sequence, as this writer fenced and wrote it
        self.fenced = False  # `revision` is known: writes may expect it
        self.read_revision = 0  # the stream's last sequence when `known` was read
        self.fresh = False  # `known` was just read back and nothing was written since
        self.landed_plan = ""  # the mark of the last bulk write that landed whole

    async def fence(self) -> None:
        """Make the writes of any earlier writer fail from now on; learn the last sequence.

        The sequence is read while this watcher holds the lease (checked before and
        after), so the fence expecting it lands only if nobody wrote in between.
        """
        self.lease.check()
        self.fenced = False
        kv = await ensure_bucket(self.bus.js, self.bucket, self.replicas)
        info = (await kv.status()).stream_info
        self.lease.check()
        last = info.state.last_seq
        if last != self.read_revision or info.created != self.created:
            self.fresh = False  # written since it was read (by an earlier active)
        if info.created != self.created:
            self.known, self.created = {}, info.created
        self.revision = await fence_bucket(self.bus.js, self.bucket, last)
        self.fenced = True

    async def write(
        self,
        puts: dict[str, bytes],
        deletes: Iterable[str],
        before: Callable[[int, dict[str, bytes]], Awaitable[str]] | None = None,
    ) -> int:
        """Apply puts and deletes; returns the bucket revision after them.

        `before` is called first with the revision the bucket will have once every write
        landed, and what it will hold then; its answer marks the last write (`PLAN_HEADER`).
        """
        self.lease.check()
        if not self.fenced:
            raise UnfencedError(f"{self.bucket}: last sequence unknown until the next full sync")
        try:
            kv = await self.bus.js.key_value(self.bucket)
        except BucketNotFoundError:
            # Deleted under us: what we remember is gone. A full sync rewrites it all.
            self.known, self.fenced = {}, False
            raise
        self.fresh = False
        removals = [key for key in deletes if key in self.known]
        writes: list[tuple[str, bytes | None]] = [*puts.items(), *((k, None) for k in removals)]
        plan = ""
        if before is not None and writes:
            outcome = {**self.known, **puts}
            for key in removals:
                del outcome[key]
            plan = await before(self.revision + len(writes), outcome)
            del outcome
        done, failures = await self._write_in_steps(writes, plan)
        self.revision += len(done)
        values = dict(writes)
        async for chunk in in_slices(done):
            for key in chunk:
                value = values[key]
                if value is None:
                    self.known.pop(key, None)
                else:
                    self.known[key] = value
        if failures:
            self.fenced = False  # a write not acknowledged may still have been stored
            if isinstance(failures[0][1], WrongLastSequenceError):
                await self._refused(kv)
            raise PublishError(self.bucket, failures, len(writes))
        status = await kv.status()
        created = status.stream_info.created
        if self.created is not None and created != self.created:
            # Deleted and created again: what we remember of it is gone.
            self.known, self.created, self.fenced = {}, None, False
            raise BucketReplacedError(f"{self.bucket} was replaced; rewriting it whole")
        self.created = created
        self.landed_plan = plan or self.landed_plan
        return self.revision

    async def _refused(self, kv: KeyValue) -> None:
        """A fenced write was refused: a replaced bucket, or another writer (step down)."""
        status = await kv.status()
        if status.stream_info.created != self.created:
            self.known, self.created = {}, None
            raise BucketReplacedError(f"{self.bucket} was replaced; rewriting it whole")
        reason = f"writes to {self.bucket} refused: another config-watcher wrote there"
        await self.lease.lose(reason)
        raise NotActiveError(reason)

    async def _write_in_steps(
        self, writes: list[tuple[str, bytes | None]], plan: str = ""
    ) -> tuple[list[str], list[tuple[str, BaseException]]]:
        """`write_batched`, in steps of `PROGRESS_STEP` writes with a progress line between.

        With a `plan`, the last write carries it (`PLAN_HEADER`).
        """
        mark = {PLAN_HEADER: plan} if plan else None
        if len(writes) <= PROGRESS_STEP:
            return await write_batched(self.bus.nc, self.bucket, writes, self.revision, mark)
        progress = Progress(f"publishing to {self.bucket}", len(writes), "writes")
        done: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        for start in range(0, len(writes), PROGRESS_STEP):
            step = writes[start : start + PROGRESS_STEP]
            expected = self.revision + len(done)  # fenced: each step follows the last
            last = mark if start + PROGRESS_STEP >= len(writes) else None
            step_done, failures = await write_batched(
                self.bus.nc, self.bucket, step, expected, last
            )
            done += step_done
            progress.advance(len(step), links=len(step_done))
            if failures:  # NATS is likely away: the rest would only wait for timeouts too
                break
        progress.finish()
        return done, failures

    async def read_back(self, from_snapshot: bool = False) -> RecordsStage:
        """Learn what the bucket holds now (`known`), from the records snapshot on if asked.

        Returns the read itself: the snapshot it started from, if any, and the changes after.
        """
        self.fresh = False
        js = self.bus.js
        stage = await read_bucket_stage(js, self.bucket, from_snapshot=from_snapshot)
        try:
            self.known = stage.entries()
        except SnapshotError as err:  # values that do not split: read the bucket itself
            log.warning("%s: unusable snapshot (%s); reading the bucket", self.bucket, err)
            stage = await read_bucket_stage(js, self.bucket)
            self.known = stage.entries()
        status = await (await self.bus.js.key_value(self.bucket)).status()
        self.created = status.stream_info.created
        self.read_revision = status.stream_info.state.last_seq
        self.fresh = True
        return stage


def bulk_event(events: Sequence[Event], revision: int) -> LinksBulkChanged:
    """One event standing for many link events (counts by kind, and the revision)."""
    kinds = [type(event) for event in events]
    return LinksBulkChanged(
        created=kinds.count(LinkCreated),
        updated=kinds.count(LinkUpdated),
        deleted=kinds.count(LinkDeleted),
        revision=revision,
    )


class Publisher:
    """Publishes link and account state with events; `revision` is the links bucket's."""

    def __init__(self, bus: Bus, lease: Lease, replicas: int = 1) -> None:
        self.bus = bus
        self.replicas = replicas
        self.links = BucketWriter(bus, LINKS_BUCKET, lease, replicas)
        self.users = BucketWriter(bus, USERS_BUCKET, lease, replicas)
        self.buckets_created = False
        self.bulk_snapshot: BulkSnapshot | None = None  # set by the snapshot publisher

    async def take_over(self) -> None:
        """Start a full sync as the lease holder: create missing buckets, fence both.

        Fencing first makes the read back that follows the buckets' final word: no earlier
        active can change them after it.
        """
        if not self.buckets_created:
            await create_buckets(self.bus.js, self.replicas)
            self.buckets_created = True
        await self.users.fence()
        await self.links.fence()

    async def sync_links(
        self,
        wanted: dict[str, LinkRecord],
        codes: Iterable[str] | None = None,
    ) -> int:
        """Make the bucket hold `wanted` for `codes` (all codes when None); emit events.

        A full sync (codes None) also removes keys that name none of our codes.
        """
        known = self.links.known
        keys: dict[str, str | None] = {}
        # Listed first: the catalog is iterated across yields (changed only under the
        # watcher's lock, which the caller holds, but a list cannot change at all).
        async for chunk in in_slices(list(wanted if codes is None else codes)):
            keys.update(zip(map(kv_key, chunk), chunk, strict=True))
        if codes is None:
            keys.update({key: code_of_key(key) for key in known if key not in keys})
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        events: list[Event] = []
        foreign = 0
        async for pairs in in_slices(keys.items()):
            for key, code in pairs:
                record = wanted.get(code) if code is not None else None
                before = known.get(key)
                if record is None:
                    if before is not None:
                        deletes.append(key)
                        if code is None:
                            foreign += 1
                        else:
                            old = decode_link(before)
                            events.append(LinkDeleted(code=code, owner=old.owner if old else ""))
                    continue
                encoded = json_encoder.encode(record)
                if encoded != before:
                    puts[key] = encoded
                    events.append(
                        LinkCreated(link=record) if before is None else LinkUpdated(link=record)
                    )
        if foreign:
            log.warning("removing %d foreign keys from %s", foreign, self.links.bucket)
        plan_ahead: Callable[[int, dict[str, bytes]], Awaitable[str]] | None = None
        bulk_snapshot = self.bulk_snapshot
        if codes is None and bulk_snapshot is not None:
            if len(puts) + len(deletes) >= EARLY_SNAPSHOT_WRITES:
                created = str(self.links.created)

                async def plan_ahead(revision: int, outcome: dict[str, bytes]) -> str:
                    assert bulk_snapshot is not None
                    return await bulk_snapshot(wanted, outcome, revision, created)

        revision = await self.links.write(puts, deletes, plan_ahead)
        if len(events) > BULK_EVENTS:
            events = [bulk_event(events, revision)]
        await self.emit(events)
        return revision

    async def sync_users(self, wanted: dict[str, UserRecord]) -> None:
        """Make the users bucket hold exactly `wanted` (foreign keys removed); emit events."""
        known = self.users.known
        puts: dict[str, bytes] = {}
        events: list[Event] = []
        for name, user in wanted.items():
            encoded = json_encoder.encode(user)
            before = known.get(kv_key(name))
            if encoded != before:
                puts[kv_key(name)] = encoded
                created = before is None
                events.append(UserCreated(user=user) if created else UserUpdated(user=user))
        gone = {key: code_of_key(key) for key in known}
        gone = {key: name for key, name in gone.items() if name is None or name not in wanted}
        events += [UserDeleted(username=name) for name in gone.values() if name is not None]
        await self.users.write(puts, gone)
        await self.emit(events)

    async def read_back(self) -> None:
        """Learn what both buckets hold now (before a full `sync_users` + `sync_links`).

        The links are read from the records snapshot on, and not again when a warm start
        just read them (`fresh`): at a million links that read is the start's largest cost.
        """
        await self.users.read_back()
        if not self.links.fresh:
            await self.links.read_back(from_snapshot=True)
        self.links.fresh = False

    def published_links(self) -> Iterator[LinkRecord]:
        """The link records in the bucket as last read or written (unusable ones skipped).

        Decoded as iterated: a sync that adopts nothing decodes nothing.
        """
        for key, value in self.links.known.items():
            record = decode_link(value)
            if record is not None and code_of_key(key) == record.code:
                yield record

    async def emit(self, events: Sequence[Event]) -> None:
        """Publish domain events on core NATS (fire and forget, for taps and audits)."""
        for event in events:
            await self.emit_one(event)

    async def emit_one(self, event: Event) -> None:
        """Publish one domain event on its subject."""
        await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))
