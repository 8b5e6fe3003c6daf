"""Static files the product serves itself under `/static/`, so pages work offline (T8-W20).

Each folder is served under its own URL prefix by its own route, so prefixes of other
services (`/static/admin/...`) stay theirs. Built in: this library's vendored Bootswatch
stylesheets at `/static/bootswatch/<theme>/bootstrap.min.css`; a service adds more with
`add_folder`. A path never leaves its folder (symlinks resolved), only regular files are
sent, with `ETag`, `Last-Modified`, 304s and Range from aiohttp's `FileResponse`, and the
folder's own `Cache-Control`. `setup_static` is idempotent per application.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from aiohttp import web

from .pages import not_found_response

STATIC_DIR = Path(__file__).resolve().parent / "static"
BOOTSWATCH_PREFIX = "/static/bootswatch/"
# The vendored files change only with a new release of the product.
VENDORED_CACHE_CONTROL = "public, max-age=86400"


def find_static(folder: Path, relative: str) -> Path | None:
    """The regular file `relative` names inside `folder`, else None (blocking)."""
    if "\x00" in relative:
        return None
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(root, relative))
    if not resolved.startswith(root + os.sep):
        return None
    try:
        return Path(resolved) if stat.S_ISREG(os.stat(resolved).st_mode) else None
    except OSError:
        return None


class StaticFiles:
    """The folders served under `/static/`, by URL prefix."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.folders: dict[str, Path] = {}

    def add_folder(self, prefix: str, directory: Path, cache_control: str = "no-cache") -> None:
        """Serve the files of `directory` at `prefix` + their relative path."""
        if not prefix.startswith("/static/") or not prefix.endswith("/"):
            raise ValueError(f"static prefix {prefix!r} must look like /static/<name>/")
        if prefix in self.folders:
            raise ValueError(f"{prefix} is already served")
        folder = directory.resolve()
        self.folders[prefix] = folder
        headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}

        async def serve(request: web.Request) -> web.StreamResponse:
            """One file of the folder, or the not-found page."""
            found = await asyncio.to_thread(find_static, folder, request.match_info["path"])
            if found is None:
                return not_found_response()
            return web.FileResponse(found, headers=headers)

        self.app.router.add_get(prefix + "{path:.+}", serve)


STATIC = web.AppKey("trunk8.static", StaticFiles)


def setup_static(app: web.Application) -> StaticFiles:
    """The application's static folders, with the vendored Bootswatch ones, set up once."""
    if STATIC in app:
        return app[STATIC]
    files = StaticFiles(app)
    app[STATIC] = files
    files.add_folder(BOOTSWATCH_PREFIX, STATIC_DIR / "bootswatch", VENDORED_CACHE_CONTROL)
    return files
