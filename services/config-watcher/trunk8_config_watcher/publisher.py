"""Writing the catalog to NATS: KV puts and deletes, then the matching domain events.

`Publisher` remembers what it knows to be in each bucket, so a normal reload writes only
its differences; a full sync (at start, after any failure or reconnect) first reads the
buckets back, then writes whatever differs from the wanted state, deletes included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import msgspec
from nats.js.errors import BucketNotFoundError

from trunk8_shared.bus import Bus, ensure_bucket
from trunk8_shared.codes import from_kv_key, kv_key
from trunk8_shared.kvmirror import read_bucket
from trunk8_shared.records import (
    LINKS_BUCKET,
    USERS_BUCKET,
    Event,
    LinkCreated,
    LinkDeleted,
    LinkRecord,
    LinkUpdated,
    UserCreated,
    UserDeleted,
    UserRecord,
    UserUpdated,
    event_subject,
    json_encoder,
    link_decoder,
)

log = logging.getLogger("trunk8.config_watcher")

# Puts are JetStream publishes awaiting an ack each; send this many at a time.
WRITE_WINDOW = 256


def decode_link(value: bytes) -> LinkRecord | None:
    """A link record from the bucket, or None for a value this version cannot read."""
    try:
        return link_decoder.decode(value)
    except msgspec.DecodeError:
        return None


class BucketWriter:
    """Writes key/value differences to one bucket and remembers what is there."""

    def __init__(self, bus: Bus, bucket: str) -> None:
        self.bus = bus
        self.bucket = bucket
        self.known: dict[str, bytes] = {}
        self.revision = 0

    async def write(self, puts: dict[str, bytes], deletes: Iterable[str]) -> int:
        """Apply puts and deletes; returns the bucket revision after them."""
        try:
            kv = await self.bus.js.key_value(self.bucket)
        except BucketNotFoundError:
            if self.known:
                # Deleted under us: what we remember is gone. A full sync rewrites it all.
                self.known = {}
                raise
            kv = await ensure_bucket(self.bus.js, self.bucket)
        removals = [key for key in deletes if key in self.known]
        writes: list[tuple[str, bytes | None]] = [*puts.items(), *((k, None) for k in removals)]
        for start in range(0, len(writes), WRITE_WINDOW):
            # A task group cancels the rest of a window when one write fails.
            async with asyncio.TaskGroup() as group:
                for key, value in writes[start : start + WRITE_WINDOW]:
                    if value is None:
                        group.create_task(kv.delete(key))
                    else:
                        group.create_task(kv.put(key, value, validate_keys=False))
        self.known.update(puts)
        for key in removals:
            del self.known[key]
        status = await kv.status()
        self.revision = status.stream_info.state.last_seq
        return self.revision

    async def read_back(self) -> dict[str, bytes]:
        """What the bucket holds now; becomes the known state."""
        self.known = await read_bucket(self.bus.js, self.bucket)
        return self.known


class Publisher:
    """Publishes link and account state with events; `revision` is the links bucket's."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.links = BucketWriter(bus, LINKS_BUCKET)
        self.users = BucketWriter(bus, USERS_BUCKET)

    async def sync_links(
        self, wanted: dict[str, LinkRecord], codes: Iterable[str] | None = None
    ) -> int:
        """Make the bucket hold `wanted` for `codes` (all codes when None); emit events."""
        known = self.links.known
        keys = {kv_key(c): c for c in (wanted if codes is None else codes)}
        if codes is None:
            keys.update({key: from_kv_key(key) for key in known})
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        events: list[Event] = []
        for key, code in keys.items():
            record = wanted.get(code)
            before = known.get(key)
            if record is None:
                if before is not None:
                    deletes.append(key)
                    old = decode_link(before)
                    events.append(LinkDeleted(code=code, owner=old.owner if old else ""))
                continue
            encoded = json_encoder.encode(record)
            if encoded != before:
                puts[key] = encoded
                events.append(
                    LinkCreated(link=record) if before is None else LinkUpdated(link=record)
                )
        revision = await self.links.write(puts, deletes)
        await self.emit(events)
        return revision

    async def sync_users(self, wanted: dict[str, UserRecord]) -> None:
        """Make the users bucket hold exactly `wanted`; emit account events."""
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
        gone = [key for key in known if from_kv_key(key) not in wanted]
        events += [UserDeleted(username=from_kv_key(key)) for key in gone]
        await self.users.write(puts, gone)
        await self.emit(events)

    async def read_back(self) -> None:
        """Learn what both buckets hold now (before a full `sync_users` + `sync_links`)."""
        await self.users.read_back()
        await self.links.read_back()

    def published_links(self) -> list[LinkRecord]:
        """The link records in the bucket as last read or written (undecodable ones skipped)."""
        return [record for value in self.links.known.values() if (record := decode_link(value))]

    async def emit(self, events: Sequence[Event]) -> None:
        """Publish domain events on core NATS (fire and forget, for taps and audits)."""
        for event in events:
            await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))
