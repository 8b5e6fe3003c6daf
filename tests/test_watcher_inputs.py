"""Hostile and unusual data files: each is its own file's rejection, never another's loss.

FIFOs, huge sparse files, emptied files, calendar-edge expiries, deep nesting, symbolic
link loops and usernames that try to leave users/ all go through real files, a real
watcher and a real redirector.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8_config_watcher.catalog import LinkCatalog
from trunk8_config_watcher.rejections import Rejections
from trunk8_config_watcher.reloader import ConfigLoadError, Reloader
from trunk8_shared.datadir import DataDir
from trunk8_shared.records import RELOAD_SUBJECT, ConfigError, UserRejected, event_decoder


def links_file(data_dir: Path, user: str) -> Path:
    return data_dir / "users" / user / "links.toml"


def redirect(code: str, url: str) -> str:
    return f'[links.{code}]\ntype = "redirect"\nurl = "{url}"\n'


async def rejected(system: RunningSystem) -> dict[str, Any]:
    _, _, body = await system.get("/-/rejected")
    view: dict[str, Any] = msgspec.json.decode(body)
    return view


async def file_reason(system: RunningSystem, file: str) -> str | None:
    for item in (await rejected(system))["files"]:
        if item["file"] == file:
            return str(item["reason"])
    return None


async def serves(system: RunningSystem, code: str, url: str) -> bool:
    return await system.location(f"/{code}") == url


async def test_a_fifo_in_place_of_a_links_file_freezes_nothing(
    system: RunningSystem, data_dir: Path
) -> None:
    bob = links_file(data_dir, "bob")
    bob.unlink()
    os.mkfifo(bob)  # no writer: a blocking open or read would hang forever
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/new"))
    await wait_until(lambda: serves(system, "carol1", "https://example.org/new"))

    async def fifo_rejected() -> bool:
        reason = await file_reason(system, "users/bob/links.toml")
        return reason == "not a regular file (a FIFO)"

    await wait_until(fifo_rejected)
    assert await system.location("/docs") == "https://example.com/docs"  # last good kept


async def test_a_file_over_the_size_cap_is_refused_from_its_size(
    start_system: StartSystem, data_dir: Path
) -> None:
    system = await start_system(max_data_file_mb=0.001)  # 1000 bytes
    bob = links_file(data_dir, "bob")
    with bob.open("r+b") as handle:
        handle.truncate(512 * 1024 * 1024)  # sparse: costs no disk, 512 MB if read
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/new"))
    await wait_until(lambda: serves(system, "carol1", "https://example.org/new"))

    async def capped() -> bool:
        reason = await file_reason(system, "users/bob/links.toml") or ""
        return "larger than the 0.001 MB cap" in reason and "TRUNK8_MAX_DATA_FILE_MB" in reason

    await wait_until(capped)
    assert await system.location("/docs") == "https://example.com/docs"


def test_reading_a_huge_sparse_file_costs_no_memory(tmp_path: Path) -> None:
    huge = tmp_path / "links.toml"
    with huge.open("wb") as handle:
        handle.truncate(512 * 1024 * 1024)
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from trunk8_shared.datafiles import DataFileError, read_data_file
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_data_file(Path({str(huge)!r}), "links.toml", 16_000_000)
        except DataFileError as err:
            print(err.reason)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0].startswith("file is larger than the 16 MB cap (536870912 bytes")
    assert int(out[1]) < 20_000  # KiB: nothing of the file was loaded


async def test_an_emptied_links_file_keeps_its_links_and_its_codes(
    start_system: StartSystem, data_dir: Path
) -> None:
    # carol also defines `docs`; bob (first in users.toml) serves it.
    write(links_file(data_dir, "carol"), redirect("docs", "https://carol.example/docs"))
    system = await start_system()
    bob = links_file(data_dir, "bob")
    bob.write_bytes(b"")  # a truncate-then-write caught half way

    async def flagged() -> bool:
        reason = await file_reason(system, "users/bob/links.toml") or ""
        return reason.startswith("file is empty")

    await wait_until(flagged)
    assert await system.location("/docs") == "https://example.com/docs"  # not carol's
    assert (await system.metrics())["trunk8_config_watcher_links"] == 4  # bob's 2 served

    # `[links]` alone is a real "no links": carol's `docs` takes over.
    bob.write_text("[links]\n")
    await wait_until(lambda: serves(system, "docs", "https://carol.example/docs"))
    assert await file_reason(system, "users/bob/links.toml") is None


async def test_calendar_edge_expiry_applies_with_the_rest_of_its_batch(
    system: RunningSystem, data_dir: Path
) -> None:
    write(
        links_file(data_dir, "bob"),
        redirect("docs", "https://example.com/moved")
        + redirect("ancient", "https://example.com/a")
        + 'expiration_date = "0001-01-01"\n'
        + redirect("eternal", "https://example.com/e")
        + 'expiration_date = "9999-12-31T23:59:59"\n',
    )
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/same-batch"))
    await wait_until(lambda: serves(system, "carol1", "https://example.org/same-batch"))
    await wait_until(lambda: serves(system, "docs", "https://example.com/moved"))
    assert await system.location("/eternal") == "https://example.com/e"
    assert (await system.get("/ancient"))[0] == 404  # expired long ago
    assert (await rejected(system)) == {"files": [], "entries": [], "entries_total": 0}


async def test_calendar_edge_expiry_at_start(start_system: StartSystem, data_dir: Path) -> None:
    write(
        links_file(data_dir, "bob"),
        redirect("ancient", "https://example.com/a") + 'expiration_date = "0001-01-01"\n',
    )
    system = await start_system()
    assert (await system.get("/ancient"))[0] == 404
    assert await system.location("/carol1") == "https://example.org/carol"


DEEP = "deep = " + "[" * 2000 + "]" * 2000 + "\n"


async def test_deep_nesting_rejects_only_its_file(
    system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    errors: list[ConfigError] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = event_decoder.decode(msg.data)
        if isinstance(event, ConfigError):
            errors.append(event)

    await bus_client.subscribe("trunk8.events.config.error", cb=on_event)
    await bus_client.flush()
    bob = links_file(data_dir, "bob")
    write(bob, bob.read_text() + DEEP)
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/same-batch"))
    await wait_until(lambda: serves(system, "carol1", "https://example.org/same-batch"))

    async def reported() -> bool:
        return any("nested too deeply" in e.reason for e in errors)

    await wait_until(reported)
    assert errors[0].file == "users/bob/links.toml"
    assert await system.location("/docs") == "https://example.com/docs"
    values = await system.metrics()
    assert values["trunk8_config_watcher_last_reload_successful"] == 0
    assert values["trunk8_config_watcher_rejected_files"] == 1


async def test_deep_nesting_at_start_is_a_rejection(
    start_system: StartSystem, data_dir: Path
) -> None:
    bob = links_file(data_dir, "bob")
    write(bob, bob.read_text() + DEEP)
    system = await start_system()
    assert await system.location("/carol1") == "https://example.org/carol"
    assert "nested too deeply" in (await file_reason(system, "users/bob/links.toml") or "")


def test_a_users_file_that_cannot_load_is_a_clear_start_error(data_dir: Path) -> None:
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + DEEP)
    data = DataDir(data_dir)
    reloader = Reloader(data, LinkCatalog(), Rejections(), max_bytes=1_000_000)
    with pytest.raises(ConfigLoadError, match="nested too deeply"):
        reloader.load_all()


async def test_a_symlink_loop_in_users_is_its_own_rejection(
    start_system: StartSystem, data_dir: Path
) -> None:
    loop = data_dir / "users" / "loop"
    loop.symlink_to(loop)  # users/loop -> users/loop
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + "\n[users.loop]\n")
    system = await start_system()
    assert await system.location("/docs") == "https://example.com/docs"
    assert await file_reason(system, "users/loop/links.toml") == (
        "cannot read the file (a symbolic link loop)"
    )
    bob = links_file(data_dir, "bob")
    write(bob, bob.read_text().replace("/docs", "/docs2"))  # the watch still works
    await wait_until(lambda: serves(system, "docs", "https://example.com/docs2"))


async def test_usernames_cannot_leave_users(
    system: RunningSystem, data_dir: Path, tmp_path: Path, bus_client: nats.NATS
) -> None:
    refused: list[UserRejected] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = event_decoder.decode(msg.data)
        if isinstance(event, UserRejected):
            refused.append(event)

    await bus_client.subscribe("trunk8.events.config.user_rejected", cb=on_event)
    await bus_client.flush()
    # ../../x from users/ is the temp folder's x/; an absolute name would be /elsewhere.
    write(tmp_path / "x" / "links.toml", redirect("escaped", "https://escaped.example"))
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "links.toml", redirect("absolute", "https://absolute.example"))
    users = data_dir / "users" / "users.toml"
    write(
        users,
        users.read_text()
        + f'\n[users."../../x"]\n\n[users."{elsewhere}"]\n\n[users."a.b"]\n'
        + '\n[users.dave]\ndisplay_name = "Dave"\n',
    )
    write(links_file(data_dir, "dave"), redirect("dave1", "https://dave.example"))
    await wait_until(lambda: serves(system, "dave1", "https://dave.example"))
    await wait_until(lambda: _true(len(refused) == 3))
    assert {e.username for e in refused} == {"../../x", str(elsewhere), "a.b"}
    assert all("Username can only contain" in e.reason for e in refused)
    assert (await system.get("/escaped"))[0] == 404
    assert (await system.get("/absolute"))[0] == 404
    values = await system.metrics()
    assert values["trunk8_config_watcher_users"] == 4  # admin, bob, carol, dave
    assert values["trunk8_config_watcher_rejected_entries"] == 3


async def test_a_file_of_many_bad_links_floods_neither_log_nor_bus(
    system: RunningSystem,
    data_dir: Path,
    bus_client: nats.NATS,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused: list[bytes] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        refused.append(msg.data)

    await bus_client.subscribe("trunk8.events.config.link_rejected", cb=on_event)
    await bus_client.flush()
    bad = "".join(
        f'[links.bad{i}]\ntype = "redirect"\nurl = "javascript:{i}"\n' for i in range(20_000)
    )
    write(links_file(data_dir, "bob"), redirect("docs", "https://example.com/kept") + bad)
    await wait_until(lambda: serves(system, "docs", "https://example.com/kept"), timeout=15)

    async def counted() -> bool:
        return (await system.metrics())["trunk8_config_watcher_rejected_entries"] == 20_000

    await wait_until(counted)
    view = await rejected(system)
    assert view["entries_total"] == 20_000 and len(view["entries"]) == 1000
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) <= 6  # five by name, then one line for the rest
    await wait_until(lambda: _true(len(refused) >= 100))
    # The reply to a reload follows every event published before it on the same connection.
    await bus_client.request(RELOAD_SUBJECT, b"", timeout=5)
    assert len(refused) == 100


async def test_oversized_entries_are_refused_and_never_wedge_publishing(
    system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    names: list[str] = []

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        event = event_decoder.decode(msg.data)
        names.append(getattr(event, "code", "") or getattr(event, "username", ""))

    await bus_client.subscribe("trunk8.events.config.link_rejected", cb=on_event)
    await bus_client.subscribe("trunk8.events.config.user_rejected", cb=on_event)
    await bus_client.flush()
    huge_code = "c" * 2_000_000  # a name NATS could not carry in an event
    write(
        links_file(data_dir, "bob"),
        redirect("docs", "https://example.com/" + "x" * 2_000_000)  # a record over 1 MB
        + redirect(huge_code, "https://example.com/")
        + redirect("small", "https://example.com/small"),
    )
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + f"\n[users.{'u' * 500}]\n")
    await wait_until(lambda: serves(system, "small", "https://example.com/small"))
    await wait_until(lambda: _true(len(names) == 3))
    assert max(len(name) for name in names) <= 201
    assert (await system.get("/docs"))[0] == 404
    reasons = {e["entry"][:4]: e["reason"] for e in (await rejected(system))["entries"]}
    assert reasons["docs"].startswith("too large to publish")
    assert reasons["uuuu"] == "Username is longer than 100 characters."
    # Publishing still flows.
    write(links_file(data_dir, "carol"), redirect("carol1", "https://example.org/after"))
    await wait_until(lambda: serves(system, "carol1", "https://example.org/after"))


async def _true(value: bool) -> bool:
    return value
