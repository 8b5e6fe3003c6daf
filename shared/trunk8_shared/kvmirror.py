"""A local mirror of a JetStream KV bucket: full load, then live updates, supervised.

`follow_bucket` subscribes with an ordered consumer (last value per key), hands the whole
current content to `on_snapshot` once caught up, then every change to `on_change`.
`KvMirror` keeps that running: after a reconnect (a consumer does not survive a server
restart, and no error says so) or any error it subscribes again and delivers a fresh
snapshot, so keys deleted meanwhile disappear too. Until then the last state stays in use.
Foreign keys (ones `kv_key` never makes, e.g. written by another tool) are skipped, and a
sink that fails never raises into a NATS callback: the mirror logs it and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from .background import Backoff
from .buckets import ensure_bucket
from .bus import Bus
from .codes import code_of_key

log = logging.getLogger("trunk8.kvmirror")

KV_OPERATION = "KV-Operation"
# Seconds between checks that the consumer still exists (no error says when it is lost).
CONSUMER_CHECK_INTERVAL = 5.0
MARKER_REASON = "Nats-Marker-Reason"


class MirrorSink(Protocol):
    """Where a mirror puts what it reads."""

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a complete snapshot (key -> value)."""

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one change; None deletes the key."""


def _is_removal(msg: Msg) -> bool:
    headers = msg.headers
    if not headers:
        return False
    return KV_OPERATION in headers or MARKER_REASON in headers


async def follow_bucket(
    js: JetStreamContext,
    bucket: str,
    on_snapshot: Callable[[dict[str, bytes], int], None],
    on_change: Callable[[str, bytes | None, int], None],
) -> JetStreamContext.PushSubscription:
    """Start following `bucket`; callbacks get the stream revision with each delivery."""
    kv = await ensure_bucket(js, bucket)
    prefix = f"$KV.{bucket}."
    staging: dict[str, bytes] = {}
    live = False

    def finish_snapshot(revision: int) -> None:
        nonlocal live
        live = True
        on_snapshot(staging, revision)

    async def on_message(msg: Msg) -> None:
        key = msg.subject[len(prefix) :]
        value = None if _is_removal(msg) else msg.data
        meta = msg.metadata
        revision = meta.sequence.stream
        if live:
            on_change(key, value, revision)
            return
        if value is None:
            staging.pop(key, None)
        else:
            staging[key] = value
        if meta.num_pending == 0:
            finish_snapshot(revision)

    sub = await js.subscribe(
        prefix + ">",
        stream=f"KV_{bucket}",
        cb=on_message,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=300,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    info = await sub.consumer_info()
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    if not live and info.num_pending == 0 and delivered == 0:
        # An empty bucket delivers nothing: the snapshot is empty and complete now, unless
        # a message arrived while we asked for the revision (then it completed it already).
        status = await kv.status()
        if not live:
            finish_snapshot(status.stream_info.state.last_seq)
    return sub


async def read_bucket(js: JetStreamContext, bucket: str, timeout: float = 30.0) -> dict[str, bytes]:
    """The current content of a bucket, read once."""
    done: asyncio.Future[dict[str, bytes]] = asyncio.get_running_loop().create_future()

    def on_snapshot(entries: dict[str, bytes], revision: int) -> None:
        if not done.done():
            done.set_result(dict(entries))

    sub = await follow_bucket(js, bucket, on_snapshot, lambda *_: None)
    try:
        return await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class KvMirror:
    """Keeps a `MirrorSink` equal to a bucket for as long as `run` runs."""

    def __init__(self, bus: Bus, bucket: str, sink: MirrorSink) -> None:
        self.bus = bus
        self.bucket = bucket
        self.sink = sink
        self.ready = asyncio.Event()  # set after the first complete snapshot
        self.revision = 0
        self.resyncs = 0
        self._restart = asyncio.Event()  # set after a reconnect or a failed update
        self._failure: Exception | None = None

    def _snapshot(self, entries: dict[str, bytes], revision: int) -> None:
        ours = {key: value for key, value in entries.items() if code_of_key(key) is not None}
        if len(ours) != len(entries):
            log.warning("%s: skipping %d foreign keys", self.bucket, len(entries) - len(ours))
        try:
            self.sink.replace_all(ours)
        except Exception as err:  # called from a NATS callback: never raise there
            self._sink_failed(err)
            return
        self.revision = revision
        self.resyncs += 1
        if not self.ready.is_set():
            log.info("%s: loaded %d keys at revision %d", self.bucket, len(ours), revision)
        else:
            log.info("%s: resynchronised %d keys at revision %d", self.bucket, len(ours), revision)
        self.ready.set()

    def _change(self, key: str, value: bytes | None, revision: int) -> None:
        if code_of_key(key) is None:
            log.warning("%s: skipping foreign key %r", self.bucket, key)
        else:
            try:
                self.sink.apply(key, value)
            except Exception as err:  # called from a NATS callback: never raise there
                self._sink_failed(err)
                return
        self.revision = revision

    def _sink_failed(self, err: Exception) -> None:
        """A sink bug loses no update silently: log it and load a fresh snapshot."""
        log.error("%s: applying an update failed; reloading the bucket", self.bucket, exc_info=err)
        self._failure = err
        self._restart.set()

    async def _until_stale(self, sub: JetStreamContext.PushSubscription) -> None:
        """Return after a reconnect, or once the consumer is gone (bucket deleted, say)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart.wait(), CONSUMER_CHECK_INTERVAL)
                return
            try:
                await sub.consumer_info()
            except NotFoundError:
                log.warning("%s: consumer gone; following the bucket again", self.bucket)
                return
            except Exception:  # NATS busy or away: the reconnect path handles it
                pass

    async def run(self) -> None:
        """Follow the bucket forever, subscribing again after reconnects and errors."""
        backoff = Backoff()
        while True:
            await self.bus.wait_connected()
            self._restart.clear()
            unregister = self.bus.on_reconnect(self._restart.set)
            sub: JetStreamContext.PushSubscription | None = None
            try:
                sub = await follow_bucket(self.bus.js, self.bucket, self._snapshot, self._change)
                await self._until_stale(sub)
                if self._failure is None:
                    backoff.reset()
                else:  # a sink that fails again must not spin: back off as after errors
                    self._failure = None
                    await backoff.wait()
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
