"""Joining from a snapshot: a reader loads the published state in one piece, then follows.

A real nats-server and real files: the config-watcher publishes the link-table and records
snapshots; redirectors and the files service joining later load them and follow the bucket
from the snapshot's revision + 1. Changes made before, during and after the snapshot are
all served exactly once, deletes included; a snapshot that is missing, corrupt, of another
format or of an earlier bucket is refused and the bucket is read instead.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_files.app import FILES
from trunk8_redirector.app import REDIRECTOR
from trunk8_redirector.table import HandOver, LinkTable
from trunk8_shared import kvmirror
from trunk8_shared.location import location_header
from trunk8_shared.records import LINKS_BUCKET, RELOAD_SUBJECT, ReloadRequest, json_encoder
from trunk8_shared.snapshot import (
    RECORDS_OBJECT,
    TABLE_OBJECT,
    SnapshotError,
    TableSnapshot,
    decode_table,
    encode_snapshot,
    put_snapshot,
    read_snapshot,
    read_snapshot_tag,
    read_tagged_snapshot,
)


def links_toml(links: dict[str, str]) -> str:
    return "".join(
        f'[links.{code}]\ntype = "redirect"\nurl = "{url}"\n' for code, url in links.items()
    )


async def snapshot_at(system: RunningSystem, bus_client: nats.NATS) -> int:
    """Wait until the stored table snapshot reflects what the watcher published; its revision."""
    watcher = system.app[CONFIG_WATCHER]
    js = bus_client.jetstream()

    async def stored() -> bool:
        tag = await read_snapshot_tag(js, TABLE_OBJECT)
        return tag is not None and tag[0] == watcher.publisher.links.revision

    await wait_until(stored, timeout=10)
    return watcher.publisher.links.revision


def served_table(system: RunningSystem) -> dict[str, str]:
    """What the watcher serves, as the redirector's table should hold it."""
    served = system.app[CONFIG_WATCHER].catalog.served
    return {
        code: location_header(record.url or "") if record.type == "redirect" else record.type
        for code, record in served.items()
    }


def table_content(table: LinkTable, codes: list[str]) -> dict[str, str]:
    content: dict[str, str] = {}
    for code in codes:
        answer = table.lookup(code)
        if isinstance(answer, HandOver):
            content[code] = answer.link_type
        elif answer.status == 302:
            content[code] = dict(answer.headers)["Location"]
    return content


async def reload(bus_client: nats.NATS, path: str) -> None:
    request = json_encoder.encode(ReloadRequest(path=path))
    await bus_client.request(RELOAD_SUBJECT, request, timeout=10)


async def test_a_joining_redirector_loads_the_snapshot_and_every_later_change(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    carol = data_dir / "users" / "carol" / "links.toml"
    before = {f"b{i}": f"https://before.example/{i}" for i in range(50)}
    write(carol, links_toml(before))
    main = await start_system()
    at = await snapshot_at(main, bus_client)

    # After the snapshot: one changed, one deleted, one added (below the republish bar).
    after = dict(before)
    after["b1"] = "https://changed.example/1"
    del after["b2"]
    after["fresh"] = "https://after.example/ä"
    write(carol, links_toml(after))
    await reload(bus_client, "users/carol/links.toml")

    # During: a change sent while the redirector joins, not awaited before it starts.
    during = dict(after)
    during["b3"] = "https://during.example/3"
    del during["b4"]
    write(carol, links_toml(during))
    pending = asyncio.ensure_future(reload(bus_client, "users/carol/links.toml"))
    joined = await start_system("redirector", wait_ready=False)
    await pending
    mirror = joined.app[REDIRECTOR].mirror
    await wait_until(
        lambda: _at_least(mirror.revision, main.app[CONFIG_WATCHER].publisher.links.revision)
    )
    assert (mirror.snapshot_loads, mirror.snapshot_fallbacks) == (1, 0)
    assert main.app[CONFIG_WATCHER].publisher.links.revision > at

    expected = served_table(main)
    codes = [*expected, "b2", "b4", "nosuchcode"]
    assert table_content(joined.app[REDIRECTOR].table, codes) == expected
    assert await joined.location("/b1") == "https://changed.example/1"
    assert await joined.location("/fresh") == "https://after.example/%C3%A4"
    assert await joined.location("/b3") == "https://during.example/3"
    for gone in ("b2", "b4"):
        assert (await joined.get(f"/{gone}"))[0] == 404

    # And after joining: changes arrive one by one.
    final = dict(during)
    final["b5"] = "https://final.example/5"
    del final["b6"]
    write(carol, links_toml(final))
    await reload(bus_client, "users/carol/links.toml")
    await wait_until(lambda: _serves(joined, "/b5", "https://final.example/5"))
    assert (await joined.get("/b6"))[0] == 404


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def _serves(system: RunningSystem, path: str, url: str) -> bool:
    return await system.location(path) == url


async def test_the_files_service_joins_from_the_records_snapshot(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    main = await start_system()
    await snapshot_at(main, bus_client)
    files = await start_system("files")
    mirror = files.app[FILES].mirror
    assert mirror.snapshot_loads == 1
    watcher_served = main.app[CONFIG_WATCHER].catalog.served
    expected = {code for code, r in watcher_served.items() if r.type != "redirect"}
    assert set(files.app[FILES].links.records) == expected


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00garbage", id="corrupt"),
        pytest.param(msgspec.msgpack.encode({"v": 0, "revision": 1}), id="older-format"),
        pytest.param(None, id="missing"),
    ],
)
async def test_an_unusable_snapshot_falls_back_to_the_bucket(
    start_system: StartSystem, bus_client: nats.NATS, payload: bytes | None
) -> None:
    main = await start_system("config-watcher")
    at = await snapshot_at(main, bus_client)
    js = bus_client.jetstream()
    writer = main.app[CONFIG_WATCHER].publisher.links
    for name in (TABLE_OBJECT, RECORDS_OBJECT):
        if payload is None:
            await (await js.object_store("trunk8_snapshots")).delete(name)
        else:
            await put_snapshot(js, name, payload, at, str(writer.created))
    joined = await start_system("redirector")
    mirror = joined.app[REDIRECTOR].mirror
    assert mirror.snapshot_loads == 0 and mirror.snapshot_fallbacks == 1
    assert await joined.location("/docs") == "https://example.com/docs"
    assert (await joined.get("/nosuchcode"))[0] == 404


async def test_a_snapshot_of_an_earlier_bucket_is_refused(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    """A bucket deleted and created again: the old snapshot's links must not come back."""
    main = await start_system("config-watcher")
    at = await snapshot_at(main, bus_client)
    js = bus_client.jetstream()
    stale = TableSnapshot(
        revision=at,
        bucket_created="2001-01-01 00:00:00+00:00",
        codes=["ghost"],
        locations=["https://ghost.example/"],
        others={},
        expiring={},
    )
    await put_snapshot(js, TABLE_OBJECT, encode_snapshot(stale), at, stale.bucket_created)
    joined = await start_system("redirector")
    assert joined.app[REDIRECTOR].mirror.snapshot_fallbacks == 1
    assert (await joined.get("/ghost"))[0] == 404
    assert await joined.location("/docs") == "https://example.com/docs"


async def test_a_read_snapshot_is_referenced_by_its_reader_alone(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    """nats-py keeps the finished subscription's callback a while: at 1M links 54 MB, still
    held when a joined redirector's memory was measured."""
    main = await start_system("config-watcher")
    await snapshot_at(main, bus_client)
    payload = await read_snapshot(bus_client.jetstream(), TABLE_OBJECT)
    gc.collect()
    assert sys.getrefcount(payload) == 2  # `payload` and getrefcount's own argument
    assert decode_table(payload).codes


async def test_a_damaged_object_is_refused_by_its_digest(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    main = await start_system("config-watcher")
    await snapshot_at(main, bus_client)
    js = bus_client.jetstream()
    payload = await read_snapshot(js, TABLE_OBJECT)
    assert decode_table(payload).codes  # the real one reads back whole
    store = await js.object_store("trunk8_snapshots")
    info = await store.get_info(TABLE_OBJECT)
    # A stray chunk on the object's subject, written behind the store's back.
    await js.publish(f"$O.trunk8_snapshots.C.{info.nuid}", bytes(len(payload)))
    with pytest.raises(SnapshotError):
        await read_snapshot(js, TABLE_OBJECT)


async def test_mirrors_starting_together_share_one_read_of_the_records(
    start_system: StartSystem, bus_client: nats.NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = await start_system()
    at = await snapshot_at(main, bus_client)
    reads: list[str] = []

    async def counted(js: object, name: str) -> tuple[bytearray, str]:
        reads.append(name)
        return await read_tagged_snapshot(bus_client.jetstream(), name)

    monkeypatch.setattr(kvmirror, "read_tagged_snapshot", counted)
    js = bus_client.jetstream()
    (first, revision, _), (second, _, _) = await asyncio.gather(
        kvmirror.records_start(js, LINKS_BUCKET), kvmirror.records_start(js, LINKS_BUCKET)
    )
    assert reads == [RECORDS_OBJECT]
    assert revision == at
    assert first.snapshot is second.snapshot  # shared, and never changed...
    assert first.entries() == second.entries() and first.entries()
    first.apply(next(iter(first.entries())), None)  # ...each mirror's changes beside it
    assert len(second.entries()) == len(first.entries()) + 1
    await kvmirror.records_start(js, LINKS_BUCKET)  # asked later: read again, not kept
    assert reads == [RECORDS_OBJECT, RECORDS_OBJECT]
