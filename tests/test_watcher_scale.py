"""The config-watcher's large-scale paths, in small: progress lines, checking only the entries
that changed, and `trunk8 up` starting its services from a current snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningSystem, StartSystem, wait_until, write

from trunk8.embedded_nats import EmbeddedNats
from trunk8.watcherproc import WatcherProcess
from trunk8_config_watcher import publisher
from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_config_watcher.entrymemo import Checked, check_changed
from trunk8_config_watcher.parsememo import MEMO_FILE
from trunk8_shared.datafiles import check_link_entries
from trunk8_shared.records import LinkRecord
from trunk8_shared.settings import Settings


def links_toml(count: int, changed: dict[int, str] | None = None) -> str:
    """`count` redirect links; `changed` gives some of them another URL."""
    changed = changed or {}
    return "".join(
        f'[links.c{i}]\ntype = "redirect"\nurl = "{changed.get(i, f"https://example.com/{i}")}"\n'
        for i in range(count)
    )


class CountingCheck:
    """A `check` for `check_changed` that remembers which entries it was given."""

    def __init__(self) -> None:
        self.given: list[str] = []

    def __call__(self, entries: dict[str, Any]) -> dict[str, Checked]:
        self.given += entries
        checked = check_link_entries(entries, "users/bob/links.toml")
        results: dict[str, Checked] = dict(checked.rejected)
        for code, entry in checked.entries.items():
            results[code] = LinkRecord(code=code, owner="bob", type=entry.type, url=entry.url)
        return results


def test_a_reread_checks_only_the_entries_that_changed() -> None:
    table: dict[str, Any] = {
        f"c{i}": {"type": "redirect", "url": f"https://e.x/{i}"} for i in range(5)
    }
    table["bad"] = {"type": "redirect", "url": "javascript:alert(1)"}
    first = CountingCheck()
    links, refused, memo = check_changed(table, None, first)
    assert len(first.given) == 6 and list(refused) == ["bad"] and len(links) == 5

    edited = {code: dict(value) for code, value in table.items()}
    edited["c2"]["url"] = "https://e.x/two"
    del edited["c4"]
    edited["c9"] = {"type": "redirect", "url": "https://e.x/9"}
    again = CountingCheck()
    links2, refused2, _ = check_changed(edited, memo, again)
    assert sorted(again.given) == ["c2", "c9"]
    assert list(links2) == ["c0", "c1", "c2", "c3", "c9"]  # file order
    assert links2["c2"].url == "https://e.x/two" and links2["c0"] is links["c0"]
    assert refused2 == refused  # still refused, without being checked again


def test_a_value_of_another_kind_counts_as_a_change() -> None:
    """`1`, `1.0` and `true` compare equal in Python; as entries they differ."""
    table: dict[str, Any] = {"a": {"type": "redirect", "url": "https://e.x/", "file_size": 1}}
    _, _, memo = check_changed(table, None, CountingCheck())
    for other in (True, 1.0):
        retyped = {"a": {"type": "redirect", "url": "https://e.x/", "file_size": other}}
        check = CountingCheck()
        _, _, memo = check_changed(retyped, memo, check)
        assert check.given == ["a"]


async def test_a_hand_edit_of_a_large_file_rechecks_one_entry(
    system: RunningSystem, data_dir: Path
) -> None:
    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, links_toml(2000))
    await wait_until(lambda: _served(system, "c1999", "https://example.com/1999"), timeout=15)
    watcher = system.app[CONFIG_WATCHER]
    parsed = watcher.reloader.entry_memos[bob]
    write(bob, links_toml(2000, {7: "https://edited.example/7"}))
    await wait_until(lambda: _served(system, "c7", "https://edited.example/7"), timeout=15)
    memo = watcher.reloader.entry_memos[bob]
    unchanged = [a is b for a, b in zip(parsed.results, memo.results, strict=True)]
    assert unchanged.count(False) == 1  # only c7 was checked into a new record
    assert await system.location("/c0") == "https://example.com/0"


async def _served(system: RunningSystem, code: str, url: str) -> bool:
    return await system.location(f"/{code}") == url


async def test_a_first_load_and_a_large_publication_log_their_progress(
    start_system: StartSystem,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(data_dir / "users" / "bob" / "links.toml", links_toml(30))
    monkeypatch.setattr(publisher, "PROGRESS_STEP", 10)  # a progress line every 10 writes
    caplog.set_level(logging.INFO, logger="trunk8.config_watcher")
    await start_system()
    lines = [r.getMessage() for r in caplog.records if r.name == "trunk8.config_watcher"]
    assert any(line.startswith("first load: done: 3/3 files, 33 links in ") for line in lines)
    published = [line for line in lines if line.startswith("publishing to trunk8_links: ")]
    assert published[-1].startswith("publishing to trunk8_links: done: 33/33 writes, 33 links")
    assert "links/s)" in published[-1]


async def test_up_starts_its_services_from_a_current_snapshot(
    start_system: StartSystem, data_dir: Path, nats_server: EmbeddedNats
) -> None:
    settings = Settings(data_dir=str(data_dir), nats_url=nats_server.url)
    child = WatcherProcess(settings)
    assert not await child._warm_start()  # never imported: wait for the watcher
    system = await start_system()
    watcher = system.app[CONFIG_WATCHER]
    await wait_until(lambda: _saved(watcher, data_dir))
    assert await child._warm_start()
    users = data_dir / "users" / "users.toml"
    good = users.read_text()
    write(users, "not toml [")
    assert not await child._warm_start()  # the watcher's own error must end `up`
    write(users, good)
    write(data_dir / "users" / "bob" / "links.toml", links_toml(3))
    await wait_until(lambda: _served(system, "c2", "https://example.com/2"))
    assert await child._warm_start()  # a few changes behind: followed through the bucket
    (data_dir / ".trunk8" / MEMO_FILE).unlink()
    assert not await child._warm_start()  # not imported here (as far as we know)


async def _saved(watcher: Any, data_dir: Path) -> bool:
    return watcher.snapshot_stored.is_set() and (data_dir / ".trunk8" / MEMO_FILE).is_file()


async def test_up_does_not_wait_long_on_an_unreachable_nats(data_dir: Path) -> None:
    """The early start's check gives up quickly (nats-py alone retries for minutes)."""
    write(data_dir / ".trunk8" / MEMO_FILE, "")
    settings = Settings(data_dir=str(data_dir), nats_url="nats://token@127.0.0.1:1")
    child = WatcherProcess(settings)
    assert not await asyncio.wait_for(child._warm_start(), 10)
