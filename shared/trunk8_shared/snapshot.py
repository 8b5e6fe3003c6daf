"""Whole-state snapshots of the links bucket, kept in a JetStream Object Store.

The config-watcher publishes two objects after a full sync (and after large changes): the
*table* (per code: the normalised Location of a redirect, or the type of another link, and
its expiry), which is all a redirector needs, and the *records*, laid out per owner: each
owner's codes in the order of its links file and their values, exactly as the bucket holds
them, joined into one blob, so a reader pays per owner rather than per record (the admin
keeps an owner's blob as it is, the config-watcher hashes and decodes one per file), plus
the few non-redirect values by key for the files service and the expiries. Both are compact
msgpack, carry a format version and are tagged with the bucket revision they reflect and
the bucket's creation time, so a reader loads one and follows the bucket from revision + 1:
only later changes go through per-message handling. A snapshot that is missing, corrupt, of
another format version or from an earlier incarnation of the bucket is refused
(`SnapshotError`) and the reader loads the bucket instead. Objects are read chunk by chunk
into one buffer (nats-py's `ObjectStore.get` concatenates bytes, quadratic in the object's
size).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import weakref
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ObjectNotFoundError,
)

from .codes import kv_key

SNAPSHOT_STORE = "trunk8_snapshots"
TABLE_OBJECT = "links.table"
RECORDS_OBJECT = "links.records"
# 2: the records laid out per owner (1 held one map of a million keys to values).
SNAPSHOT_VERSION = 2
# The watcher publishes a new snapshot once this many changes (or 10% of the links) arrived
# since the last; a stored one fewer changes behind is as good as current.
MIN_CHANGES = 1000
# Chunks of 512 KiB (half NATS's default max payload, headers included): few messages.
CHUNK_SIZE = 512 * 1024
READ_TIMEOUT = 60.0


class SnapshotError(Exception):
    """A snapshot that cannot be used; the reader falls back to the bucket."""


# Marks the last write of a bulk write published after a snapshot of its outcome: that
# snapshot's `plan`. Its message at the snapshot's revision proves every write landed there.
PLAN_HEADER = "Trunk8-Snapshot-Plan"


class SnapshotHead(msgspec.Struct, kw_only=True):
    """What every snapshot format starts with: enough to refuse it cheaply."""

    v: int
    revision: int = 0
    bucket_created: str = ""


class TableSnapshot(msgspec.Struct, kw_only=True):
    """A redirector's view: parallel columns, so loading allocates one string per value.

    `codes[i]` redirects to `locations[i]`; `others` maps the codes of file, markdown and
    html links to their type; `expiring` holds the expiry of the codes that have one.
    """

    v: int = SNAPSHOT_VERSION
    revision: int
    bucket_created: str
    codes: list[str]
    locations: list[str]
    others: dict[str, str]
    expiring: dict[str, float]


# An owner's joined values: `bytes` when built (the encoder), `memoryview` when read: a
# view into the object's buffer, so loading copies nothing and the buffer (one allocation,
# given back to the system whole) goes once the last view is dropped.
Blob = TypeVar("Blob", bytes, memoryview)


class OwnerRecords(msgspec.Struct, Generic[Blob], array_like=True, gc=False):
    """One owner's served links: codes in the order of its links file, and their values.

    `records` is each code's value as the bucket holds it (`records.json_encoder`'s JSON),
    joined by commas in the order of `codes`: bracketed, it is one JSON array, and its
    SHA-256 is the config-watcher's digest of that file's records (`records_digest`).
    """

    codes: list[str]
    records: Blob


class RecordsSnapshot(msgspec.Struct, Generic[Blob], kw_only=True):
    """Every served link's value, per owner, for mirrors that keep whole records.

    `others` repeats, by KV key, the values of the file, markdown and html links (few:
    the files service reads nothing else); `expiring` maps the codes that expire to their
    expiry; a code listed in no `others` is a redirect. `decode_records` gives a
    `RecordsSnapshot[memoryview]` (`RecordsView`).
    """

    v: int = SNAPSHOT_VERSION
    revision: int
    bucket_created: str
    owners: dict[str, OwnerRecords[Blob]]
    others: dict[str, bytes]
    expiring: dict[str, float]

    def __len__(self) -> int:
        return sum(len(owner.codes) for owner in self.owners.values())


RecordsView = RecordsSnapshot[memoryview]


_encoder = msgspec.msgpack.Encoder()
_head_decoder = msgspec.msgpack.Decoder(SnapshotHead)
_table_decoder = msgspec.msgpack.Decoder(TableSnapshot)
_records_decoder = msgspec.msgpack.Decoder(RecordsView)


def encode_snapshot(snapshot: TableSnapshot | RecordsSnapshot[bytes]) -> bytes:
    """The object's bytes."""
    return _encoder.encode(snapshot)


def _decode(payload: bytes | bytearray | memoryview, decoder: Any) -> Any:
    try:
        head = _head_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise SnapshotError(f"unreadable snapshot ({err})") from err
    if head.v != SNAPSHOT_VERSION:
        raise SnapshotError(f"snapshot format {head.v}, this version reads {SNAPSHOT_VERSION}")
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise SnapshotError(f"unreadable snapshot ({err})") from err


def decode_table(payload: bytes | bytearray | memoryview) -> TableSnapshot:
    """A table snapshot; raises SnapshotError for a corrupt or other-format one."""
    table: TableSnapshot = _decode(payload, _table_decoder)
    if len(table.codes) != len(table.locations):
        raise SnapshotError("table snapshot columns differ in length")
    return table


def decode_records(payload: bytes | bytearray | memoryview) -> RecordsView:
    """A records snapshot, its blobs views into `payload`; SnapshotError if unusable."""
    records: RecordsView = _decode(payload, _records_decoder)
    for owner, links in records.owners.items():
        blob = links.records
        # Cheap checks of the shape (the object's digest already vouches for its bytes).
        if bool(links.codes) != bool(blob) or (blob and (blob[:1], blob[-1:]) != (b"{", b"}")):
            raise SnapshotError(f"records snapshot: the records of {owner!r} are malformed")
    return records


_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


def owner_values(links: OwnerRecords[Any]) -> list[bytes]:
    """Each code's value, split out of the owner's blob; SnapshotError if they differ in count."""
    if not links.records:
        values: list[bytes] = []
    else:
        try:
            values = list(map(bytes, _raw_list.decode(b"[" + links.records + b"]")))
        except msgspec.DecodeError as err:
            raise SnapshotError(f"records snapshot: unreadable records ({err})") from err
    if len(values) != len(links.codes):
        raise SnapshotError("records snapshot: an owner's codes and records differ in count")
    return values


def records_entries(records: RecordsSnapshot[Any]) -> dict[str, bytes]:
    """Every KV key of the snapshot with its value, as the bucket holds them."""
    entries: dict[str, bytes] = {}
    for links in records.owners.values():
        entries.update(zip(kv_keys(links.codes), owner_values(links), strict=True))
    return entries


def kv_keys(codes: list[str]) -> list[str]:
    """The KV keys of `codes`: the codes themselves when all are plain (checked at once)."""
    joined = "".join(codes)
    return codes if kv_key(joined) == joined else [kv_key(code) for code in codes]


async def snapshot_store(js: JetStreamContext, create: bool = False, replicas: int = 1) -> Any:
    """The snapshot object store; None when it does not exist and `create` is False.

    Only the config-watcher creates it (`replicas` copies); readers find None until then.
    """
    try:
        return await js.object_store(SNAPSHOT_STORE)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            return None
    with contextlib.suppress(BadRequestError):
        return await js.create_object_store(
            SNAPSHOT_STORE,
            config=api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=replicas),
        )
    return await js.object_store(SNAPSHOT_STORE)  # created by someone else meanwhile


class SnapshotTag(msgspec.Struct, kw_only=True):
    """What a stored object reflects, kept in its description: readable without the object.

    `plan` is set on a snapshot published before the bulk write that brings the bucket to
    it (a first import): `revision` is then the one the bucket will have once every write
    of it landed, and the last of them carries `PLAN_HEADER` with this value. It is
    cleared (`settle_snapshot`) once they landed: the message proving it may not last.
    """

    v: int
    revision: int
    bucket_created: str
    plan: str = ""


_tag_decoder = msgspec.json.Decoder(SnapshotTag)


async def put_snapshot(
    js: JetStreamContext,
    name: str,
    payload: bytes,
    revision: int,
    bucket_created: str,
    plan: str = "",
) -> None:
    """Publish one snapshot object (replacing the previous one of that name)."""
    store = await snapshot_store(js, create=True)
    tag = SnapshotTag(
        v=SNAPSHOT_VERSION, revision=revision, bucket_created=bucket_created, plan=plan
    )
    meta = api.ObjectMeta(
        name=name,
        description=msgspec.json.encode(tag).decode(),
        options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
    )
    await store.put(name, payload, meta=meta)  # bytes: read in place, no thread hops


async def read_snapshot_tag(js: JetStreamContext, name: str) -> tuple[int, str] | None:
    """The revision and bucket creation time a stored object of this format reflects."""
    store = await snapshot_store(js)
    if store is None:
        return None
    try:
        info = await store.get_info(name)
        tag = _tag_decoder.decode(info.description or "")
    except (ObjectNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return (tag.revision, tag.bucket_created) if tag.v == SNAPSHOT_VERSION else None


async def settle_snapshot(
    js: JetStreamContext, name: str, revision: int, bucket_created: str
) -> None:
    """Clear the plan of a stored object whose bulk write landed (its tag alone changes)."""
    store = await snapshot_store(js, create=True)
    tag = SnapshotTag(v=SNAPSHOT_VERSION, revision=revision, bucket_created=bucket_created)
    meta = api.ObjectMeta(name=name, description=msgspec.json.encode(tag).decode())
    await store.update_meta(name, meta)


async def stored_plan(js: JetStreamContext, name: str) -> str | None:
    """The plan of the stored object (empty for none), or None when there is no object."""
    store = await snapshot_store(js)
    if store is None:
        return None
    try:
        info = await store.get_info(name)
        return _tag_decoder.decode(info.description or "").plan
    except (ObjectNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


async def plan_landed(js: JetStreamContext, bucket: str, revision: int, plan: str) -> bool:
    """Whether the bucket's message at `revision` is the last write of bulk write `plan`.

    Each write of a bulk write expects the one before it (`write_batched`), so then every
    one of them landed, in order, just before it. False when that message is another, or
    gone (its key written again since, or purged): the reader cannot tell, and loads again.
    """
    try:
        msg = await js.get_msg(f"KV_{bucket}", seq=revision)
    except NotFoundError:
        return False
    return (msg.headers or {}).get(PLAN_HEADER) == plan


async def snapshot_lag(js: JetStreamContext, bucket: str, name: str = TABLE_OBJECT) -> int | None:
    """How many revisions the stored object is behind `bucket` as it is now.

    None when a reader could not use it: missing, of another format, of an earlier
    incarnation of the bucket, or ahead of it. A reader loading it follows that many
    changes (at most) one message at a time.
    """
    stored = await read_snapshot_tag(js, name)
    if stored is None:
        return None
    try:
        info = await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        return None
    revision, created = stored
    lag = info.state.last_seq - revision
    return lag if created == str(info.created) and lag >= 0 else None


# One object read at a time per process: the mirrors of an all-in-one process (redirector,
# files, admin) reading 300 MB at once made NATS drop the connection as a slow consumer.
_reading: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)  # per event loop: a lock is bound to the loop it first waited on


async def read_snapshot(
    js: JetStreamContext, name: str, timeout: float = READ_TIMEOUT
) -> bytearray:
    """The bytes of a snapshot object, read into one buffer; SnapshotError when unusable."""
    return (await read_tagged_snapshot(js, name, timeout))[0]


async def read_tagged_snapshot(
    js: JetStreamContext, name: str, timeout: float = READ_TIMEOUT
) -> tuple[bytearray, str]:
    """A snapshot object's bytes and its tag's plan (empty for none); as `read_snapshot`."""
    lock = _reading.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        return await _read_snapshot(js, name, timeout)


async def _read_snapshot(js: JetStreamContext, name: str, timeout: float) -> tuple[bytearray, str]:
    store = await snapshot_store(js)
    if store is None:
        raise SnapshotError("no snapshot store yet")
    try:
        info = await store.get_info(name)
    except ObjectNotFoundError as err:
        raise SnapshotError(f"no snapshot {name!r} yet") from err
    try:
        plan = _tag_decoder.decode(info.description or "").plan
    except (msgspec.DecodeError, msgspec.ValidationError):
        plan = ""  # untagged: as old as its content says
    size = info.size or 0
    if not size or not info.nuid:
        raise SnapshotError(f"snapshot {name!r} is empty")
    # The callback reaches the buffer through this list, emptied once read: nats-py may keep
    # a finished subscription's callback (and so a closure's cells) referenced for a while.
    held = [bytearray(size)]
    filled = 0
    digest = hashlib.sha256()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_chunk(msg: Msg) -> None:
        nonlocal filled
        data = msg.data
        if not held or filled + len(data) > size:
            if held and not done.done():
                done.set_exception(SnapshotError(f"snapshot {name!r} is longer than its size"))
            return
        held[0][filled : filled + len(data)] = data  # in place: no growth, no copies
        filled += len(data)
        digest.update(data)
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(None)

    subject = f"$O.{SNAPSHOT_STORE}.C.{info.nuid}"
    sub = await js.subscribe(
        subject,
        cb=on_chunk,
        ordered_consumer=True,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError as err:
        raise SnapshotError(f"snapshot {name!r} not read within {timeout:g} s") from err
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        buffer = held.pop()
    expected = (info.digest or "").partition("=")[2]
    actual = base64.urlsafe_b64encode(digest.digest()).decode()
    if filled != size or expected.rstrip("=") != actual.rstrip("="):
        raise SnapshotError(f"snapshot {name!r} is damaged (size or digest differ)")
    return buffer, plan
