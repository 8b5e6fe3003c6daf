"""A warm restart parses only what changed while the service was stopped.

The config-watcher remembers what each links file was parsed into (`<data>/.trunk8/`); on
the next start an unchanged file takes its links from the published state, a changed one
is parsed, and a file whose published records are not what it produced is parsed too.
Unchanged files' links stay undecoded until something needs them; once ready, edits and
saves are applied to them as to any.
"""

from __future__ import annotations

from pathlib import Path

import nats
from conftest import RunningSystem, StartSystem, bucket_keys, wait_until, write

from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_config_watcher.parsememo import MEMO_FILE, load_memo, save_memo
from trunk8_shared.buckets import ensure_bucket
from trunk8_shared.records import (
    LINKS_BUCKET,
    RELOAD_SUBJECT,
    LinkRecord,
    ReloadRequest,
    json_encoder,
    link_decoder,
    reload_reply_decoder,
)
from trunk8_shared.snapshot import TABLE_OBJECT, read_snapshot_tag

LINK_FILES = ("users/admin/links.toml", "users/bob/links.toml", "users/carol/links.toml")


async def memo_saved(system: RunningSystem, data_dir: Path) -> None:
    """Wait until the memo on disk covers every links file and nothing is left to save."""
    watcher = system.app[CONFIG_WATCHER]
    path = data_dir / ".trunk8" / MEMO_FILE

    async def saved() -> bool:
        return (
            not watcher.reloader.memo_changed
            and path.is_file()
            and set(LINK_FILES) <= set(load_memo(path).files)
        )

    await wait_until(saved, timeout=10)


async def stop(system: RunningSystem) -> None:
    await system.http.close()
    await system.server.stop()


async def test_a_restart_parses_only_the_file_changed_while_stopped(
    start_system: StartSystem, data_dir: Path
) -> None:
    first = await start_system()
    assert first.app[CONFIG_WATCHER].reloader.remembered_files == 0  # nothing remembered yet
    await memo_saved(first, data_dir)
    await stop(first)

    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, bob.read_text().replace("https://example.com/docs", "https://example.com/v2"))
    second = await start_system()
    watcher = second.app[CONFIG_WATCHER]
    assert watcher.reloader.remembered_files == 2  # admin's and carol's files, not bob's
    assert watcher.reloader.files_parsed == 1  # bob's alone
    assert await second.location("/docs") == "https://example.com/v2"
    assert await second.location("/ex_redirect") == "https://example.com/admin"
    # The unchanged files' links stay as published, undecoded; bob's were parsed.
    assert set(watcher.catalog.remembered) == {"admin", "carol"}
    assert set(watcher.catalog.links_by_user) == {"bob"}
    await memo_saved(second, data_dir)


async def test_published_records_that_differ_make_the_file_parsed_again(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    first = await start_system()
    await memo_saved(first, data_dir)
    carol_codes = list(first.app[CONFIG_WATCHER].catalog.links_by_user["carol"])
    await stop(first)

    # While stopped, the bucket stops matching carol's file (a lost publication, a tool).
    links = await ensure_bucket(bus_client.jetstream(), LINKS_BUCKET)
    code = carol_codes[0]
    forged = LinkRecord(code=code, owner="carol", type="redirect", url="https://forged.example")
    await links.put(code, json_encoder.encode(forged))

    second = await start_system()
    watcher = second.app[CONFIG_WATCHER]
    assert watcher.reloader.remembered_files == 2  # admin's and bob's only
    served = watcher.catalog.served[code]
    assert served.url != "https://forged.example"

    async def corrected() -> bool:
        entry = await links.get(code)
        return entry.value == json_encoder.encode(served)

    await wait_until(corrected)


async def test_an_unreadable_memo_only_means_parsing_everything(
    start_system: StartSystem, data_dir: Path
) -> None:
    first = await start_system()
    await memo_saved(first, data_dir)
    await stop(first)
    (data_dir / ".trunk8" / MEMO_FILE).write_bytes(b"\xc1 not msgpack")
    second = await start_system()
    assert second.app[CONFIG_WATCHER].reloader.remembered_files == 0
    assert await second.location("/docs") == "https://example.com/docs"
    await memo_saved(second, data_dir)  # and a good one is written again


async def test_a_warm_restart_with_nothing_changed_publishes_nothing(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    first = await start_system()
    await memo_saved(first, data_dir)
    await wait_until(lambda: _true(first.app[CONFIG_WATCHER].snapshot_stored.is_set()))
    await stop(first)
    js = bus_client.jetstream()
    links = await ensure_bucket(js, LINKS_BUCKET)
    revision = (await links.status()).stream_info.state.last_seq
    tag = await read_snapshot_tag(js, TABLE_OBJECT)
    events: list[bytes] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        events.append(msg.data)

    # Link and account events only: the lease announces its holder on every start.
    subs = [
        await bus_client.subscribe(f"trunk8.events.{kind}.>", cb=collect)
        for kind in ("link", "user")
    ]
    await bus_client.flush()
    second = await start_system()
    watcher = second.app[CONFIG_WATCHER]
    await wait_until(lambda: _true(watcher.snapshot_stored.is_set()))
    assert watcher.reloader.files_parsed == 0 and watcher.reloader.remembered_files == 3
    assert await second.location("/docs") == "https://example.com/docs"
    await watcher.bus.nc.flush()
    await bus_client.flush()
    for sub in subs:
        await sub.unsubscribe()
    assert events == []
    for key in await bucket_keys(links):  # no link written again (the lease's fence aside)
        entry = await links.get(key)
        assert entry.revision is not None and entry.revision <= revision
    assert await read_snapshot_tag(js, TABLE_OBJECT) == tag  # not published again


async def _true(value: bool) -> bool:
    return value


async def warm_restarted(start_system: StartSystem, data_dir: Path) -> RunningSystem:
    """A system started, its memo saved, stopped, and started again on the same data."""
    first = await start_system()
    await memo_saved(first, data_dir)
    await stop(first)
    second = await start_system(reconcile_interval=0)  # only the file watch and saves read
    assert second.app[CONFIG_WATCHER].reloader.remembered_files == 3
    return second


async def test_once_ready_a_warm_start_serves_and_applies_edits_and_saves(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    system = await warm_restarted(start_system, data_dir)
    watcher = system.app[CONFIG_WATCHER]
    assert await system.ready()
    # Every file remembered undecoded, every link served from the start.
    assert set(watcher.catalog.remembered) == {"admin", "bob", "carol"}
    assert watcher.catalog.served == {} and watcher.catalog.link_count() == 5
    assert await system.location("/carol1") == "https://example.org/carol"
    assert await system.location("/docs") == "https://example.com/docs"

    # Right away: a hand edit of a remembered file, and a save in another one.
    carol = data_dir / "users" / "carol" / "links.toml"
    write(carol, carol.read_text().replace("example.org/carol", "example.org/edited"))
    entry = {"type": "redirect", "url": "https://example.com/saved"}
    admin = data_dir / "users" / "admin" / "links.toml"  # as the admin saves: file, then entries
    write(
        admin,
        admin.read_text() + 'saved = { type = "redirect", url = "https://example.com/saved" }\n',
    )
    request = ReloadRequest(path="users/admin/links.toml", links={"saved": entry})
    msg = await bus_client.request(RELOAD_SUBJECT, json_encoder.encode(request), timeout=5)
    assert reload_reply_decoder.decode(msg.data).changed == 1

    async def applied() -> bool:
        return (
            await system.in_step()
            and await system.location("/carol1") == "https://example.org/edited"
            and await system.location("/saved") == "https://example.com/saved"
        )

    await wait_until(applied)
    assert await system.location("/ex_redirect") == "https://example.com/admin"
    assert await system.location("/docs") == "https://example.com/docs"
    assert set(watcher.catalog.remembered) == {"bob"}  # decoded what the changes needed
    links = await ensure_bucket(bus_client.jetstream(), LINKS_BUCKET)
    for code, url in (("carol1", "https://example.org/edited"), ("saved", entry["url"])):
        published = link_decoder.decode((await links.get(code)).value or b"")
        assert published.url == url
    # A full sync later (a reconnect, say) keeps the remembered file as it is published.
    await watcher.sync_all()
    assert set(watcher.catalog.remembered) == {"bob"}
    assert await system.location("/docs") == "https://example.com/docs"


async def test_a_memo_listing_other_codes_makes_the_file_parsed(
    start_system: StartSystem, data_dir: Path
) -> None:
    first = await start_system()
    await memo_saved(first, data_dir)
    await stop(first)
    # Admin's file: its bytes' and its records' digests as remembered, its codes swapped.
    path = data_dir / ".trunk8" / MEMO_FILE
    memo = load_memo(path)
    admin = memo.files["users/admin/links.toml"]
    admin.codes.reverse()
    save_memo(path, memo)

    second = await start_system()
    watcher = second.app[CONFIG_WATCHER]
    assert watcher.reloader.remembered_files == 2 and watcher.reloader.files_parsed == 1
    assert set(watcher.catalog.links_by_user) == {"admin"}
    assert await second.location("/ex_redirect") == "https://example.com/admin"
