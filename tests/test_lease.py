"""Standby config-watchers: one active (the lease holder), the others take over, fenced writes.

Real `trunk8 run --target config-watcher` processes on one real nats-server and one data
directory: exactly one is active and answers reload requests; kill -9 it and a standby
takes over and publishes the next edit; pause it (SIGSTOP, a partition's stand-in) past
the lease TTL and resume it, and it stands by without changing the buckets. In-process,
with two real NATS connections: a writer that wrongly believes it still holds the lease
finds its writes refused by NATS itself (the fence), and steps down. The lease TTL is
short here (seconds), as `TRUNK8_LEASE_TTL` allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
import test_cli
from conftest import wait_until, write
from nats.js.errors import BucketNotFoundError
from prometheus_client.parser import text_string_to_metric_families
from test_cli import Launch, Proc, append_link, clean_env, free_port

from trunk8.embedded_nats import EmbeddedNats
from trunk8_config_watcher.lease import Lease, NotActiveError
from trunk8_config_watcher.publisher import BucketWriter, PublishError
from trunk8_shared.bus import Bus
from trunk8_shared.codes import kv_key
from trunk8_shared.records import (
    LINKS_BUCKET,
    RELOAD_SUBJECT,
    ReloadRequest,
    json_encoder,
    link_decoder,
)

launch = test_cli.launch  # starts `trunk8 …` processes and stops them all at the end

TTL = 3.0  # seconds; renewals every second leave room for a busy 2-core machine
# A standby takes over at most a TTL after the last renewal, plus one attempt's pause,
# plus its reconcile: this bound is loose on purpose (CI machines are shared).
TAKEOVER_BOUND = TTL + 8.0


class Watcher:
    """One config-watcher process and its port."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc = proc
        self.port = port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        yield session


def start_watcher(launch: Launch, data: Path, nats_url: str) -> Watcher:
    """`trunk8 run --target config-watcher`, exactly as an operator starts every one."""
    port = free_port()
    env = clean_env(TRUNK8_NATS_URL=nats_url, TRUNK8_LEASE_TTL=str(TTL), TRUNK8_DRAIN_SECONDS="0")
    proc = launch(
        "run", "--target", "config-watcher", "--data", str(data), "--port", str(port), env=env
    )
    return Watcher(proc, port)


async def metric(http: aiohttp.ClientSession, watcher: Watcher, name: str) -> float | None:
    """An unlabelled sample of a watcher's /-/metrics, None when it does not answer."""
    try:
        async with http.get(watcher.base + "/-/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return None


async def is_active(http: aiohttp.ClientSession, watcher: Watcher) -> bool:
    return await metric(http, watcher, "trunk8_config_watcher_active") == 1


async def is_ready(http: aiohttp.ClientSession, watcher: Watcher) -> bool:
    try:
        async with http.get(watcher.base + "/-/ready") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def until(condition, timeout: float, what: str, *watchers: Watcher) -> float:  # type: ignore[no-untyped-def]
    """Poll an async condition; returns the seconds it took, fails showing the watchers' logs."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            logs = "\n".join(w.proc.describe()[-4000:] for w in watchers)
            pytest.fail(f"{what}: not within {timeout} s\n{logs}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def reload_replies(client: nats.NATS, wait_after_first: float = 0.5) -> int:
    """How many watchers answer one reload request (the second reply is waited for)."""
    inbox = client.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        await replies.put(msg.data)

    sub = await client.subscribe(inbox, cb=on_reply)
    try:
        await client.publish(RELOAD_SUBJECT, json_encoder.encode(ReloadRequest()), reply=inbox)
        await asyncio.wait_for(replies.get(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(replies.get(), wait_after_first)
            return 2 + replies.qsize()
        return 1
    finally:
        await sub.unsubscribe()


async def served_url(client: nats.NATS, code: str) -> str | None:
    """The URL the links bucket holds for `code`, None when it holds nothing."""
    kv = await client.jetstream().key_value(LINKS_BUCKET)
    try:
        entry = await kv.get(kv_key(code))
    except nats.js.errors.KeyNotFoundError:
        return None
    return link_decoder.decode(entry.value or b"").url if entry.value else None


async def test_one_active_watcher_and_a_standby_that_takes_over_after_kill_9(
    nats_server: EmbeddedNats,
    launch: Launch,
    data_dir: Path,
    bus_client: nats.NATS,
    http: aiohttp.ClientSession,
) -> None:  # fmt: skip (nats_server first: the watchers stop before it does)
    first = start_watcher(launch, data_dir, nats_server.url)
    second = start_watcher(launch, data_dir, nats_server.url)
    pair = (first, second)
    for watcher in pair:  # a standby is ready too: it is doing its job
        await until(lambda w=watcher: is_ready(http, w), 30, "ready", *pair)

    async def one_active() -> bool:
        return sum([await is_active(http, w) for w in pair]) == 1

    await until(one_active, 10, "exactly one active", *pair)
    active, standby = pair if await is_active(http, first) else pair[::-1]
    # Over several renewals nothing changes hands, and only the active one answers.
    deadline = time.monotonic() + TTL
    while time.monotonic() < deadline:
        assert await is_active(http, active) and not await is_active(http, standby)
        await asyncio.sleep(0.1)
    assert await reload_replies(bus_client) == 1
    assert await served_url(bus_client, "docs") == "https://example.com/docs"

    os.kill(active.proc.pid, signal.SIGKILL)
    took = await until(lambda: is_active(http, standby), TAKEOVER_BOUND, "takeover", standby)
    print(f"standby active {took:.2f} s after kill -9 (lease TTL {TTL} s)")
    append_link(data_dir, "bob", "after_kill", "https://example.com/after-kill")

    async def edit_served() -> bool:
        return await served_url(bus_client, "after_kill") == "https://example.com/after-kill"

    await until(edit_served, 10, "edit published by the new active watcher", standby)
    assert await reload_replies(bus_client) == 1
    assert "config.lease_acquired" in standby.proc.stderr


async def test_a_paused_active_watcher_stands_by_and_changes_nothing(
    nats_server: EmbeddedNats, launch: Launch, data_dir: Path, tmp_path: Path,
    bus_client: nats.NATS, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    # Two copies of the data: whatever the old active wrote after the takeover would show
    # as its own version of `docs` in the bucket.
    old_data = tmp_path / "old-data"
    shutil.copytree(data_dir, old_data)
    old = start_watcher(launch, old_data, nats_server.url)
    await until(lambda: is_active(http, old), 30, "first watcher active", old)
    new = start_watcher(launch, data_dir, nats_server.url)
    await until(lambda: is_ready(http, new), 30, "standby ready", old, new)
    assert not await is_active(http, new)

    os.kill(old.proc.pid, signal.SIGSTOP)
    try:
        # Edits the old one will find when it resumes, and act on at once.
        write(
            old_data / "users" / "bob" / "links.toml",
            '[links.docs]\ntype = "redirect"\nurl = "https://old.example/"\n',
        )
        write(
            data_dir / "users" / "carol" / "links.toml",
            '[links.carol1]\ntype = "redirect"\nurl = "https://new.example/"\n',
        )

        async def new_state_published() -> bool:
            return await served_url(bus_client, "carol1") == "https://new.example/"

        await until(lambda: is_active(http, new), TAKEOVER_BOUND, "takeover", new)
        await until(new_state_published, 10, "the new active's state", new)
        revision = (
            await (await bus_client.jetstream().key_value(LINKS_BUCKET)).status()
        ).stream_info.state.last_seq
    finally:
        os.kill(old.proc.pid, signal.SIGCONT)

    old.proc.wait_line("stderr", lambda line: "config.lease_lost" in line, 10)
    await until(lambda: is_ready(http, old), 10, "the old one ready as a standby", old)
    assert not await is_active(http, old) and await is_active(http, new)
    # It read its edit (its file watch and reconcile go on) and published none of it.
    assert await served_url(bus_client, "docs") == "https://example.com/docs"
    assert await reload_replies(bus_client) == 1
    kv = await bus_client.jetstream().key_value(LINKS_BUCKET)
    assert (await kv.status()).stream_info.state.last_seq == revision
    assert "Traceback" not in old.proc.stderr + new.proc.stderr


async def _active_lease(bus: Bus, ttl: float, holder: str = "") -> tuple[Lease, asyncio.Task[None]]:
    lease = Lease(bus, ttl, holder=holder)
    task = asyncio.create_task(lease.run())
    await asyncio.wait_for(lease.wait_active(), 15)
    return lease, task


async def test_nats_refuses_the_writes_of_a_watcher_that_lost_the_lease(
    nats_server: EmbeddedNats, bus_client: nats.NATS
) -> None:
    """The fence alone, without the local check: the old writer believes it is active."""
    await bus_client.jetstream().create_key_value(bucket=LINKS_BUCKET, history=1)
    old_bus, new_bus = Bus(nats_server.url, "old"), Bus(nats_server.url, "new")
    old_bus.start()
    new_bus.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        old_lease, old_task = await _active_lease(old_bus, ttl=1.0)
        tasks.append(old_task)
        old = BucketWriter(old_bus, LINKS_BUCKET, old_lease)
        await old.fence()
        record = b'{"code":"a","owner":"bob","type":"redirect","url":"https://old/"}'
        await old.write({"a": record}, [])

        # A partition: the old watcher renews nothing, yet its clock says it may write.
        old_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await old_task
        old_lease.valid_until = time.monotonic() + 60
        new_lease, new_task = await _active_lease(new_bus, ttl=1.0)  # after the key expired
        tasks.append(new_task)
        new = BucketWriter(new_bus, LINKS_BUCKET, new_lease)
        await new.fence()
        newer = record.replace(b"old", b"new")
        await new.write({"a": newer, "b": newer.replace(b'"a"', b'"b"')}, [])

        with pytest.raises(NotActiveError, match="refused"):
            await old.write({"a": record, "c": record}, [])
        assert not old_lease.active and old_lease.losses == 1
        with pytest.raises(NotActiveError):  # and it no longer tries
            await old.write({"a": record}, [])
        kv = await bus_client.jetstream().key_value(LINKS_BUCKET)
        assert (await kv.get("a")).value == newer
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("c")
        # The new writer goes on: its own sequence was not disturbed.
        assert await new.write({"d": newer}, []) == (await kv.status()).stream_info.state.last_seq
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await old_bus.close()
        await new_bus.close()


async def test_a_watcher_replacing_a_dead_one_of_its_name_takes_its_lease_at_once(
    nats_server: EmbeddedNats,
) -> None:
    """`trunk8 up` restarts its watcher child under one name: no wait for the TTL."""
    bus = Bus(nats_server.url, "up")
    bus.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        dead, task = await _active_lease(bus, ttl=30.0, holder="up:host:1")
        task.cancel()  # killed: no release
        with contextlib.suppress(asyncio.CancelledError):
            await task
        other = Lease(bus, 30.0, holder="host:2:abcd")
        tasks.append(asyncio.create_task(other.run()))
        successor, task = await _active_lease(bus, ttl=30.0, holder="up:host:1")
        tasks.append(task)
        assert successor.revision > dead.revision and not other.active
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.close()


async def test_a_watcher_that_stops_hands_the_lease_over_at_once(
    nats_server: EmbeddedNats,
) -> None:
    """A clean stop deletes the key: the standby need not wait for a long TTL."""
    buses = [Bus(nats_server.url, "first"), Bus(nats_server.url, "second")]
    for bus in buses:
        bus.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        first, task = await _active_lease(buses[0], ttl=30.0)
        tasks.append(task)
        second = Lease(buses[1], 30.0)
        tasks.append(asyncio.create_task(second.run()))
        await wait_until(lambda: asyncio.sleep(0, second.standing_by), timeout=10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await first.release()
        await asyncio.wait_for(second.wait_active(), 5)  # a poll, not the 30 s TTL
        assert not first.active and first.losses == 1
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for bus in buses:
            await bus.close()


async def test_a_failed_write_is_not_taken_for_another_writer(
    nats_server: EmbeddedNats, bus_client: nats.NATS
) -> None:
    """A value too large is its own error; the writes after it fail, the watcher stays."""
    await bus_client.jetstream().create_key_value(bucket=LINKS_BUCKET, max_value_size=200)
    bus = Bus(nats_server.url, "writer")
    bus.start()
    try:
        lease, task = await _active_lease(bus, ttl=2.0)
        writer = BucketWriter(bus, LINKS_BUCKET, lease)
        await writer.fence()
        with pytest.raises(PublishError, match=r"'big'.*maximum"):
            await writer.write({"ok": b"1", "big": b"x" * 300, "after": b"2"}, [])
        assert lease.active and writer.known == {"ok": b"1"}
        await writer.fence()  # what a full sync does next
        assert await writer.write({"after": b"2"}, []) > 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await bus.close()


async def test_services_wait_for_the_buckets_the_watcher_creates(
    start_system,
    bus_client: nats.NATS,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    redirector = await start_system("redirector", wait_ready=False)
    files = await start_system("files", wait_ready=False)

    async def logged_waiting() -> bool:
        return (
            "bucket trunk8_links does not exist yet; waiting for the config-watcher" in caplog.text
        )

    started = time.monotonic()
    while not await logged_waiting():
        assert time.monotonic() - started < 10, "no log line says what the services wait for"
        await asyncio.sleep(0.05)
    assert not await redirector.ready() and not await files.ready()
    # A redirector with nothing loaded cannot tell a live code from an unknown one: 503,
    # retried by the edge on another redirector, never a 404 for a link that exists.
    status, headers, _ = await redirector.get("/docs")
    assert (status, headers.get("Retry-After")) == (503, "1")
    with pytest.raises(BucketNotFoundError):  # waiting created nothing
        await bus_client.jetstream().key_value(LINKS_BUCKET)

    watcher = await start_system("config-watcher", lease_ttl=1.0)
    for system in (redirector, files):
        started = time.monotonic()
        while not await system.ready():
            assert time.monotonic() - started < 15, "not ready after the buckets appeared"
            await asyncio.sleep(0.05)
    assert await redirector.location("/docs") == "https://example.com/docs"
    assert await watcher.ready()
    # Once per service, not once per look.
    waits = caplog.text.count("bucket trunk8_links does not exist yet")
    assert waits == 2, waits
    info = await bus_client.jetstream().stream_info("KV_trunk8_lease")
    assert info.config.max_age == 1.0
    assert msgspec.json.decode(
        (await (await bus_client.jetstream().key_value("trunk8_lease")).get("active")).value
    )["holder"]
