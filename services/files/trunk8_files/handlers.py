"""Answering a file, markdown or html link: the one place where asset errors become HTTP.

`ContentServer.serve` checks the code's record (expiry at this moment), finds its asset
in an executor, then answers by the record's type:

- file: `AssetResponse` (sendfile, Range, 304s) as an attachment with the display name;
- markdown: the page around the cached rendering; files over `MAX_RENDER_BYTES` (or
  that fail to render) are shown as plain text instead, so nothing is ever lost;
- html: the document as it is, or a fragment in Trunk8's wrapper, streamed.

Every answer from user content carries `X-Content-Type-Options: nosniff` and a CSP
`sandbox`, so nothing it holds runs with the site's origin (T8-W04). Missing assets,
unknown and expired codes answer the friendly not-found page; an asset path that leaves
its folder also logs and publishes a `config.error` event, once per link.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from trunk8_shared.bus import Bus
from trunk8_shared.pages import not_found_response
from trunk8_shared.records import ConfigError, LinkRecord, event_subject, json_encoder

from .assets import Asset, AssetLocator
from .errors import AssetMissing, AssetOutside
from .links import FileLinks
from .markdown import render_file
from .metrics import FilesStats
from .names import content_disposition, content_type, display_name
from .pages import (
    HTML_WRAPPER_TAIL,
    MARKDOWN_TAIL,
    html_wrapper_head,
    is_whole_document,
    markdown_head,
)
from .rendercache import RenderCache, RenderFailed
from .sendfile import AssetResponse
from .themes import MarkdownThemeSource

log = logging.getLogger("trunk8.files")

# Markdown above this size is shown as plain text: hostile input this size already takes
# seconds to render (documents people write are a few kilobytes).
MAX_RENDER_BYTES = 512 * 1024
STREAM_CHUNK = 256 * 1024
MAX_REPORTED = 10_000  # links remembered as already reported

USER_CONTENT = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
# Downloads and plain text never need to run anything.
DOWNLOAD_CSP = "sandbox"
# Rendered markdown: no scripts at all; links may open new tabs that leave the sandbox.
MARKDOWN_CSP = (
    "sandbox allow-popups allow-popups-to-escape-sandbox; "
    "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"
)
# A user's HTML page runs its scripts, but in an opaque origin: no cookies, no storage
# and no same-origin requests to this site (T8-W04).
HTML_CSP = "sandbox allow-scripts allow-forms allow-popups"


class ContentServer:
    """Serves the content of file, markdown and html links."""

    def __init__(
        self,
        users_dir: Path,
        links: FileLinks,
        stats: FilesStats,
        themes: MarkdownThemeSource,
        bus: Bus,
        io_executor: Executor,
    ) -> None:
        self.assets = AssetLocator(users_dir)
        self.links = links
        self.stats = stats
        self.themes = themes
        self.bus = bus
        self.io_executor = io_executor
        self.cache = RenderCache()
        # Links already logged (missing) or reported (outside): once each, not per request.
        self._missing: set[tuple[str, str, str]] = set()
        self._reported: set[tuple[str, str, str]] = set()

    async def serve(self, request: web.Request, code: str) -> web.StreamResponse:
        """`/<code>` and `/f/<code>[/<name>]` for file, markdown and html links."""
        record = self.links.live(code)
        if record is None:
            self.stats.count("unknown", 404)
            return not_found_response()
        try:
            # On the loop: a few metadata calls cost microseconds, a thread hop under load
            # up to the GIL switch interval (5 ms), which would blow the page budget.
            asset = self.assets.locate(record.owner, record.path or "")
        except AssetOutside as err:
            self.stats.assets_refused += 1
            await self._report(record, err.reason)
            self.stats.count(record.type, 404)
            return not_found_response()
        except AssetMissing as err:
            if _first_time(self._missing, (record.owner, record.code, record.path or "")):
                log.info("link %r of %s: %s", record.code, record.owner, err.reason)
            self.stats.count(record.type, 404)
            return not_found_response()
        if record.type == "file":
            response = await self._download(request, record, asset)
        elif record.type == "markdown":
            response = await self._markdown(request, record, asset)
        else:
            response = await self._html(request, record, asset)
        self.stats.count(record.type, response.status)
        return response

    async def _download(
        self, request: web.Request, record: LinkRecord, asset: Asset
    ) -> web.StreamResponse:
        name = display_name(record)
        headers = {
            **USER_CONTENT,
            "Content-Type": content_type(name),
            "Content-Disposition": content_disposition(name),
            "Content-Security-Policy": DOWNLOAD_CSP,
        }
        return await self._send_asset(request, asset, headers)

    async def _send_asset(
        self, request: web.Request, asset: Asset, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send the file itself now (sendfile), counting it as a download in flight."""
        response = AssetResponse(asset.path, headers=headers, on_sent=self.stats.sent)
        self.stats.downloads_in_flight += 1
        try:
            await response.prepare(request)
        except ConnectionError as err:  # the client left; the connection is already gone
            log.debug("download of %s cut short: %s", asset.path, err)
        finally:
            self.stats.downloads_in_flight -= 1
        return response

    async def _markdown(
        self, request: web.Request, record: LinkRecord, asset: Asset
    ) -> web.StreamResponse:
        if asset.stat.st_size > MAX_RENDER_BYTES:
            return await self._plain_text(request, asset)
        try:
            body = await self.cache.get(asset.identity, render_file, asset.path)
        except RenderFailed as err:
            log.info("markdown of link %r sent as text: %s", record.code, err)
            return await self._plain_text(request, asset)
        theme = self.themes.theme_for(request)
        page = b"".join((markdown_head(theme, record.path or ""), body, MARKDOWN_TAIL))
        self.stats.sent(len(page))
        headers = {**USER_CONTENT, "Content-Security-Policy": MARKDOWN_CSP}
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)

    async def _plain_text(self, request: web.Request, asset: Asset) -> web.StreamResponse:
        headers = {
            **USER_CONTENT,
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Security-Policy": DOWNLOAD_CSP,
        }
        return await self._send_asset(request, asset, headers)

    async def _html(
        self, request: web.Request, record: LinkRecord, asset: Asset
    ) -> web.StreamResponse:
        headers = {
            **USER_CONTENT,
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": HTML_CSP,
        }
        loop = asyncio.get_running_loop()
        source = await loop.run_in_executor(self.io_executor, open, asset.path, "rb")
        try:
            start = await loop.run_in_executor(self.io_executor, source.read, STREAM_CHUNK)
            if is_whole_document(start):
                head, tail = b"", b""
            else:
                head, tail = html_wrapper_head(record.path or ""), HTML_WRAPPER_TAIL
            size = asset.stat.st_size
            response = web.StreamResponse(headers=headers)
            response.content_length = len(head) + size + len(tail)
            try:
                await self._stream(request, response, source, (head, start, tail), size)
            except ConnectionError as err:  # the client left, or the file shrank
                log.debug("html page %s cut short: %s", asset.path, err)
                if request.transport is not None:
                    request.transport.abort()
            return response
        finally:
            await loop.run_in_executor(self.io_executor, source.close)

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        source: BinaryIO,
        parts: tuple[bytes, bytes, bytes],
        size: int,
    ) -> None:
        """Send head, the file's `size` bytes (the first already read), then tail."""
        head, chunk, tail = parts
        await response.prepare(request)
        if request.method == "HEAD":
            return
        await response.write(head)
        remaining = size
        chunk = chunk[:remaining]
        loop = asyncio.get_running_loop()
        while remaining > 0:
            if not chunk:  # the head promised more than the file holds now
                raise ConnectionResetError("html asset shrank while being sent")
            await response.write(chunk)
            self.stats.sent(len(chunk))
            remaining -= len(chunk)
            if remaining > 0:
                chunk = await loop.run_in_executor(
                    self.io_executor, source.read, min(STREAM_CHUNK, remaining)
                )
        await response.write(tail)
        await response.write_eof()

    async def _report(self, record: LinkRecord, reason: str) -> None:
        """Log and publish an asset path that leaves its folder, once per link and path."""
        if not _first_time(self._reported, (record.owner, record.code, record.path or "")):
            return
        file = f"users/{record.owner}/links.toml"
        log.warning("link %r of %s not served: %s", record.code, record.owner, reason)
        event = ConfigError(file=file, reason=f"link {record.code!r}: {reason}; not served")
        try:
            await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))
        except Exception as err:  # NATS away: the log line above still says it
            log.debug("could not publish the refused asset: %s", err)


def _first_time(seen: set[tuple[str, str, str]], key: tuple[str, str, str]) -> bool:
    """Remember `key`; True if it was new (the set is emptied when it grows too big)."""
    if key in seen:
        return False
    if len(seen) >= MAX_REPORTED:
        seen.clear()
    seen.add(key)
    return True
