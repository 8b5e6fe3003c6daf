"""A redirector front on a loopback port without the rest of the system, for front tests.

`serve_front` serves a `LinkTable` the test holds (and changes as the KV mirror would, with
`apply` and `replace_all`) through a `FastPathServer` whose hand-over target is a real
aiohttp server answering "aiohttp <method> <path>"; everything it started is closed on exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
from aiohttp import web

from trunk8_redirector.fastpath import FastPathServer
from trunk8_redirector.stats import RedirectorStats
from trunk8_redirector.table import LinkTable
from trunk8_shared.records import LinkRecord
from trunk8_shared.settings import Settings


@dataclass
class Front:
    """A front on a loopback port, handing over to a real aiohttp server that echoes."""

    port: int
    front: FastPathServer


async def echo(request: web.Request) -> web.Response:
    """aiohttp's answer: which request it parsed."""
    return web.Response(text=f"aiohttp {request.method} {request.raw_path}")


def link_value(
    code: str, url: str, kind: str = "redirect", expires_at: float | None = None
) -> bytes:
    """A links-bucket value, as the config-watcher writes it."""
    record = LinkRecord(code=code, owner="a", type=kind, url=url, path="x", expires_at=expires_at)
    return msgspec.json.encode(record)


@asynccontextmanager
async def serve_front(table: LinkTable, settings: Settings | None = None) -> AsyncIterator[Front]:
    """Serve `table` on a free loopback port until the block ends."""
    fast = FastPathServer(table, RedirectorStats(), settings or Settings(header_timeout=5.0))
    app = web.Application()
    app.router.add_get("/-/healthz", echo)
    handler = web.Server(echo, logger=fast.server_log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(fast.serve(app, handler), "127.0.0.1", 0)
    try:
        yield Front(server.sockets[0].getsockname()[1], fast)
    finally:
        server.close()
        await fast.close()
        await handler.shutdown(1.0)
        await server.wait_closed()


class RecordingTransport:
    """Just enough of an asyncio transport to call a front's protocol directly: it keeps
    what it is given."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:
        self.written.extend(map(bytes, lines))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default
