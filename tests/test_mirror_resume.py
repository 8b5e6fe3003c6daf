"""A KV mirror resumes from the revision it holds after NATS comes back, unless it must not.

A real nats-server is killed (-9) under a following mirror; while it is away the bucket
changes through a second server started on the same store (another port, so the mirror
cannot see it), which is then stopped; the first port comes back on that store. The
mirror must then hold exactly the bucket's state: after plain changes by applying just
those (creates, updates, deletes, a purge), after the bucket was replaced or its stream
purged by loading it whole. Reconnect delays are random and capped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

import nats
import pytest
from conftest import running_mirror, wait_until
from nats.aio.client import Server
from nats.js import JetStreamContext

from trunk8.embedded_nats import EmbeddedNats
from trunk8_shared import kvmirror
from trunk8_shared.buckets import ensure_bucket
from trunk8_shared.bus import Bus, reconnect_delay
from trunk8_shared.kvmirror import KvMirror, read_bucket
from trunk8_shared.records import LINKS_BUCKET

KEYS = 200
Changes = Callable[[JetStreamContext], Awaitable[None]]


class DictSink:
    """The plainest sink: key -> value."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    def replace_all(self, entries: dict[str, bytes]) -> None:
        self.entries = dict(entries)

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = value


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the stream every 0.2 s instead of 5 s."""
    monkeypatch.setattr(kvmirror, "CONSUMER_CHECK_INTERVAL", 0.2)


@pytest.fixture
async def following(
    nats_server: EmbeddedNats,
) -> AsyncIterator[tuple[KvMirror, DictSink]]:
    """A bucket of KEYS keys and a mirror following it, ready."""
    nc = await nats.connect(nats_server.url)
    links = await ensure_bucket(nc.jetstream(), LINKS_BUCKET)
    for i in range(KEYS):
        await links.put(f"k{i:03d}", b"v0")
    await nc.drain()
    sink = DictSink()
    async with running_mirror(nats_server.url, sink, use_snapshot=False) as mirror:
        yield mirror, sink


@contextlib.asynccontextmanager
async def outage(nats_server: EmbeddedNats, changes: Changes) -> AsyncIterator[str]:
    """Kill the server, change the bucket elsewhere, bring the port back; yields its URL."""
    nats_server.kill()
    await nats_server.process.wait()  # type: ignore[union-attr]
    aside = EmbeddedNats(nats_server.store_dir, token=nats_server.token)  # another port
    await aside.start()
    try:
        nc = await nats.connect(aside.url)
        await changes(nc.jetstream())
        await nc.drain()
    finally:
        await aside.stop()
    back = EmbeddedNats(nats_server.store_dir, port=nats_server.port, token=nats_server.token)
    await back.start()
    try:
        yield back.url
    finally:
        await back.stop()


async def _in_step(mirror: KvMirror, sink: DictSink, url: str) -> bool:
    nc = await nats.connect(url)
    try:
        return sink.entries == await read_bucket(nc.jetstream(), LINKS_BUCKET, timeout=5)
    finally:
        await nc.drain()


async def test_changes_made_while_away_are_applied_alone(
    nats_server: EmbeddedNats, following: tuple[KvMirror, DictSink]
) -> None:
    mirror, sink = following
    applied = mirror.applied

    async def changes(js: JetStreamContext) -> None:
        links = await js.key_value(LINKS_BUCKET)
        for i in range(3):
            await links.put(f"new{i}", b"created")  # 3 creates
            await links.put(f"k{i + 10:03d}", b"v1")  # 3 updates
            await links.put(f"k{i + 20:03d}", b"v1")  # the same key twice: its last value
            await links.put(f"k{i + 20:03d}", b"v2")
            await links.delete(f"k{i + 30:03d}")  # 3 deletes
        await links.purge("k040")  # a purge leaves its marker

    async with outage(nats_server, changes) as url:

        async def resumed() -> bool:
            return mirror.resumes == 1 and await _in_step(mirror, sink, url)

        await wait_until(resumed, timeout=30)
        assert mirror.resyncs == 1, "loaded whole instead of resuming"
        # Exactly the last message of each changed key, not the bucket's 200 keys again.
        assert mirror.applied - applied == 13
        assert sink.entries["k020"] == b"v2" and "k030" not in sink.entries
        assert "k040" not in sink.entries and sink.entries["new2"] == b"created"

        # Live again: a later change arrives as well.
        nc = await nats.connect(url)
        await (await nc.jetstream().key_value(LINKS_BUCKET)).put("after", b"1")
        await nc.drain()

        async def live() -> bool:
            return sink.entries.get("after") == b"1"

        await wait_until(live, timeout=10)
        assert mirror.resyncs == 1


async def _replace_bucket(js: JetStreamContext) -> None:
    await js.delete_key_value(LINKS_BUCKET)
    links = await ensure_bucket(js, LINKS_BUCKET)
    # Further than the mirror's revision: only the creation time tells the streams apart.
    for i in range(KEYS + 60):
        await links.put(f"r{i:03d}", b"other")


async def _purge_keeping_two(js: JetStreamContext) -> None:
    await js.purge_stream(f"KV_{LINKS_BUCKET}", keep=2)  # older keys vanish, no markers
    await (await js.key_value(LINKS_BUCKET)).put("k199", b"v1")


@pytest.mark.parametrize("changes", [_replace_bucket, _purge_keeping_two])
async def test_a_replaced_or_purged_bucket_is_loaded_whole(
    nats_server: EmbeddedNats, following: tuple[KvMirror, DictSink], changes: Changes
) -> None:
    mirror, sink = following
    async with outage(nats_server, changes) as url:

        async def reloaded() -> bool:
            return mirror.resyncs == 2 and await _in_step(mirror, sink, url)

        await wait_until(reloaded, timeout=30)
        assert mirror.resumes == 0
        assert not any(key.startswith("k0") for key in sink.entries)


async def test_a_purge_under_a_live_mirror_makes_it_load_whole(
    nats_server: EmbeddedNats, quick_checks: None, following: tuple[KvMirror, DictSink]
) -> None:
    mirror, sink = following
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().purge_stream(f"KV_{LINKS_BUCKET}", keep=3)  # no markers

        async def reloaded() -> bool:
            return mirror.resyncs == 2 and await _in_step(mirror, sink, nats_server.url)

        await wait_until(reloaded, timeout=15)
        assert sorted(sink.entries) == ["k197", "k198", "k199"]
    finally:
        await nc.drain()


def test_reconnect_delays_are_random_capped_and_grow() -> None:
    delays = [reconnect_delay(failed, 0.5, cap=4.0) for failed in range(12) for _ in range(50)]
    assert all(0.0 <= delay <= 4.0 for delay in delays)
    first = [reconnect_delay(0, 0.5) for _ in range(200)]
    assert max(first) <= 0.5 and len(set(first)) > 150  # spread, not one instant
    assert max(reconnect_delay(8, 0.5) for _ in range(200)) > 2.0  # grown past the first


def test_reconnects_go_to_the_least_tried_server() -> None:
    bus = Bus("nats://a:4222,nats://b:4222,nats://c:4222", "test")
    servers = [
        Server(urlparse("nats://a:4222"), reconnects=3),
        Server(urlparse("nats://b:4222"), reconnects=0),
        Server(urlparse("nats://c:4222"), reconnects=1),
    ]
    server, delay = bus._next_server(servers, {})
    assert server.uri.netloc == "b:4222" and 0.0 <= delay <= bus.reconnect_wait
