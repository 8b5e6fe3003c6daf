"""A local mirror of a JetStream KV bucket: snapshot or full load, then live updates, supervised.

`KvMirror` starts from the latest snapshot object (`trunk8_shared.snapshot`) when it is
usable, and follows the bucket from the revision after it; without one it reads the last
value of every key. Either way the state is built aside and installed whole once caught
up, then every change is applied as it comes. After a reconnect (a consumer does not
survive a server restart, and no error says so) or a lost consumer it *resumes*: it
follows the bucket again from the revision after the one it holds, applying to the live
state only what changed meanwhile (a KV stream keeps each key's last message, delete and
purge markers included). It loads the bucket whole instead when the stream is not the one
its state came from (`resume_problem`: deleted and created again, behind the mirror, or
purged), and after a sink failure. Until then the last state stays in use, and nothing of
a load stays referenced once installed. Re-subscriptions wait a random part of a capped
exponential backoff, so mirrors that lost the same server do not all return at once.
Foreign keys (ones `kv_key` never makes, e.g. written by another tool) are skipped, and a
sink that fails never raises into a NATS callback: the mirror logs it and loads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import NamedTuple, Protocol, cast

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from .background import Backoff
from .buckets import wait_for_bucket
from .bus import Bus
from .codes import code_of_key
from .snapshot import (
    RECORDS_OBJECT,
    RecordsView,
    SnapshotError,
    decode_records,
    plan_landed,
    read_tagged_snapshot,
    records_entries,
    stored_plan,
)

log = logging.getLogger("trunk8.kvmirror")

KV_OPERATION = "KV-Operation"
# Seconds between checks that the consumer still exists (no error says when it is lost).
CONSUMER_CHECK_INTERVAL = 5.0
# ...and while a snapshot loaded ahead of the bucket waits for its bulk write to land.
PLAN_CHECK_INTERVAL = 0.5
FOLLOW_HEARTBEAT_SECONDS = 1.0
MARKER_REASON = "Nats-Marker-Reason"


class StreamMark(NamedTuple):
    """What tells a bucket's stream apart from a replaced or purged one."""

    created: str  # creation time: a bucket deleted and created again has another
    first_seq: int
    last_seq: int
    messages: int  # never falls in a KV stream (one message per key) unless purged


async def stream_mark(js: JetStreamContext, bucket: str) -> StreamMark:
    """The bucket's stream as it is now."""
    info = await js.stream_info(f"KV_{bucket}")
    state = info.state
    return StreamMark(str(info.created), state.first_seq, state.last_seq, state.messages)


def resume_problem(seen: StreamMark, now: StreamMark, revision: int | None) -> str | None:
    """Why a mirror at `revision`, which saw the stream as `seen`, must load it whole.

    None when following it again from `revision` + 1 gives every change since: the same
    stream, not behind the mirror, still holding every message after `revision` (updates
    and delete or purge markers: each key keeps its last message) and none purged before.
    A purge that removed fewer keys than were created meanwhile and nothing after
    `revision` goes unnoticed until the next whole load (purges are an operator's act).
    With `revision` None (a live consumer: messages may be on their way) only the stream's
    identity and its message count are compared.
    """
    if now.created != seen.created:
        return "the bucket was deleted and created again"
    if now.messages < seen.messages:
        return f"{seen.messages - now.messages} messages were purged"
    if revision is None:
        return None
    if now.last_seq < revision:
        return f"the bucket is behind the mirror (revision {now.last_seq} < {revision})"
    if now.first_seq > revision + 1:
        return f"changes after revision {revision} were purged"
    return None


class MirrorSink(Protocol):
    """Where a mirror puts what it reads."""

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a complete snapshot (key -> value)."""

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one change; None deletes the key."""


class StagedState(Protocol):
    """A sink's next state being built: a snapshot's content, then the changes after it."""

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one change to the state being built."""

    def install(self) -> int:
        """Make the built state the sink's; returns how many keys it holds."""


class SnapshotSink(MirrorSink, Protocol):
    """A sink that builds its state from its own snapshot object (the redirector's table).

    Other sinks start from the records snapshot: through `replace_records` when they have
    it (`RecordsSink`), else through `replace_all` with every key's value split out.
    """

    snapshot_object: str

    def stage(self, payload: bytearray | None) -> tuple[StagedState, int, str]:
        """A state from a snapshot (empty for None), its revision and bucket creation time.

        Raises `SnapshotError` when the payload cannot be used.
        """


class RecordsSink(MirrorSink, Protocol):
    """A sink that loads the records snapshot per owner, as it is laid out."""

    def __len__(self) -> int:
        """How many links it holds."""

    def replace_records(self, records: RecordsView) -> None:
        """Swap in a records snapshot whole; the changes after it follow through `apply`."""


class RecordsStage:
    """The records snapshot a load starts from (or none), and the changes after it by key.

    The snapshot is shared by the mirrors that read it together and never changed: the
    changes (None = deleted) are kept beside it, each key's last one.
    """

    def __init__(self, snapshot: RecordsView | None = None) -> None:
        self.snapshot = snapshot
        self.changes: dict[str, bytes | None] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        """Note one change (the last one of a key wins)."""
        self.changes[key] = value

    def entries(self) -> dict[str, bytes]:
        """Every key with its value: the snapshot's (split per key) with the changes applied."""
        entries = records_entries(self.snapshot) if self.snapshot is not None else {}
        for key, value in self.changes.items():
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
        return entries


def _is_removal(msg: Msg) -> bool:
    headers = msg.headers
    if not headers:
        return False
    return KV_OPERATION in headers or MARKER_REASON in headers


async def follow_bucket(
    js: JetStreamContext,
    bucket: str,
    stage: Callable[[str, bytes | None], None],
    on_caught_up: Callable[[int], None],
    on_change: Callable[[str, bytes | None, int], None],
    after: int = 0,
) -> JetStreamContext.PushSubscription:
    """Start following `bucket`; callbacks get the stream revision with each delivery.

    Until caught up every value goes to `stage` (the last value of each key, or with
    `after` only the keys changed after that revision: a bucket keeps one message per key,
    so those are exactly the changes since a snapshot at `after`); then `on_caught_up`,
    then every later change to `on_change`.
    """
    kv = await js.key_value(bucket)  # never created here: the config-watcher does
    prefix = f"$KV.{bucket}."
    live = False

    def finish(revision: int) -> None:
        nonlocal live
        live = True
        on_caught_up(revision)

    async def on_message(msg: Msg) -> None:
        key = msg.subject[len(prefix) :]
        value = None if _is_removal(msg) else msg.data
        meta = msg.metadata
        revision = meta.sequence.stream
        if live:
            on_change(key, value, revision)
            return
        stage(key, value)
        if meta.num_pending == 0:
            finish(revision)

    config = None
    policy = api.DeliverPolicy.LAST_PER_SUBJECT
    if after:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
        config = api.ConsumerConfig(opt_start_seq=after + 1)
    sub = await js.subscribe(
        prefix + ">",
        stream=f"KV_{bucket}",
        cb=on_message,
        ordered_consumer=True,
        # nats-py rebuilds an ordered consumer after two missed heartbeats: at its 5 s
        # default a mirror whose stream leader died went 10-19 s without changes.
        idle_heartbeat=FOLLOW_HEARTBEAT_SECONDS,
        deliver_policy=policy,
        config=config,
        inactive_threshold=300,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    info = await sub.consumer_info()
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    if not live and info.num_pending == 0 and delivered == 0:
        # Nothing to deliver: the state is complete now, unless a message arrived while we
        # asked for the revision (then it completed it already).
        status = await kv.status()
        if not live:
            finish(max(after, status.stream_info.state.last_seq))
    return sub


async def check_snapshot_fits(
    js: JetStreamContext,
    bucket: str,
    revision: int,
    bucket_created: str,
    plan: str = "",
    allow_ahead: bool = False,
) -> bool:
    """Raise SnapshotError unless a snapshot at `revision` is of this bucket as it is now.

    A snapshot of a bulk write's outcome (`plan`) fits once that write landed, and with
    `allow_ahead` while it is landing: then True (the reader checks it later, `Pending`).
    """
    status = await (await js.key_value(bucket)).status()
    if bucket_created != str(status.stream_info.created):
        raise SnapshotError("it is of an earlier bucket (deleted and created again)")
    last = status.stream_info.state.last_seq
    if revision > last:
        if plan and allow_ahead:
            return True
        raise SnapshotError(f"it is ahead of the bucket ({revision})")
    if plan and not await plan_landed(js, bucket, revision, plan):
        raise SnapshotError(f"its bulk write did not land as planned (revision {revision})")
    return False


class Pending(NamedTuple):
    """A snapshot loaded ahead of the bucket: the bulk write of `plan` ends at `revision`."""

    object_name: str
    revision: int
    plan: str


class _SharedRead:
    """One read and decode of the records snapshot, for every mirror asking meanwhile."""

    def __init__(self, task: asyncio.Future[tuple[RecordsView, str]]) -> None:
        self.task = task
        self.waiting = 0


# Per event loop: the files and admin mirrors of one process start together, and each read
# of the records object is about 115 MB at a million links.
_records_reads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _SharedRead]] = (
    weakref.WeakKeyDictionary()
)


async def _read_records(js: JetStreamContext) -> tuple[RecordsView, str]:
    payload, plan = await read_tagged_snapshot(js, RECORDS_OBJECT)
    return decode_records(payload), plan


async def shared_records(js: JetStreamContext) -> tuple[RecordsView, str]:
    """The records snapshot and its plan, read once for the callers that ask meanwhile.

    The callers share it: nobody changes a snapshot (`RecordsStage` keeps the changes
    beside it). Forgotten once every caller took it.
    """
    reads = _records_reads.setdefault(asyncio.get_running_loop(), {})
    read = reads.get(RECORDS_OBJECT)
    if read is None:
        read = reads[RECORDS_OBJECT] = _SharedRead(asyncio.ensure_future(_read_records(js)))
        # Retrieved even when every caller was cancelled: no "never retrieved" warning.
        read.task.add_done_callback(lambda task: task.cancelled() or task.exception())
    read.waiting += 1
    try:
        return await asyncio.shield(read.task)
    finally:
        read.waiting -= 1
        if not read.waiting and reads.get(RECORDS_OBJECT) is read:
            del reads[RECORDS_OBJECT]


async def records_start(
    js: JetStreamContext, bucket: str, allow_ahead: bool = False
) -> tuple[RecordsStage, int, Pending | None]:
    """A staging on the records snapshot, its revision, and whether it is ahead.

    SnapshotError if unusable (ahead of the bucket too, unless `allow_ahead`).
    """
    records, plan = await shared_records(js)
    revision = records.revision
    ahead = await check_snapshot_fits(
        js, bucket, revision, records.bucket_created, plan, allow_ahead
    )
    pending = Pending(RECORDS_OBJECT, revision, plan) if ahead else None
    return RecordsStage(records), revision, pending


async def read_bucket(
    js: JetStreamContext, bucket: str, timeout: float = 30.0, from_snapshot: bool = False
) -> dict[str, bytes]:
    """The current content of a bucket, read once (from the records snapshot on, if asked)."""
    staging = await read_bucket_stage(js, bucket, timeout, from_snapshot)
    try:
        return staging.entries()
    except SnapshotError as err:  # a snapshot whose values do not split: read it all
        log.warning("%s: unusable snapshot (%s); reading the bucket", bucket, err)
        return await read_bucket(js, bucket, timeout)


async def read_bucket_stage(
    js: JetStreamContext, bucket: str, timeout: float = 30.0, from_snapshot: bool = False
) -> RecordsStage:
    """A bucket read once: the records snapshot (if asked and usable), the changes after it."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    staging, after = RecordsStage(), 0
    if from_snapshot:
        try:
            staging, after, _ = await records_start(js, bucket)
        except SnapshotError as err:
            log.info("%s: no usable snapshot (%s); reading the bucket", bucket, err)

    def caught_up(revision: int) -> None:
        if not done.done():
            done.set_result(None)

    sub = await follow_bucket(js, bucket, staging.apply, caught_up, lambda *_: None, after)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return staging


class _Loading:
    """One subscription's state until caught up; dropped then, so nothing raw stays held."""

    def __init__(
        self, mirror: KvMirror, state: StagedState | RecordsStage, seen: StreamMark
    ) -> None:
        self.mirror = mirror
        self.state: StagedState | RecordsStage | None = state
        self.seen = seen  # the stream before the load began

    def stage(self, key: str, value: bytes | None) -> None:
        """Stage one value of the initial load (foreign keys skipped and counted)."""
        if self.state is None:
            return
        if code_of_key(key) is None:
            self.mirror._foreign += value is not None
        else:
            self.state.apply(key, value)

    def caught_up(self, revision: int) -> None:
        """Install the staged state in the sink, then forget it."""
        state, self.state = self.state, None
        self.mirror._seen = self.seen  # a failing install forgets it again
        if isinstance(state, RecordsStage):
            self.mirror._install_records(state, revision)
        elif state is not None:
            self.mirror._install(state.install, revision)


class KvMirror:
    """Keeps a `MirrorSink` equal to a bucket for as long as `run` runs.

    Each (re)subscription starts from the latest snapshot object when there is a usable
    one (`use_snapshot`), and from the whole bucket otherwise.
    """

    def __init__(self, bus: Bus, bucket: str, sink: MirrorSink, use_snapshot: bool = True) -> None:
        self.bus = bus
        self.bucket = bucket
        self.sink = sink
        self.use_snapshot = use_snapshot
        self.ready = asyncio.Event()  # set after the first complete snapshot
        self.revision = 0
        self.resyncs = 0  # whole loads installed (the first one included)
        self.resumes = 0  # re-subscriptions that applied only the changes since
        self.applied = 0  # changes applied one by one (live, or while resuming)
        self.snapshot_loads = 0  # (re)subscriptions that started from a snapshot object
        self.snapshot_fallbacks = 0  # ones that found none usable and read the bucket
        self._restart = asyncio.Event()  # set after a reconnect or a failed update
        self._failure: Exception | None = None
        # After a sink failure the next load reads the bucket: the snapshot may be the cause.
        self._skip_snapshot = False
        self._foreign = 0
        # The stream the state came from; None until loaded, and after a sink failure.
        self._seen: StreamMark | None = None
        # The snapshot loaded ahead of the bucket, until its bulk write is seen landed.
        self.pending: Pending | None = None

    async def _start_state(self) -> tuple[StagedState | RecordsStage, int]:
        """The state to build on and the revision it reflects: a snapshot's, or empty."""
        sink = self.sink
        staged_sink = sink if hasattr(sink, "stage") else None
        skip, self._skip_snapshot = self._skip_snapshot, False
        if skip and self.use_snapshot:
            log.info("%s: reading the bucket (the last load failed)", self.bucket)
        elif self.use_snapshot:
            try:
                return await self._load_snapshot(staged_sink)
            except SnapshotError as err:
                self.snapshot_fallbacks += 1
                log.info("%s: no usable snapshot (%s); reading the bucket", self.bucket, err)
        if staged_sink is not None:
            return cast(SnapshotSink, staged_sink).stage(None)[0], 0
        return RecordsStage(), 0

    async def _load_snapshot(
        self, staged_sink: object | None
    ) -> tuple[StagedState | RecordsStage, int]:
        js = self.bus.js
        name = (
            cast(SnapshotSink, staged_sink).snapshot_object
            if staged_sink is not None
            else RECORDS_OBJECT
        )
        state: StagedState | RecordsStage
        if staged_sink is not None:
            payload, plan = await read_tagged_snapshot(js, name)
            state, revision, created = cast(SnapshotSink, staged_sink).stage(payload)
            del payload
            ahead = await check_snapshot_fits(
                js, self.bucket, revision, created, plan, allow_ahead=True
            )
            self.pending = Pending(name, revision, plan) if ahead else None
        else:
            state, revision, self.pending = await records_start(js, self.bucket, allow_ahead=True)
        if self.pending is not None:
            log.info(
                "%s: loaded a snapshot ahead of the bucket (revision %d); checking its writes",
                self.bucket,
                revision,
            )
        self.snapshot_loads += 1
        return state, revision

    def _install_records(self, stage: RecordsStage, revision: int) -> None:
        """Install a records snapshot and the changes after it (or the bucket's values)."""
        sink, records = self.sink, stage.snapshot
        if records is not None and hasattr(sink, "replace_records"):
            records_sink = cast(RecordsSink, sink)

            def install() -> int:
                records_sink.replace_records(records)
                for key, value in stage.changes.items():
                    records_sink.apply(key, value)
                return len(records_sink)

            self._install(install, revision)
        else:
            self._install(lambda: self._replace_all(stage.entries()), revision)

    def _replace_all(self, entries: dict[str, bytes]) -> int:
        self.sink.replace_all(entries)
        return len(entries)

    def _install(self, install: Callable[[], int], revision: int) -> None:
        """Run an installation; a failing sink never raises into a NATS callback."""
        foreign, self._foreign = self._foreign, 0
        if foreign:
            log.warning("%s: skipping %d foreign keys", self.bucket, foreign)
        try:
            count = install()
        except Exception as err:  # called from a NATS callback: never raise there
            self._sink_failed(err)
            return
        self._reached(revision)
        self.resyncs += 1
        # Named after the sink: a process runs several mirrors of one bucket.
        sink = type(self.sink).__name__
        if not self.ready.is_set():
            log.info("%s: %s loaded %d keys at revision %d", self.bucket, sink, count, revision)
        else:
            log.info(
                "%s: %s resynchronised %d keys at revision %d", self.bucket, sink, count, revision
            )
        self.ready.set()

    def _change(self, key: str, value: bytes | None, revision: int) -> None:
        if code_of_key(key) is None:
            if value is not None:  # a delete of one (a writer's fence) changes nothing
                log.warning("%s: skipping foreign key %r", self.bucket, key)
        else:
            try:
                self.sink.apply(key, value)
            except Exception as err:  # called from a NATS callback: never raise there
                self._sink_failed(err)
                return
            self.applied += 1
        self._reached(revision)

    def _reached(self, revision: int) -> None:
        """The sink holds the bucket as of `revision` (subclasses tell their waiters)."""
        self.revision = revision

    def _sink_failed(self, err: Exception) -> None:
        """A sink bug loses no update silently: log it and load a fresh snapshot."""
        log.error("%s: applying an update failed; reloading the bucket", self.bucket, exc_info=err)
        self._failure = err
        self._seen = None  # the sink's state is in doubt: the next subscription loads whole
        self._skip_snapshot = True
        self._restart.set()

    async def _until_stale(self, sub: JetStreamContext.PushSubscription) -> None:
        """Return after a reconnect, or once the consumer is gone (bucket deleted, say)."""
        while True:
            interval = CONSUMER_CHECK_INTERVAL if self.pending is None else PLAN_CHECK_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart.wait(), interval)
                return
            try:
                await sub.consumer_info()
                problem = await self._look_again() or await self._check_pending()
            except NotFoundError:
                log.warning("%s: consumer gone; following the bucket again", self.bucket)
                return
            except Exception:  # NATS busy or away: the reconnect path handles it
                continue
            if problem is not None:  # purged under a live consumer: no marker tells which keys
                log.warning("%s: loading the bucket whole: %s", self.bucket, problem)
                self._seen = None
                return

    async def _check_pending(self) -> str | None:
        """Why a snapshot loaded ahead of the bucket cannot be kept; None while it can.

        It is kept once its bulk write is seen landed (its last write at its revision), and
        while the writer still stands by it (the stored object still names its plan).
        """
        pending = self.pending
        if pending is None:
            return None
        js = self.bus.js
        now = await stream_mark(js, self.bucket)
        if now.last_seq >= pending.revision:
            if not await plan_landed(js, self.bucket, pending.revision, pending.plan):
                return f"the bulk write up to revision {pending.revision} did not land as planned"
            log.info("%s: the bulk write up to revision %d landed", self.bucket, pending.revision)
        elif await stored_plan(js, pending.object_name) != pending.plan:
            return f"the bulk write up to revision {pending.revision} was abandoned"
        if self.pending is pending:
            self.pending = None
        return None

    async def _look_again(self) -> str | None:
        """Compare the stream with the one last seen; note it, or say why it is not the same."""
        seen = self._seen
        if seen is None:
            return None
        now = await stream_mark(self.bus.js, self.bucket)
        problem = resume_problem(seen, now, None)
        if problem is None and self._seen is seen:
            self._seen = now
        return problem

    async def _follow(self) -> JetStreamContext.PushSubscription:
        """Subscribe: resume from the revision held when the stream allows it, else load."""
        seen = self._seen
        if seen is not None and self.ready.is_set():
            try:
                now = await stream_mark(self.bus.js, self.bucket)
            except NotFoundError:
                problem: str | None = "the bucket is gone"
            else:
                problem = resume_problem(seen, now, self.revision)
                if problem is None:
                    return await self._resume(now)
            log.info("%s: loading the bucket whole: %s", self.bucket, problem)
        return await self._load()

    async def _resume(self, now: StreamMark) -> JetStreamContext.PushSubscription:
        """Follow the bucket from the revision held, applying the changes to the live state."""
        after, applied = self.revision, self.applied
        self._seen = now

        def meanwhile(key: str, value: bytes | None) -> None:
            self._change(key, value, after)  # the revision is known once caught up

        def caught_up(revision: int) -> None:
            self._reached(max(revision, after))
            self.resumes += 1
            log.info(
                "%s: resumed at revision %d: %d changes since revision %d",
                self.bucket,
                self.revision,
                self.applied - applied,
                after,
            )

        return await follow_bucket(
            self.bus.js, self.bucket, meanwhile, caught_up, self._change, after
        )

    async def _load(self) -> JetStreamContext.PushSubscription:
        """Build the state aside from a snapshot or the whole bucket, then install it."""
        self._seen = None  # until installed: a load cut short is not resumed
        self.pending = None
        await wait_for_bucket(self.bus.js, self.bucket)  # not ready until it exists
        # Seen before subscribing: a bucket replaced after this differs from it.
        seen = await stream_mark(self.bus.js, self.bucket)
        state, after = await self._start_state()
        loading = _Loading(self, state, seen)
        del state  # held by `loading` only, which lets go of it once installed
        return await follow_bucket(
            self.bus.js, self.bucket, loading.stage, loading.caught_up, self._change, after
        )

    async def run(self) -> None:
        """Follow the bucket forever, subscribing again after reconnects and errors."""
        backoff = Backoff(jitter=1.0)
        while True:
            await self.bus.wait_connected()
            self._restart.clear()
            unregister = self.bus.on_reconnect(self._restart.set)
            sub: JetStreamContext.PushSubscription | None = None
            try:
                sub = await self._follow()
                await self._until_stale(sub)
                if self._failure is None:
                    backoff.reset()
                else:  # a sink that fails again must not spin: back off as after errors
                    self._failure = None
                await backoff.wait()  # a random part of it: mirrors do not return at once
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning(
                    "%s: watch failed (%s: %s); retrying", self.bucket, type(err).__name__, err
                )
                await backoff.wait()
            finally:
                unregister()
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
