"""The redirector's factory: the link table, its NATS mirror, and its share of `/{code}`.

Link requests are normally answered by the fast path (`fastpath.py`) before aiohttp sees
them; for connections handed to aiohttp, the application's one `/{code}` dispatcher
(`trunk8_shared.dispatch`) asks this table for a code's type and calls `serve_redirect`
for redirects, so every path gives the same answer.
"""

from __future__ import annotations

from aiohttp import web

from trunk8_shared.background import task_ctx
from trunk8_shared.bus import setup_bus
from trunk8_shared.dispatch import setup_code_routes
from trunk8_shared.front import FRONT
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings

from .fastpath import FastPathServer
from .handoff import setup_handoff
from .stats import RedirectorStats, redirector_registry
from .table import NOT_LOADED, Answer, LinkTable


class Redirector:
    """The redirector's state in one application."""

    def __init__(self, table: LinkTable, mirror: KvMirror, stats: RedirectorStats) -> None:
        self.table = table
        self.mirror = mirror
        self.stats = stats
        self.fronts: list[FastPathServer] = []

    def front(self, settings: Settings) -> FastPathServer:
        """The fast-path front for a listening socket (a `trunk8_shared.front.FrontFactory`)."""
        front = FastPathServer(self.table, self.stats, settings)
        self.fronts.append(front)
        return front

    def ready(self) -> bool:
        """Links loaded, and every front's clock and timeout sweep running."""
        return self.mirror.ready.is_set() and all(front.healthy for front in self.fronts)

    async def serve_redirect(self, request: web.Request, code: str) -> web.Response:
        """A redirect link inside aiohttp (connections that were handed over), or the 503
        of a table not loaded yet."""
        answer = self.table.lookup(code)
        self.stats.outcomes[answer.outcome] += 1
        return _response(answer)


REDIRECTOR = web.AppKey("trunk8.redirector", Redirector)


def _response(answer: Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body)
    for name, value in answer.headers:
        response.headers[name] = value
    return response


def setup_redirector(app: web.Application, settings: Settings) -> Redirector:
    """Add the redirector to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-redirector")
    table = LinkTable()
    mirror = KvMirror(bus, LINKS_BUCKET, table)
    redirector = Redirector(table, mirror, RedirectorStats())
    app[REDIRECTOR] = redirector
    app[FRONT] = redirector.front
    setup_ops(app).add_service(
        "redirector", redirector.ready, redirector_registry(redirector.stats, table, mirror)
    )
    code_routes = setup_code_routes(app)
    code_routes.add_finder(table.link_type)
    code_routes.add_handler("redirect", redirector.serve_redirect)
    code_routes.add_handler(NOT_LOADED, redirector.serve_redirect)  # its 503, not a 404
    setup_handoff(app, settings)  # file-type links when no files service shares the app

    app.cleanup_ctx.append(task_ctx("link-mirror", mirror.run))
    app.cleanup_ctx.append(task_ctx("link-fold", table.keep_folded))
    return redirector


def create_app(settings: Settings) -> web.Application:
    """A stand-alone redirector application (`trunk8 run --target redirector`)."""
    app = web.Application()
    setup_redirector(app, settings)
    return app
