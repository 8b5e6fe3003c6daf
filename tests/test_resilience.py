"""Bad and unusual data directories: nothing good is lost, nothing bad is served."""

from __future__ import annotations

import shutil
from pathlib import Path

import nats
from conftest import RunningSystem, StartSystem, bucket_keys, wait_until, write

from trunk8_shared.buckets import ensure_bucket
from trunk8_shared.records import LINKS_BUCKET


async def _served(system: RunningSystem, code: str, url: str) -> bool:
    return await system.location(f"/{code}") == url


async def _gone(system: RunningSystem, code: str) -> bool:
    return (await system.get(f"/{code}"))[0] == 404


async def test_unreadable_links_file_is_skipped_and_others_still_load(
    system: RunningSystem, data_dir: Path
) -> None:
    (data_dir / "users" / "dave").mkdir()
    (data_dir / "users" / "dave" / "links.toml").mkdir()  # a folder where a file should be
    write(
        data_dir / "users" / "erin" / "links.toml",
        '[links.erin1]\ntype = "redirect"\nurl = "https://erin.example"\n',
    )
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + "\n[users.dave]\n\n[users.erin]\n")
    await wait_until(lambda: _served(system, "erin1", "https://erin.example"))
    values = await system.metrics()
    assert values["trunk8_config_watcher_rejected_files"] == 1
    assert values["trunk8_config_watcher_users"] == 5
    # Later edits keep flowing.
    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, bob.read_text().replace("/docs", "/docs2"))
    await wait_until(lambda: _served(system, "docs", "https://example.com/docs2"))


async def test_file_rejected_at_start_keeps_its_published_links(
    start_system: StartSystem, data_dir: Path
) -> None:
    first = await start_system()
    assert await first.location("/docs") == "https://example.com/docs"
    await first.http.close()
    await first.server.stop()

    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, bob.read_text() + '\n[links.evil]\ntype = "redirect"\nurl = "https://x"\n[')
    second = await start_system()
    assert await second.location("/docs") == "https://example.com/docs"
    assert await _gone(second, "evil")
    assert (await second.metrics())["trunk8_config_watcher_last_reload_successful"] == 0

    # Once fixed, the file is what is served.
    write(bob, '[links.docs]\ntype = "redirect"\nurl = "https://example.com/fixed"\n')
    await wait_until(lambda: _served(second, "docs", "https://example.com/fixed"))
    await wait_until(lambda: _gone(second, "report"))


async def test_stale_and_unreadable_bucket_values_are_cleaned_up(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    kv = await ensure_bucket(bus_client.jetstream(), LINKS_BUCKET)
    await kv.put("oldcode", b'{"v":1,"code":"oldcode"}')  # an older schema, missing fields
    await kv.put("gone", b'{"v":1,"code":"gone","owner":"zed","type":"redirect","url":"https://z"}')
    system = await start_system()
    assert await system.location("/docs") == "https://example.com/docs"
    assert await _gone(system, "gone")
    assert sorted(await bucket_keys(kv)) == ["carol1", "docs", "ex_redirect", "ex_text", "report"]


async def test_user_folder_moved_in_and_out(system: RunningSystem, data_dir: Path) -> None:
    users = data_dir / "users" / "users.toml"
    write(users, users.read_text() + "\n[users.dave]\n")
    staging = data_dir.parent / "staging"
    write(
        staging / "links.toml", '[links.dave1]\ntype = "redirect"\nurl = "https://dave.example"\n'
    )

    async def dave_listed() -> bool:
        return (await system.metrics())["trunk8_config_watcher_users"] == 4

    await wait_until(dave_listed)  # dave is known before his folder moves in
    shutil.move(staging, data_dir / "users" / "dave")
    await wait_until(lambda: _served(system, "dave1", "https://dave.example"))
    shutil.move(data_dir / "users" / "bob", data_dir.parent / "bob-away")
    await wait_until(lambda: _gone(system, "docs"))


async def test_removing_a_user_forgets_its_rejected_file(
    system: RunningSystem, data_dir: Path
) -> None:
    write(data_dir / "users" / "carol" / "links.toml", "[links.broken\n")

    async def flagged() -> bool:
        return (await system.metrics())["trunk8_config_watcher_rejected_files"] == 1

    await wait_until(flagged)
    users = data_dir / "users" / "users.toml"
    text = users.read_text()
    write(users, text[: text.index("[users.carol]")])

    async def cleared() -> bool:
        values = await system.metrics()
        return (
            values["trunk8_config_watcher_rejected_files"] == 0
            and values["trunk8_config_watcher_last_reload_successful"] == 1
        )

    await wait_until(cleared)


async def test_emptied_users_file_is_rejected(system: RunningSystem, data_dir: Path) -> None:
    users = data_dir / "users" / "users.toml"
    users.write_bytes(b"")  # a truncate-then-write caught half way

    async def flagged() -> bool:
        return (await system.metrics())["trunk8_config_watcher_last_reload_successful"] == 0

    await wait_until(flagged)
    assert await system.location("/docs") == "https://example.com/docs"


async def test_deleted_bucket_is_rebuilt_and_followed_again(
    system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    await bus_client.jetstream().delete_key_value(LINKS_BUCKET)
    bob = data_dir / "users" / "bob" / "links.toml"
    write(bob, bob.read_text().replace("/docs", "/docs3"))
    # The watcher rewrites the whole bucket; the redirector notices its consumer is gone.
    await wait_until(lambda: _served(system, "docs", "https://example.com/docs3"), timeout=15)
    kv = await ensure_bucket(bus_client.jetstream(), LINKS_BUCKET)
    assert "carol1" in await bucket_keys(kv)
    assert await system.location("/carol1") == "https://example.org/carol"
