"""The config-watcher's lease while its loop is busy: a lapse waited out, a long import kept.

Against a real nats-server with a short lease TTL: when the renewal cannot run and the
lease runs out locally, `/-/ready` says so at once and no write goes out, the sync loop
backs off (a handful of attempts, little CPU) instead of spinning on `NotActiveError`, and
publishes again once the lease is back; and a first
import whose every step is slow keeps the lease throughout, because its long steps yield
to the renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from conftest import StartSystem, wait_until, write
from test_watcher_scale import links_toml

from trunk8.embedded_nats import EmbeddedNats
from trunk8_config_watcher import publisher
from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_config_watcher.lease import VALID_SHARE, NotActiveError
from trunk8_config_watcher.sync import keep_in_sync
from trunk8_config_watcher.watcher import ConfigWatcher
from trunk8_shared.bus import Bus
from trunk8_shared.codes import kv_key
from trunk8_shared.settings import Settings

TTL = 1.0  # the smallest a setting allows is 0.5 s; renewals every third of it
LAPSE = 1.5  # seconds the lease stays lapsed: backoff 0.1 + 0.2 + 0.4 + 0.8 fits 4 tries
# Far above the 4-5 tries a backoff makes in LAPSE; a spinning loop reaches it at once.
SPINNING = 50
# A first import whose diff costs this long a link: 2,000 links hold the loop 1.6 s in one
# go, past the lease's local validity (0.9 s), unless the diff yields between slices.
SLOW_LINKS = 2000
SLOW_ENCODE = 0.0008


@pytest.fixture
async def watcher(nats_server: EmbeddedNats, data_dir: Path) -> AsyncIterator[ConfigWatcher]:
    """A loaded config-watcher on its own connection (its tasks are the test's to start)."""
    settings = Settings(data_dir=str(data_dir), nats_url=nats_server.url, lease_ttl=TTL)
    bus = Bus(nats_server.url, "busy-watcher", reconnect_wait=0.2)
    bus.start()
    watcher = ConfigWatcher(settings, bus)
    await watcher.load()
    try:
        yield watcher
    finally:
        await bus.close()


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_sync_loop_waits_out_a_lapsed_lease_and_resumes(
    watcher: ConfigWatcher,
) -> None:
    attempts = 0
    sync_all = watcher.sync_all

    async def counted_sync() -> int:
        nonlocal attempts
        attempts += 1
        if attempts > SPINNING:  # fail the test rather than hang it in a spin
            raise AssertionError(f"the sync loop tried {attempts} times: it spins")
        return await sync_all()

    watcher.sync_all = counted_sync  # type: ignore[method-assign]
    lease = watcher.lease
    lease_task = asyncio.create_task(lease.run())
    sync_task = asyncio.create_task(keep_in_sync(watcher))
    try:
        await asyncio.wait_for(watcher.ready.wait(), 15)
        # The renewal cannot run (its task starved), so the lease runs out locally while
        # it still counts as active, and the loop is asked to sync (a reconnect, say).
        await cancelled(lease_task)
        await wait_until(lambda: asyncio.sleep(0, not lease.held()), timeout=TTL + 1)
        assert lease.active
        before, cpu_before = attempts, time.process_time()
        watcher.out_of_sync.set()
        await asyncio.sleep(LAPSE)
        tries, cpu = attempts - before, time.process_time() - cpu_before
        assert 1 <= tries <= 6, f"{tries} sync attempts in a {LAPSE} s lapse"
        assert cpu < LAPSE / 2, f"{cpu:.2f} s of CPU in a {LAPSE} s lapse"
        assert not sync_task.done()

        # The lease loop runs again: it gives the lapsed lease up, takes it back, and the
        # sync loop publishes again within its next backoff step.
        watcher.ready.clear()
        lease_task = asyncio.create_task(lease.run())
        await asyncio.wait_for(watcher.ready.wait(), 10)
        assert lease.held() and (lease.losses, lease.acquisitions) == (1, 2)
        assert watcher.publisher.links.fenced and watcher.publisher.links.known
    finally:
        await cancelled(sync_task)
        await cancelled(lease_task)


class SlowEncoder:
    """The records' JSON encoder, taking `SLOW_ENCODE` seconds of CPU a record."""

    def __init__(self, encoder: msgspec.json.Encoder) -> None:
        self.encoder = encoder

    def encode(self, value: object) -> bytes:
        until = time.perf_counter() + SLOW_ENCODE
        while time.perf_counter() < until:
            pass
        return self.encoder.encode(value)


async def test_a_long_first_import_keeps_the_lease_throughout(
    start_system: StartSystem,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write(data_dir / "users" / "bob" / "links.toml", links_toml(SLOW_LINKS))
    monkeypatch.setattr(publisher, "json_encoder", SlowEncoder(publisher.json_encoder))
    monkeypatch.setattr(publisher, "SLICE", 25)  # 20 ms a slice, a renewal spans a few
    started = time.monotonic()
    system = await start_system("config-watcher", lease_ttl=TTL)
    took = time.monotonic() - started
    lease = system.app[CONFIG_WATCHER].lease
    print(f"first import of {SLOW_LINKS} slow links published in {took:.2f} s")
    assert took > SLOW_LINKS * SLOW_ENCODE  # the slow diff did run
    assert "config.lease_lost" not in caplog.text
    assert (lease.losses, lease.acquisitions) == (0, 1) and lease.held()
    assert "c1999" in system.app[CONFIG_WATCHER].publisher.links.known


async def test_readiness_and_writes_follow_the_lease_running_out_locally(
    start_system: StartSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal stops (its task cannot run) and nothing calls `lose()`: `/-/ready` turns
    503 when the lease runs out locally, no write goes out, and all is back once renewed."""
    system = await start_system("config-watcher", lease_ttl=TTL)
    watcher = system.app[CONFIG_WATCHER]
    lease = watcher.lease

    async def ready() -> bool:
        return (await system.get("/-/ready"))[0] == 200

    await wait_until(ready, timeout=10)
    renew, resumed = lease._renew, asyncio.Event()

    async def stalled_renewal(kv: object) -> None:
        await resumed.wait()
        await renew(kv)  # type: ignore[arg-type]

    monkeypatch.setattr(lease, "_renew", stalled_renewal)
    # At most one renewal more (one under way), then none: 503 within the lease's validity.
    await wait_until(lambda: asyncio.sleep(0, lease.valid_until < time.monotonic()), TTL * 2)
    assert not await ready()
    assert lease.active and lease.losses == 0  # the lease loop gave nothing up yet
    last_renewal = lease.valid_until - TTL * VALID_SHARE
    record = b'{"code":"late","owner":"bob","type":"redirect","url":"https://late/"}'
    with pytest.raises(NotActiveError):
        await watcher.publisher.links.write({kv_key("late"): record}, [])
    assert kv_key("late") not in watcher.publisher.links.known
    assert time.monotonic() - last_renewal < TTL + 1.0  # still the same lapse

    resumed.set()  # renewed: the lapsed lease is given up, taken back, the state published
    await wait_until(lambda: asyncio.sleep(0, lease.held() and watcher.ready.is_set()), 10)
    assert await ready()
    assert (lease.losses, lease.acquisitions) == (1, 2)
