"""A first import publishes its snapshot before its writes; readers load it at once.

A real nats-server: the config-watcher imports a links file large enough to be a bulk
write (the threshold lowered), and the test holds the write back after its first step.
A redirector joining then is ready from the snapshot although the bucket is behind it,
follows the bucket only after the snapshot's revision, and checks that the writes landed
as planned; a change made meanwhile is served once the import is through, and a bulk
write that fails makes the reader load again rather than keep a state nobody wrote.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8_config_watcher import publisher
from trunk8_redirector.app import REDIRECTOR
from trunk8_shared.kvmirror import read_bucket
from trunk8_shared.records import LINKS_BUCKET, link_decoder
from trunk8_shared.snapshot import TABLE_OBJECT, read_snapshot_tag, stored_plan

LINKS = 400


def links_toml(links: dict[str, str]) -> str:
    return "".join(
        f'[links.{code}]\ntype = "redirect"\nurl = "{url}"\n' for code, url in links.items()
    )


class HeldWrite:
    """Holds the links bucket's bulk write back after its first step (or fails that step)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_once: bool = False) -> None:
        self.steps = 0
        self.fail_once = fail_once
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        monkeypatch.setattr(publisher, "EARLY_SNAPSHOT_WRITES", 100)
        monkeypatch.setattr(publisher, "PROGRESS_STEP", 100)
        self.real = publisher.write_batched
        monkeypatch.setattr(publisher, "write_batched", self.write)

    async def write(self, nc: Any, bucket: str, writes: Any, *args: Any) -> Any:
        if bucket == LINKS_BUCKET and len(writes) == 100:
            self.steps += 1
            if self.steps == 2:
                self.held.set()
                await self.release.wait()
                if self.fail_once:
                    return [], [(writes[0][0], TimeoutError("held back by the test"))]
        return await self.real(nc, bucket, writes, *args)


async def bucket_state(bus_client: nats.NATS) -> dict[str, str | None]:
    entries = await read_bucket(bus_client.jetstream(), LINKS_BUCKET, timeout=10)
    return {key: link_decoder.decode(value).url for key, value in entries.items()}


def table_state(system: RunningSystem, codes: list[str]) -> dict[str, str | None]:
    table = system.app[REDIRECTOR].table
    found: dict[str, str | None] = {}
    for code in codes:
        answer = table.lookup(code)
        if answer.status == 302:
            found[code] = dict(answer.headers)["Location"]
    return found


async def join_during_import(
    start_system: StartSystem, bus_client: nats.NATS, held: HeldWrite
) -> RunningSystem:
    """Start the watcher, wait until its write is held, join a redirector; check it loaded."""
    await start_system("config-watcher", wait_ready=False)
    await asyncio.wait_for(held.held.wait(), 15)
    js = bus_client.jetstream()
    tag = await read_snapshot_tag(js, TABLE_OBJECT)
    assert tag is not None
    bucket = await (await js.key_value(LINKS_BUCKET)).status()
    assert bucket.stream_info.state.last_seq < tag[0]  # the snapshot is ahead of the bucket
    joined = await start_system("redirector", wait_ready=False)
    mirror = joined.app[REDIRECTOR].mirror
    await asyncio.wait_for(mirror.ready.wait(), 15)
    assert mirror.pending is not None and mirror.revision == tag[0]
    assert (mirror.snapshot_loads, mirror.snapshot_fallbacks) == (1, 0)
    return joined


async def test_a_redirector_joining_a_first_import_serves_its_snapshot_at_once(
    start_system: StartSystem,
    data_dir: Path,
    bus_client: nats.NATS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = HeldWrite(monkeypatch)
    carol = data_dir / "users" / "carol" / "links.toml"
    links = {f"imp{i}": f"https://import.example/{i}" for i in range(LINKS)}
    write(carol, links_toml(links))
    joined = await join_during_import(start_system, bus_client, held)
    codes = [*links, "nosuchcode"]
    # Served while most of the import is still unwritten.
    assert table_state(joined, codes) == links

    # A change made during the import: applied after it, never reverted by it.
    changed = dict(links)
    changed["imp1"] = "https://changed.example/1"
    del changed["imp2"]
    write(carol, links_toml(changed))
    held.release.set()

    mirror = joined.app[REDIRECTOR].mirror
    await wait_until(lambda: _holds(table_state(joined, codes) == changed), timeout=15)
    await wait_until(lambda: _holds(mirror.pending is None), timeout=15)
    bucket = await bucket_state(bus_client)
    assert {key: url for key, url in bucket.items() if key.startswith("imp")} == changed
    assert table_state(joined, codes) == changed
    assert mirror.resyncs == 1  # kept the early snapshot: never loaded again
    js = bus_client.jetstream()
    await wait_until(lambda: _plan_is(js, ""), timeout=15)  # settled once landed


async def test_a_bulk_write_that_fails_makes_readers_load_again(
    start_system: StartSystem,
    data_dir: Path,
    bus_client: nats.NATS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = HeldWrite(monkeypatch, fail_once=True)
    carol = data_dir / "users" / "carol" / "links.toml"
    links = {f"imp{i}": f"https://import.example/{i}" for i in range(LINKS)}
    write(carol, links_toml(links))
    joined = await join_during_import(start_system, bus_client, held)
    changed = dict(links)
    changed["imp3"] = "https://changed.example/3"
    del changed["imp4"]
    write(carol, links_toml(changed))
    held.release.set()  # that step fails; the next full sync writes the rest

    mirror = joined.app[REDIRECTOR].mirror
    codes = [*links, "nosuchcode"]
    await wait_until(lambda: _holds(mirror.resyncs >= 2 and mirror.pending is None), timeout=20)
    await wait_until(lambda: _holds(table_state(joined, codes) == changed), timeout=15)
    bucket = await bucket_state(bus_client)
    assert {key: url for key, url in bucket.items() if key.startswith("imp")} == changed


async def _plan_is(js: Any, plan: str) -> bool:
    return await stored_plan(js, TABLE_OBJECT) == plan


async def _holds(condition: bool) -> bool:
    return condition
