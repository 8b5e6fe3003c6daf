"""Saves answered from their entries: `trunk8.control.reload` carrying what the admin changed.

Real NATS, real files, the all-in-one system. The watcher publishes the entries at once,
checked like a file read, without parsing the file (counted by the reloader), then reads
the file soon after and lets it win.
"""

from __future__ import annotations

from pathlib import Path

import nats
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8_config_watcher.app import CONFIG_WATCHER, ConfigWatcher
from trunk8_config_watcher.catalog import LinkCatalog
from trunk8_config_watcher.rejections import Rejections
from trunk8_config_watcher.reloader import Reloader
from trunk8_shared.datadir import DataDir
from trunk8_shared.records import (
    RELOAD_SUBJECT,
    ReloadReply,
    ReloadRequest,
    json_encoder,
    reload_reply_decoder,
)

BOB_FILE = "users/bob/links.toml"
FRESH = {"type": "redirect", "url": "https://fresh.example/", "upload_date": "2025-02-01"}
FRESH_TOML = '\n[links.fresh]\ntype = "redirect"\nurl = "https://fresh.example/"\n'


async def _ask(bus_client: nats.NATS, request: ReloadRequest | bytes) -> ReloadReply:
    data = request if isinstance(request, bytes) else json_encoder.encode(request)
    msg = await bus_client.request(RELOAD_SUBJECT, data, timeout=5)
    return reload_reply_decoder.decode(msg.data)


async def _quiet_system(start_system: StartSystem) -> tuple[RunningSystem, ConfigWatcher]:
    """The system without the periodic reconcile: only saves and their follow-ups read."""
    system = await start_system(reconcile_interval=0)
    return system, system.app[CONFIG_WATCHER]


async def _served(system: RunningSystem, code: str, url: str | None) -> bool:
    return await system.in_step() and await system.location(f"/{code}") == url


async def test_reply_path_does_not_parse_and_the_file_wins_after(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    parsed = watcher.reloader.files_parsed

    # An entry the file does not hold (the file's bytes stay what the watcher last read).
    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE, links={"ghost": FRESH}))
    assert watcher.reloader.files_parsed == parsed  # answered without parsing the file
    assert reply.error is None and reply.changed == 1 and reply.refused == {}
    assert watcher.catalog.served["ghost"].url == "https://fresh.example/"
    await wait_until(lambda: _served(system, "ghost", "https://fresh.example/"))

    # The follow-up read parses the file once, although its bytes did not change, and
    # withdraws what it does not hold.
    await wait_until(lambda: _served(system, "ghost", None))
    assert watcher.reloader.files_parsed == parsed + 1


async def test_saved_entry_is_served_as_a_file_read_serves_it(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    path = data_dir / BOB_FILE
    write(path, path.read_text() + FRESH_TOML + 'upload_date = "2025-02-01"\n')

    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE, links={"fresh": FRESH}))
    assert reply.error is None and reply.changed == 1
    record = watcher.catalog.served["fresh"]
    assert (record.owner, record.url, record.upload_date) == (
        "bob",
        "https://fresh.example/",
        "2025-02-01",
    )
    await wait_until(lambda: _served(system, "fresh", "https://fresh.example/"))

    # Reading the file agrees: the same record, nothing published again.
    again = await _ask(bus_client, ReloadRequest(path=BOB_FILE))
    assert again.error is None and again.changed == 0 and again.revision == reply.revision
    assert watcher.catalog.served["fresh"] == record


async def test_bad_entry_is_refused_alone_with_its_reason(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    links = {
        "good": FRESH,
        "evil": {"type": "redirect", "url": "javascript:alert(1)"},
        "admin": FRESH,  # a reserved word
        "typo": {"type": "redirect", "url": 42},
    }
    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE, links=links))
    assert reply.error is None
    assert set(reply.refused) == {"evil", "admin", "typo"}
    assert "javascript" in reply.refused["evil"]
    assert "reserved" in reply.refused["admin"].lower()
    assert "str" in reply.refused["typo"]
    assert "good" in watcher.catalog.served and "evil" not in watcher.catalog.served
    await wait_until(lambda: _served(system, "good", "https://fresh.example/"))


async def test_hand_edit_after_the_save_wins(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    system, _ = await _quiet_system(start_system)
    path = data_dir / BOB_FILE
    write(path, path.read_text() + FRESH_TOML)  # the admin's write
    write(path, path.read_text().replace("https://fresh.example/", "https://hand.example/"))

    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE, links={"fresh": FRESH}))
    assert reply.error is None
    await wait_until(lambda: _served(system, "fresh", "https://hand.example/"))


async def test_removed_codes_stop_being_served_at_once(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    path = data_dir / BOB_FILE
    text = path.read_text()
    write(path, text[text.index("[links.report]") :])  # the admin deleted `docs`

    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE, removed=["docs"]))
    assert reply.error is None and reply.changed == 1
    assert "docs" not in watcher.catalog.served
    await wait_until(lambda: _served(system, "docs", None))


async def test_old_style_request_still_reads_the_file(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    path = data_dir / BOB_FILE
    write(path, path.read_text() + FRESH_TOML)
    parsed = watcher.reloader.files_parsed

    # As an older admin sends it: no `links`, no `removed`.
    reply = await _ask(bus_client, b'{"v":1,"path":"users/bob/links.toml"}')
    assert reply.error is None
    assert watcher.reloader.files_parsed > parsed  # read (by the watch or this request)
    await wait_until(lambda: _served(system, "fresh", "https://fresh.example/"))


async def test_entries_for_a_file_that_is_not_a_links_file_read_it_instead(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    system, watcher = await _quiet_system(start_system)
    for path in ("users/users.toml", "users/nobody/links.toml", "../outside/links.toml"):
        reply = await _ask(bus_client, ReloadRequest(path=path, links={"sneaky": FRESH}))
        assert reply.error is None and reply.changed == 0
    assert "sneaky" not in watcher.catalog.served
    assert await system.location("/sneaky") is None


def test_a_file_saved_again_after_it_was_prepared_is_not_parsed_in_the_lock(
    data_dir: Path,
) -> None:
    """Parsing happens outside the watcher's lock: a read overtaken by a save is used with
    that save replayed over it, and the file is marked to be read again."""
    reloader = Reloader(DataDir(data_dir), LinkCatalog(), Rejections(), max_bytes=1_000_000)
    reloader.load_all()
    path = data_dir / BOB_FILE
    write(path, path.read_text() + FRESH_TOML)
    prepared = reloader.prepare({path})
    # A later save (written, then applied from its entries) and a hand edit of `docs`.
    text = path.read_text().replace("fresh.example", "again.example")
    write(path, text.replace("example.com/docs", "example.com/hand"))
    again = {"type": "redirect", "url": "https://again.example/"}
    assert reloader.apply_entries(path, {"fresh": again}, []) is not None
    parsed = reloader.files_parsed

    reloader.prepared = prepared
    reloader.reload({path})
    assert reloader.files_parsed == parsed  # nothing parsed inside the lock
    assert reloader.unsettled == {path}
    assert reloader.catalog.served["fresh"].url == "https://again.example/"  # replayed

    reloader.prepared, reloader.unsettled = reloader.prepare({path}), set()
    reloader.reload({path})  # the follow-up: the file as it is now wins, hand edit included
    assert reloader.files_parsed == parsed + 1 and not reloader.unsettled
    assert reloader.catalog.served["docs"].url == "https://example.com/hand"
    assert reloader.catalog.served["fresh"].url == "https://again.example/"
    assert reloader.saves == []  # every save is in the file as read


async def test_old_style_request_reads_a_file_whose_follow_up_read_is_pending(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    _, watcher = await _quiet_system(start_system)
    await _ask(bus_client, ReloadRequest(path=BOB_FILE, links={"ghost": FRESH}))
    path = data_dir / BOB_FILE
    write(path, path.read_text() + FRESH_TOML)

    reply = await _ask(bus_client, ReloadRequest(path=BOB_FILE))  # not left to the follow-up
    assert reply.error is None
    assert watcher.catalog.served["fresh"].url == "https://fresh.example/"
