"""The watcher never misses an edit and nothing on the bus wedges it.

An edit made before the file watch is live, an edit no watch can see (a links file that
is a symbolic link), foreign keys in the buckets, rejections while NATS is away and a
bucket that refuses writes: each against a real nats-server and real files.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import nats
import pytest
from aiohttp import web
from conftest import RunningSystem, StartSystem, bucket_keys, running_mirror, wait_until, write

from trunk8.embedded_nats import EmbeddedNats
from trunk8_redirector.table import LinkTable
from trunk8_shared.buckets import ensure_bucket
from trunk8_shared.records import (
    LINKS_BUCKET,
    USERS_BUCKET,
    ConfigError,
    LinkRecord,
    event_decoder,
    json_encoder,
)

BOB_DOCS = "https://example.com/docs"


def links_file(data_dir: Path, user: str) -> Path:
    return data_dir / "users" / user / "links.toml"


def redirect(code: str, url: str) -> str:
    return f'[links.{code}]\ntype = "redirect"\nurl = "{url}"\n'


async def serves(system: RunningSystem, code: str, url: str) -> bool:
    return await system.location(f"/{code}") == url


Hook = Callable[[web.Application], AsyncIterator[None]]


def after_first_load(hook: Hook) -> Callable[[web.Application], None]:
    """A `setup` for `start_system`: `hook` runs as a cleanup context right after the first load."""

    def insert(app: web.Application) -> None:
        names = [getattr(ctx, "__name__", "") for ctx in app.cleanup_ctx]
        app.cleanup_ctx.insert(names.index("data_dir_ctx") + 1, hook)

    return insert


async def test_an_edit_before_the_watch_is_live_is_picked_up(
    start_system: StartSystem, data_dir: Path
) -> None:
    async def edit_after_load(app: web.Application) -> AsyncIterator[None]:
        # The first load is done and no watch exists yet: nothing will report this edit.
        write(links_file(data_dir, "carol"), redirect("early", "https://early.example"))
        yield

    system = await start_system(setup=after_first_load(edit_after_load), reconcile_interval=0)
    await wait_until(lambda: serves(system, "early", "https://early.example"))


async def test_the_periodic_reconcile_finds_what_no_watch_reports(
    start_system: StartSystem, data_dir: Path, tmp_path: Path
) -> None:
    # bob's links file is a link to a file outside the watched folders.
    outside = tmp_path / "outside" / "bob-links.toml"
    write(outside, redirect("docs", BOB_DOCS))
    bob = links_file(data_dir, "bob")
    bob.unlink()
    bob.symlink_to(outside)
    system = await start_system(reconcile_interval=0.2)
    assert await system.location("/docs") == BOB_DOCS
    write(outside, redirect("docs", "https://example.com/seen"))
    await wait_until(lambda: serves(system, "docs", "https://example.com/seen"))


async def test_foreign_keys_are_removed_and_never_wedge_a_sync(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    js = bus_client.jetstream()
    links = await ensure_bucket(js, LINKS_BUCKET)
    users = await ensure_bucket(js, USERS_BUCKET)
    hijack = LinkRecord(code="docs", owner="mallory", type="redirect", url="https://evil.example")
    for key in ("=a", "=_w", "a.b", "=ZG9jcw"):  # not keys Trunk8 writes ("=ZG9jcw" is "docs")
        await links.put(key, json_encoder.encode(hijack))
    await links.put("carol1", b"not json")
    await users.put("=_w", b"{}")
    system = await start_system()
    assert await system.location("/docs") == BOB_DOCS
    assert await system.location("/carol1") == "https://example.org/carol"
    assert sorted(await bucket_keys(links)) == [
        "carol1",
        "docs",
        "ex_redirect",
        "ex_text",
        "report",
    ]
    assert sorted(await bucket_keys(users)) == ["admin", "bob", "carol"]

    # A foreign key written while the mirrors follow the bucket is skipped by them.
    await links.put("=a", json_encoder.encode(hijack))
    await links.put("x.y", b"\xff")
    carol = LinkRecord(code="carol1", owner="carol", type="redirect", url="https://new.example")
    revision = await links.put("carol1", json_encoder.encode(carol))

    async def applied() -> bool:
        values = await system.metrics()
        return values["trunk8_redirector_links_revision"] >= revision

    await wait_until(applied)
    assert await system.location("/carol1") == "https://new.example"
    assert await system.location("/docs") == BOB_DOCS


def test_the_link_table_skips_what_it_cannot_serve() -> None:
    table = LinkTable()
    record = LinkRecord(code="docs", owner="bob", type="redirect", url=BOB_DOCS)
    table.replace_all(
        {"docs": json_encoder.encode(record), "=a": b"{}", "other": json_encoder.encode(record)}
    )
    assert len(table) == 1 and "docs" in table  # "other" holds docs' record: not ours
    table.apply("=a", None)
    table.apply("=_w", json_encoder.encode(record))
    table.apply("=ZG9jcw", None)  # a spelling of "docs" that kv_key never makes
    assert table.lookup("docs").status == 302


class FlakySink:
    """A mirror sink with a bug: it fails on one key the first time it sees it."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.failed = False

    def replace_all(self, entries: dict[str, bytes]) -> None:
        self.entries = dict(entries)

    def apply(self, key: str, value: bytes | None) -> None:
        if key == "boom" and not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the sink")
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = value


@pytest.mark.allow_logged_errors(r"trunk8\.kvmirror: trunk8_links: applying an update failed")
async def test_a_failing_sink_never_raises_into_nats_and_loses_nothing(
    nats_server: EmbeddedNats, bus_client: nats.NATS
) -> None:
    links = await ensure_bucket(bus_client.jetstream(), LINKS_BUCKET)
    await links.put("kept", b"1")
    sink = FlakySink()
    async with running_mirror(nats_server.url, sink, reconnect_wait=0.2) as mirror:
        await links.put("=a", b"foreign")  # skipped: the sink never sees it
        await links.put("boom", b"2")  # the sink fails: the mirror loads the bucket again

        async def recovered() -> bool:
            return mirror.resyncs >= 2 and sink.entries == {"kept": b"1", "boom": b"2"}

        await wait_until(recovered, timeout=10)
        assert sink.failed


async def test_a_rejection_while_nats_is_away_is_published_when_it_is_back(
    system: RunningSystem, nats_server: EmbeddedNats, data_dir: Path
) -> None:
    nats_server.kill()
    await nats_server.process.wait()  # type: ignore[union-attr]
    # One batch: a rejected file, and a change whose write to NATS fails.
    write(links_file(data_dir, "bob"), "[links.broken\n")
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/meanwhile"))

    async def rejected_meanwhile() -> bool:
        values = await system.metrics()
        return values["trunk8_config_watcher_last_reload_successful"] == 0

    await wait_until(rejected_meanwhile)

    async def write_failed() -> bool:  # not merely buffered by the client: given up
        values = await system.metrics()
        return values["trunk8_config_watcher_publish_errors_total"] >= 1

    await wait_until(write_failed, timeout=30)
    restarted = EmbeddedNats(nats_server.store_dir, port=nats_server.port, token=nats_server.token)
    errors: list[ConfigError] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = event_decoder.decode(msg.data)
        if isinstance(event, ConfigError):
            errors.append(event)

    await restarted.start()
    try:
        tap = await nats.connect(restarted.url)
        try:
            await tap.subscribe("trunk8.events.config.error", cb=on_event)
            await tap.flush()

            async def published() -> bool:
                return any(e.file == "users/bob/links.toml" for e in errors)

            await wait_until(published, timeout=30)
            await wait_until(lambda: serves(system, "carol1", "https://example.org/meanwhile"))
        finally:
            await tap.close()
    finally:
        await restarted.stop()


async def test_a_failed_write_names_its_keys(
    start_system: StartSystem,
    bus_client: nats.NATS,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another tool created the bucket first, with messages too small for our records (but
    # not for the watcher's fence, a delete of 63 bytes of headers).
    await bus_client.jetstream().create_key_value(bucket=LINKS_BUCKET, max_value_size=100)
    caplog.set_level(logging.WARNING, logger="trunk8.config_watcher")
    system = await start_system(wait_ready=False)

    async def logged() -> bool:
        return any("writes to trunk8_links failed" in r.getMessage() for r in caplog.records)

    await wait_until(logged, timeout=15)
    message = next(
        r.getMessage() for r in caplog.records if "trunk8_links failed" in r.getMessage()
    )
    assert "'docs'" in message or "'carol1'" in message or "'ex_redirect'" in message
    assert "TaskGroup" not in message
    assert not await system.ready()


async def test_rejected_view_names_whole_files_and_entries(
    system: RunningSystem, data_dir: Path
) -> None:
    write(links_file(data_dir, "bob"), "[links.broken\n")
    write(
        links_file(data_dir, "carol"),
        redirect("carol1", "https://example.org/carol") + redirect("bad", "ftp://x"),
    )

    async def both_listed() -> bool:
        _, _, body = await system.get("/-/rejected")
        view = msgspec.json.decode(body)
        return bool(view["files"]) and bool(view["entries"])

    await wait_until(both_listed)
    _, headers, body = await system.get("/-/rejected")
    assert headers["Content-Type"].startswith("application/json")
    view = msgspec.json.decode(body)
    assert [f["file"] for f in view["files"]] == ["users/bob/links.toml"]
    assert view["files"][0]["reason"].startswith("TOML syntax error")
    assert view["entries"] == [
        {
            "file": "users/carol/links.toml",
            "entry": "bad",
            "reason": "URL scheme 'ftp' is not allowed (use http, https, mailto)",
        }
    ]
