"""File, markdown and html links in a redirector that runs without the files service.

In the all-in-one shape the files service answers these links in the same process. When
the redirector runs alone, `TRUNK8_FILES_MODE` says where they go instead, by a fallback
handler in the shared `/{code}` dispatcher (a regular handler, if any, still wins):

- `accel`: an empty 200 with `X-Accel-Redirect: <files_accel_prefix><code>`; nginx
  replays the request (method, Range and validators included) on its internal location
  that proxies to the files service (`deploy/nginx/trunk8-files.conf`);
- `redirect`: a 307 to `<files_public_url>/f/<code>`, the files service's public address;
- `in-process` (the default): nothing is added; if no files service shares the process,
  such links answer the not-found page and a warning at start says so.

The query string is kept either way. This module never imports the files service.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web

from trunk8_shared.dispatch import setup_code_routes
from trunk8_shared.settings import Settings

log = logging.getLogger("trunk8.redirector")

HANDED_OFF_TYPES = ("file", "markdown", "html")


def _with_query(target: str, request: web.Request) -> str:
    query = request.rel_url.raw_query_string
    return f"{target}?{query}" if query else target


def accel_target(prefix: str, code: str) -> str:
    """The internal URI nginx serves `code` from (the code percent-encoded as UTF-8)."""
    return prefix.rstrip("/") + "/" + quote(code, safe="")


def public_target(base_url: str, code: str) -> str:
    """The files service's public URL for `code`."""
    return base_url.rstrip("/") + "/f/" + quote(code, safe="")


def setup_handoff(app: web.Application, settings: Settings) -> None:
    """Register what answers file-type links when no files service is in this process."""
    routes = setup_code_routes(app)
    if settings.files_mode == "in-process":

        async def warn_if_unanswered(app: web.Application) -> None:
            if not all(routes.answers_type(kind) for kind in HANDED_OFF_TYPES):
                log.warning(
                    "no files service in this process: file, markdown and html links "
                    "answer 404 (set TRUNK8_FILES_MODE=accel or redirect)"
                )

        app.on_startup.append(warn_if_unanswered)
        return

    async def accel(request: web.Request, code: str) -> web.StreamResponse:
        target = _with_query(accel_target(settings.files_accel_prefix, code), request)
        return web.Response(status=200, headers={"X-Accel-Redirect": target})

    async def redirect(request: web.Request, code: str) -> web.StreamResponse:
        target = _with_query(public_target(settings.files_public_url, code), request)
        return web.Response(status=307, headers={"Location": target})

    handler = accel if settings.files_mode == "accel" else redirect
    for kind in HANDED_OFF_TYPES:
        routes.add_handler(kind, handler, fallback=True)
