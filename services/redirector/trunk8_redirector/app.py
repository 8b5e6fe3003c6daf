"""The redirector's factory: the link table, its NATS mirror, and the aiohttp routes.

Link requests are normally answered by the fast path (`fastpath.py`) before aiohttp sees
them; the `/{code}` route here answers the same table for connections that were handed
to aiohttp, so every path gives the same answer. Unmatched paths get the same friendly
404 page as unknown codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from trunk8_shared.background import task_ctx
from trunk8_shared.bus import setup_bus
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings

from .fastpath import FastPathServer, RedirectorStats
from .stats import redirector_registry
from .table import NOT_FOUND, Answer, LinkTable


class Redirector:
    """The redirector's state in one application."""

    def __init__(self, table: LinkTable, mirror: KvMirror, stats: RedirectorStats) -> None:
        self.table = table
        self.mirror = mirror
        self.stats = stats

    def front(self, fallback: Callable[[], asyncio.Protocol], settings: Settings) -> FastPathServer:
        """The fast-path front for a listening socket; `fallback` builds aiohttp handlers."""
        return FastPathServer(
            self.table,
            fallback,
            self.stats,
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
        )


REDIRECTOR = web.AppKey("trunk8.redirector", Redirector)


def _response(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body)
    for name, value in answer.headers:
        response.headers[name] = value
    return response


async def serve_link(request: web.Request) -> web.Response:
    """`GET`/`HEAD /<code>` inside aiohttp (connections that were handed over)."""
    redirector = request.app[REDIRECTOR]
    answer = redirector.table.lookup(request.match_info["code"])
    redirector.stats.outcomes[answer.outcome] += 1
    return _response(answer)


@web.middleware
async def not_found_page(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unmatched paths answer the friendly not-found page instead of aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _response(NOT_FOUND)


def setup_redirector(app: web.Application, settings: Settings) -> Redirector:
    """Add the redirector to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-redirector")
    table = LinkTable()
    mirror = KvMirror(bus, LINKS_BUCKET, table)
    redirector = Redirector(table, mirror, RedirectorStats())
    app[REDIRECTOR] = redirector
    setup_ops(app).add_service(
        "redirector", mirror.ready.is_set, redirector_registry(redirector.stats, table, mirror)
    )
    app.middlewares.append(not_found_page)
    app.router.add_get("/{code}", serve_link)

    app.cleanup_ctx.append(task_ctx("link-mirror", mirror.run))
    return redirector


def create_app(settings: Settings) -> web.Application:
    """A stand-alone redirector application (`trunk8 run --target redirector`)."""
    app = web.Application()
    setup_redirector(app, settings)
    return app
