"""NATS outages: links keep being served, and state catches up when NATS is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write
from nginxkit import free_port

from trunk8.embedded_nats import EmbeddedNats
from trunk8_redirector.app import REDIRECTOR


async def _hammer(system: RunningSystem, stop: asyncio.Event, results: list[int]) -> None:
    """Request a link in a loop on fresh connections until told to stop."""
    while not stop.is_set():
        async with (
            aiohttp.ClientSession() as session,
            session.get(system.base + "/docs", allow_redirects=False) as response,
        ):
            results.append(response.status)
        await asyncio.sleep(0.005)  # pacing: a steady trickle, not a flood


async def test_nats_restart_while_serving(
    system: RunningSystem, nats_server: EmbeddedNats, data_dir: Path
) -> None:
    stop = asyncio.Event()
    statuses: list[int] = []
    load = asyncio.create_task(_hammer(system, stop, statuses))

    async def load_running() -> bool:
        return len(statuses) >= 5

    await wait_until(load_running)
    reloads_before = (await system.metrics())["trunk8_config_watcher_reloads_total"]

    nats_server.kill()
    await nats_server.process.wait()  # type: ignore[union-attr]
    # While NATS is down: a link is deleted and another changed by hand.
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links.carol2]\ntype = "redirect"\nurl = "https://example.org/two"\n',
    )

    async def edit_read() -> bool:  # the watcher has the edit, but cannot publish it
        return (await system.metrics())["trunk8_config_watcher_reloads_total"] > reloads_before

    await wait_until(edit_read)
    assert await system.location("/carol1") == "https://example.org/carol"  # last state kept
    assert (await system.get("/-/healthz"))[0] == 200

    restarted = EmbeddedNats(nats_server.store_dir, port=nats_server.port, token=nats_server.token)
    await restarted.start()
    try:
        mirror = system.app[REDIRECTOR].mirror

        async def caught_up() -> bool:
            gone = (await system.get("/carol1"))[0] == 404
            moved = await system.location("/carol2") == "https://example.org/two"
            return gone and moved and mirror.resumes == 1

        await wait_until(caught_up, timeout=15)
        # The same stream came back: the redirector applied what changed, no full reload.
        assert mirror.resyncs == 1
        # The watch was re-created: a change after the restart arrives too.
        path = data_dir / "users" / "bob" / "links.toml"
        write(
            path,
            path.read_text()
            + '\n[links.after]\ntype = "redirect"\nurl = "https://after.example"\n',
        )

        async def after() -> bool:
            return await system.location("/after") == "https://after.example"

        await wait_until(after, timeout=5)
        stop.set()
        await asyncio.wait_for(load, 10)
        assert len(statuses) > 20
        assert set(statuses) == {302}, "a request failed while NATS was away"
    finally:
        stop.set()
        load.cancel()
        await restarted.stop()


async def test_not_ready_until_nats_arrives(
    start_system: StartSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    system = await start_system(nats_url=f"nats://secret@127.0.0.1:{port}", wait_ready=False)

    async def connect_failed() -> bool:  # the services have tried, and are still waiting
        return f"NATS nats://***@127.0.0.1:{port}:" in caplog.text

    await wait_until(connect_failed)
    assert (await system.get("/-/healthz"))[0] == 200
    status, _, body = await system.get("/-/ready")
    assert status == 503 and '"redirector": false' in body
    # Nothing loaded yet: no 302 invented, and no 404 for a link that may well exist.
    status, headers, _ = await system.get("/docs")
    assert (status, headers.get("Retry-After")) == (503, "1")

    late = EmbeddedNats(tmp_path / "late-nats", port=port, token="secret")
    await late.start()
    try:
        await wait_until(system.ready, timeout=15)
        assert await system.location("/docs") == "https://example.com/docs"
    finally:
        await late.stop()
