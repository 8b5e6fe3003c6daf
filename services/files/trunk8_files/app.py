"""The files service's factory: its link table and mirror, executors, theme, and routes.

`setup_files` adds the service to an application, alone or beside the others: a finder
and handlers for file, markdown and html links in the shared `/{code}` dispatcher (so
`/<code>` works in every shape), the `/f/<code>` and `/f/<code>/<any-name>` routes, and
the vendored stylesheets under `/static/`. Blocking disk work runs in its own small
thread pool and markdown rendering in its own thread, so slow renderings never hold
downloads up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from trunk8_shared.background import CleanupContext, task_ctx
from trunk8_shared.bus import setup_bus
from trunk8_shared.datadir import DataDir
from trunk8_shared.dispatch import setup_code_routes
from trunk8_shared.kvmirror import KvMirror
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import LINKS_BUCKET
from trunk8_shared.settings import Settings
from trunk8_shared.static import setup_static

from .handlers import ContentServer
from .links import SERVED_TYPES, FileLinks
from .metrics import FilesStats, files_registry
from .themes import GlobalMarkdownTheme

IO_THREADS = 8


class Files:
    """The files service's state in one application."""

    def __init__(self, settings: Settings, links: FileLinks, mirror: KvMirror) -> None:
        self.links = links
        self.mirror = mirror
        self.stats = FilesStats()
        self.themes = GlobalMarkdownTheme(DataDir(settings.data_path).config_file)
        self.io_executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="trunk8-files-io")
        self.content = ContentServer(
            DataDir(settings.data_path).users_dir,
            links,
            self.stats,
            self.themes,
            mirror.bus,
            self.io_executor,
        )

    def gauges(self) -> dict[str, float]:
        """Values read on each scrape."""
        return {
            "links": len(self.links),
            "links_revision": self.mirror.revision,
            "render_cache_entries": len(self.content.cache),
            "render_cache_bytes": self.content.cache.size,
        }

    async def serve_code(self, request: web.Request, code: str) -> web.StreamResponse:
        """`/<code>` for a file, markdown or html link (a `/{code}` dispatcher handler)."""
        return await self.content.serve(request, code)

    async def serve_prefixed(self, request: web.Request) -> web.StreamResponse:
        """`/f/<code>` and `/f/<code>/<any-name>`."""
        return await self.content.serve(request, request.match_info["code"])


FILES = web.AppKey("trunk8.files", Files)


def _executors_ctx(files: Files) -> CleanupContext:
    async def executors_ctx(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(files.themes.refresh)  # the theme is known before requests
        yield
        files.content.cache.close()
        files.io_executor.shutdown(wait=False, cancel_futures=True)

    return executors_ctx


def setup_files(app: web.Application, settings: Settings) -> Files:
    """Add the files service to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-files")
    links = FileLinks()
    files = Files(settings, links, KvMirror(bus, LINKS_BUCKET, links))
    app[FILES] = files
    setup_ops(app).add_service(
        "files",
        files.mirror.ready.is_set,
        files_registry(files.stats, files.content.cache, files.gauges),
    )
    code_routes = setup_code_routes(app)
    code_routes.add_finder(links.link_type)
    for link_type in sorted(SERVED_TYPES):
        code_routes.add_handler(link_type, files.serve_code)
    app.router.add_get("/f/{code}", files.serve_prefixed)
    app.router.add_get("/f/{code}/{name:.*}", files.serve_prefixed)
    setup_static(app)

    app.cleanup_ctx.append(_executors_ctx(files))
    app.cleanup_ctx.append(task_ctx("files-link-mirror", files.mirror.run))
    app.cleanup_ctx.append(task_ctx("markdown-theme", files.themes.run))
    return files


def create_app(settings: Settings) -> web.Application:
    """A stand-alone files application (`trunk8 run --target files`)."""
    app = web.Application()
    setup_files(app, settings)
    return app
