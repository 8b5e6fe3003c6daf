"""Hand edits of the data directory reach the redirector through the config-watcher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8_shared.records import (
    RELOAD_SUBJECT,
    AnyEvent,
    ConfigError,
    DuplicateCode,
    LinkCreated,
    LinkDeleted,
    LinkRejected,
    LinksBulkChanged,
    LinkUpdated,
    ReloadRequest,
    UserCreated,
    event_decoder,
    json_encoder,
    reload_reply_decoder,
)


class EventTap:
    """Collects every event published on the bus while a test runs."""

    def __init__(self) -> None:
        self.events: list[AnyEvent] = []

    async def handle(self, msg: nats.aio.msg.Msg) -> None:
        self.events.append(event_decoder.decode(msg.data))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def tap(bus_client: nats.NATS) -> AsyncIterator[EventTap]:
    collector = EventTap()
    sub = await bus_client.subscribe("trunk8.events.>", cb=collector.handle)
    await bus_client.flush()
    yield collector
    await sub.unsubscribe()


def bob_links(data_dir: Path) -> Path:
    return data_dir / "users" / "bob" / "links.toml"


async def metric(system: RunningSystem, name: str) -> float:
    _, _, text = await system.get("/-/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exported")


async def test_added_link_is_served(system: RunningSystem, data_dir: Path, tap: EventTap) -> None:
    path = bob_links(data_dir)
    write(
        path,
        path.read_text() + '\n[links.fresh]\ntype = "redirect"\nurl = "https://fresh.example"\n',
    )

    async def served() -> bool:
        return await system.location("/fresh") == "https://fresh.example"

    await wait_until(served)
    await wait_until(lambda: _true(tap.of(LinkCreated)))
    assert [e.link.code for e in tap.of(LinkCreated)] == ["fresh"]
    assert tap.of(LinkCreated)[0].link.owner == "bob"


async def _true(value: object) -> bool:
    return bool(value)


async def test_changed_and_deleted_links_follow_the_file(
    system: RunningSystem, data_dir: Path, tap: EventTap
) -> None:
    path = bob_links(data_dir)
    write(path, path.read_text().replace("https://example.com/docs", "https://example.com/v2"))

    async def changed() -> bool:
        return await system.location("/docs") == "https://example.com/v2"

    await wait_until(changed)
    write(path, "[links]\n")

    async def deleted() -> bool:
        return (await system.get("/docs"))[0] == 404

    await wait_until(deleted)
    await wait_until(lambda: _true(tap.of(LinkDeleted)))
    assert [e.link.url for e in tap.of(LinkUpdated)] == ["https://example.com/v2"]
    assert {e.code for e in tap.of(LinkDeleted)} == {"docs", "report"}


async def test_malformed_toml_keeps_the_last_good_links(
    system: RunningSystem, data_dir: Path, tap: EventTap
) -> None:
    path = bob_links(data_dir)
    errors_before = await metric(system, "trunk8_config_watcher_reload_errors_total")
    write(path, path.read_text() + "\n[links.broken\n")
    await wait_until(lambda: _true(tap.of(ConfigError)))
    error = tap.of(ConfigError)[0]
    assert error.file == "users/bob/links.toml"
    assert "TOML syntax error" in error.reason
    assert await system.location("/docs") == "https://example.com/docs"
    assert await metric(system, "trunk8_config_watcher_reload_errors_total") == errors_before + 1
    assert await metric(system, "trunk8_config_watcher_last_reload_successful") == 0

    # Fixing the file brings the new state and clears the flag.
    write(path, '[links.docs]\ntype = "redirect"\nurl = "https://example.com/fixed"\n')

    async def fixed() -> bool:
        return await system.location("/docs") == "https://example.com/fixed"

    await wait_until(fixed)
    assert await metric(system, "trunk8_config_watcher_last_reload_successful") == 1


async def test_an_invalid_link_is_refused_alone(
    system: RunningSystem, data_dir: Path, tap: EventTap, bus_client: nats.NATS
) -> None:
    path = bob_links(data_dir)
    write(
        path,
        '[links.docs]\ntype = "redirect"\nurl = "https://example.com/new"\n'
        '[links.evil]\ntype = "redirect"\nurl = "javascript:alert(1)"\n'
        '[links.settings]\ntype = "redirect"\nurl = "https://example.com/reserved"\n'
        '[links.odd]\ntype = "video"\nurl = "https://example.com/v"\n'
        '[links.escape]\ntype = "file"\npath = "../../users.toml"\n',
    )

    async def new_docs_served() -> bool:
        return await system.location("/docs") == "https://example.com/new"

    await wait_until(new_docs_served)
    await wait_until(lambda: _true(len(tap.of(LinkRejected)) == 4))
    reasons = {e.code: e.reason for e in tap.of(LinkRejected)}
    assert set(reasons) == {"evil", "settings", "odd", "escape"}
    assert "URL scheme 'javascript' is not allowed" in reasons["evil"]
    assert "reserved word" in reasons["settings"]
    assert {e.file for e in tap.of(LinkRejected)} == {"users/bob/links.toml"}
    assert (await system.get("/evil"))[0] == 404
    assert tap.of(ConfigError) == []  # the file itself is fine
    assert await metric(system, "trunk8_config_watcher_rejected_entries") == 4
    assert await metric(system, "trunk8_config_watcher_last_reload_successful") == 1
    _, _, body = await system.get("/-/rejected")
    view = msgspec.json.decode(body)
    assert view["files"] == []
    assert {(e["file"], e["entry"]) for e in view["entries"]} == {
        ("users/bob/links.toml", code) for code in reasons
    }

    # A reload request for the file names what it refuses (the admin shows it after a save).
    reply = reload_reply_decoder.decode(
        (
            await bus_client.request(
                RELOAD_SUBJECT, json_encoder.encode(ReloadRequest(path="users/bob/links.toml"))
            )
        ).data
    )
    assert reply.error is None and set(reply.refused) == set(reasons)

    # Fixing one entry serves it and takes it off the list; the others stay refused.
    write(path, path.read_text().replace("javascript:alert(1)", "https://example.com/ok"))

    async def fixed() -> bool:
        return await system.location("/evil") == "https://example.com/ok"

    await wait_until(fixed)
    assert await metric(system, "trunk8_config_watcher_rejected_entries") == 3


async def test_new_user_with_existing_links_file_is_served(
    system: RunningSystem, data_dir: Path, tap: EventTap, bus_client: nats.NATS
) -> None:
    write(
        data_dir / "users" / "dave" / "links.toml",
        '[links.dave1]\ntype = "redirect"\nurl = "https://dave.example"\n',
    )
    await _reload(bus_client, "users/dave/links.toml")  # read now, whatever the watch does
    assert (await system.get("/dave1"))[0] == 404  # folders not in users.toml are ignored
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + '\n[users.dave]\ndisplay_name = "Dave"\n')

    async def served() -> bool:
        return await system.location("/dave1") == "https://dave.example"

    await wait_until(served)
    await wait_until(lambda: _true(tap.of(UserCreated)))
    assert [e.user.username for e in tap.of(UserCreated)] == ["dave"]


async def test_removed_user_loses_links(system: RunningSystem, data_dir: Path) -> None:
    users = data_dir / "users" / "users.toml"
    text = users.read_text()
    write(users, text[: text.index("[users.carol]")])

    async def gone() -> bool:
        return (await system.get("/carol1"))[0] == 404

    await wait_until(gone)
    assert await system.location("/docs") == "https://example.com/docs"


async def test_duplicate_codes_first_user_in_users_toml_wins(
    start_system: StartSystem, data_dir: Path, tap: EventTap
) -> None:
    # carol is listed after bob: bob's `docs` wins and the clash is reported.
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links.docs]\ntype = "redirect"\nurl = "https://carol.example/docs"\n',
    )
    system = await start_system()
    assert await system.location("/docs") == "https://example.com/docs"
    await wait_until(lambda: _true(tap.of(DuplicateCode)))
    duplicate = tap.of(DuplicateCode)[0]
    assert (duplicate.code, duplicate.winner, duplicate.shadowed) == ("docs", "bob", ["carol"])
    assert await metric(system, "trunk8_config_watcher_duplicate_codes") == 1

    # When bob drops it, carol's takes over.
    write(bob_links(data_dir), "[links]\n")

    async def carol_serves() -> bool:
        return await system.location("/docs") == "https://carol.example/docs"

    await wait_until(carol_serves)


async def test_rewriting_identical_bytes_publishes_nothing(
    system: RunningSystem, data_dir: Path, tap: EventTap, bus_client: nats.NATS
) -> None:
    revision = await _reload(bus_client, None)
    path = bob_links(data_dir)
    write(path, path.read_text())  # same bytes, new mtime
    # The reply comes once this file (and any batch the watch saw) is handled.
    assert await _reload(bus_client, "users/bob/links.toml") == revision
    assert await _reload(bus_client, None) == revision
    await bus_client.flush()
    assert tap.events == []


async def _reload(client: nats.NATS, path: str | None) -> int:
    msg = await client.request(
        RELOAD_SUBJECT, json_encoder.encode(ReloadRequest(path=path)), timeout=5
    )
    reply = reload_reply_decoder.decode(msg.data)
    assert reply.error is None
    return reply.revision


async def test_reload_request_publishes_at_once_and_returns_the_revision(
    system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    before = await _reload(bus_client, None)
    path = bob_links(data_dir)
    path.write_text(
        path.read_text() + '\n[links.asked]\ntype = "redirect"\nurl = "https://asked.example"\n'
    )
    msg = await bus_client.request(
        RELOAD_SUBJECT, json_encoder.encode(ReloadRequest(path="users/bob/links.toml")), timeout=5
    )
    reply = reload_reply_decoder.decode(msg.data)
    assert reply.revision > before and reply.changed == 1

    async def served() -> bool:
        return await system.location("/asked") == "https://asked.example"

    await wait_until(served)


async def test_reload_request_reports_a_rejected_file(
    system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    write(bob_links(data_dir), "not toml at all [")
    msg = await bus_client.request(
        RELOAD_SUBJECT, json_encoder.encode(ReloadRequest(path="users/bob/links.toml")), timeout=5
    )
    reply = reload_reply_decoder.decode(msg.data)
    # Whether or not the file watch saw it first, the reply names the rejected file.
    assert reply.error is not None and reply.error.startswith("users/bob/links.toml: TOML syntax")
    assert await system.location("/docs") == "https://example.com/docs"


def test_event_wire_format_is_tagged_json() -> None:
    event = ConfigError(file="users/bob/links.toml", reason="bad")
    decoded = msgspec.json.decode(json_encoder.encode(event))
    assert decoded["type"] == "config.error" and decoded["v"] == 1


async def test_a_big_change_is_one_bulk_event(
    system: RunningSystem, data_dir: Path, tap: EventTap
) -> None:
    """An import of 1,500 links publishes one `link.bulk`, not 1,500 `link.created`."""
    many = "".join(
        f'[links.bulk{i}]\ntype = "redirect"\nurl = "https://bulk.example/{i}"\n'
        for i in range(1500)
    )
    write(data_dir / "users" / "carol" / "links.toml", many)

    async def served() -> bool:
        return await system.location("/bulk1499") == "https://bulk.example/1499"

    await wait_until(served, timeout=15)
    await wait_until(lambda: _has(tap, LinksBulkChanged))
    (bulk,) = tap.of(LinksBulkChanged)
    assert (bulk.created, bulk.deleted) == (1500, 1)  # carol's one link before went away
    assert tap.of(LinkCreated) == []
    assert await system.location("/bulk0") == "https://bulk.example/0"


async def _has(tap: EventTap, kind: type) -> bool:
    return bool(tap.of(kind))
