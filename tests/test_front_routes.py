"""The front and the application around it: routes it must not swallow, and its clock task.

The first path segments the front leaves to aiohttp come from the application's router
at start, so a route added by any service is never answered as a short code. The front's
once-a-second clock and timeout sweep survives a failing connection check, is restarted
if it dies, and fails readiness when it cannot be kept running.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from conftest import RunningSystem, StartSystem, wait_until
from rawhttp import (
    DOCS_URL,
    Connect,
    assert_closed,
    assert_redirect,
    read_response,
    req,
)

from trunk8.embedded_nats import EmbeddedNats
from trunk8.server import HttpServer
from trunk8.targets import build_app
from trunk8_redirector.app import REDIRECTOR
from trunk8_redirector.fastpath import FastPathProtocol, FastPathServer
from trunk8_shared.dispatch import setup_code_routes
from trunk8_shared.front import routed_segments
from trunk8_shared.ops import setup_ops
from trunk8_shared.settings import Settings


async def answer(request: web.Request) -> web.Response:
    return web.Response(text="route")


def test_routed_segments_come_from_the_router() -> None:
    app = web.Application()
    setup_ops(app)
    setup_code_routes(app)
    app.router.add_get("/add", answer)
    app.router.add_get("/f/{code}", answer)
    app.router.add_post("/edit_link/{code}", answer)
    app.router.add_get("/{code}/qr", answer)  # deeper than one segment: never a code
    app.router.add_get("/", answer)
    app.router.add_static("/static", ".")
    assert routed_segments(app.router) == {"-", "add", "f", "edit_link", "static"}


def test_a_one_segment_variable_route_is_refused() -> None:
    app = web.Application()
    setup_code_routes(app)
    app.router.add_get("/{name}.png", answer)
    with pytest.raises(ValueError, match="short code"):
        routed_segments(app.router)


async def test_a_new_route_is_never_swallowed(
    data_dir: object, nats_server: EmbeddedNats, connect: Connect
) -> None:
    """A route added to the application after the fact is answered by its handler."""
    settings = Settings(port=0, nats_url=nats_server.url, data_dir=str(data_dir))
    app = build_app("redirector", settings)
    app.router.add_get("/brand-new", answer)
    app[REDIRECTOR].table.replace_all({})  # loaded, with no links: unknown codes are 404
    server = HttpServer(app, settings)
    await server.start()
    try:
        system = RunningSystem(settings, server, aiohttp.ClientSession(), "")
        try:
            reader, writer = await connect(system)
            writer.write(req("/brand-new") + req("/bRand-new"))
            response = await read_response(reader)
            assert response.status == 200 and response.body == b"route"
            assert (await read_response(reader)).status == 404  # routes are case-sensitive
        finally:
            await system.http.close()
    finally:
        await server.stop()


def front_of(system: RunningSystem) -> FastPathServer:
    front = system.server.front
    assert isinstance(front, FastPathServer)
    return front


@pytest.mark.allow_logged_errors("timeout check failed")
async def test_a_failing_connection_check_does_not_stop_the_sweep(
    start_system: StartSystem, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await start_system(keepalive_timeout=1.0)
    broken_reader, broken_writer = await connect(system)
    broken_writer.write(req("/docs"))
    assert_redirect(await read_response(broken_reader), DOCS_URL)
    broken = next(iter(front_of(system).connections))
    check = FastPathProtocol.check_timeouts

    def failing_check(self: FastPathProtocol, now: float) -> None:
        if self is broken:
            raise RuntimeError("injected failure")
        check(self, now)

    monkeypatch.setattr(FastPathProtocol, "check_timeouts", failing_check)
    reader, writer = await connect(system)
    writer.write(req("/docs"))
    assert_redirect(await read_response(reader), DOCS_URL)
    started = time.monotonic()
    await assert_closed(reader, timeout=4.0)  # the other connection's idle timeout held
    assert time.monotonic() - started < 3.5
    await assert_closed(broken_reader, timeout=4.0)  # the broken one was dropped
    assert await system.ready()


@pytest.mark.allow_logged_errors("front clock task died")
async def test_a_dead_clock_task_is_restarted_then_fails_readiness(
    system: RunningSystem, connect: Connect
) -> None:
    front = front_of(system)
    for restarts in range(1, FastPathServer.RESTARTS + 1):
        ticker = front._ticker
        assert ticker is not None
        ticker.cancel()

        async def restarted(ticker: asyncio.Task[None] = ticker) -> bool:
            return front._ticker is not ticker and front.healthy

        await wait_until(restarted)
        assert front.restarts == restarts
        assert await system.ready()
    # Dying once more without a successful tick in between: readiness fails, loudly.
    ticker = front._ticker
    assert ticker is not None
    ticker.cancel()

    async def unready() -> bool:
        return not await system.ready()

    await wait_until(unready)
    assert not front.healthy
    # Links are still served meanwhile.
    reader, writer = await connect(system)
    writer.write(req("/docs"))
    assert_redirect(await read_response(reader), DOCS_URL)
