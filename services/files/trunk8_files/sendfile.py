"""`AssetResponse`: aiohttp's `FileResponse` with real `sendfile(2)` under uvloop, never a sibling.

aiohttp's `FileResponse` does Range, conditional requests, `ETag` and `Last-Modified`, and
we keep all of that. Two things are changed, in its two hook methods:

- uvloop has no `loop.sendfile`, so aiohttp would copy every chunk through Python (a
  thread hop and a copy per 256 KiB). Here the body goes out with `os.sendfile` on a
  duplicate of the socket's descriptor (its own epoll registration, so uvloop's handle is
  untouched), waiting for writability on the loop: kernel to kernel, memory flat.
- `FileResponse` would serve `name.gz` or `name.br` instead of `name` to a client that
  accepts those encodings. In a user's assets folder such a file is another upload, not
  a compressed copy, so only the file itself is ever served.

A client that takes nothing for `SEND_TIMEOUT` seconds is disconnected.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

SEND_TIMEOUT = 60.0


class AssetResponse(web.FileResponse):
    """A file download with kernel sendfile; `on_sent(n)` is told each chunk's size."""

    def __init__(self, *args: Any, on_sent: Callable[[int], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_sent = on_sent

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Send the response; a second call (aiohttp's, after the handler) sends nothing."""
        if self.prepared:
            return await web.StreamResponse.prepare(self, request)
        # aiohttp stats and opens the file in a thread. For a local file both take
        # microseconds, while a thread hop under load waits up to the GIL switch interval
        # (5 ms) for the loop to let go: so the common case runs here, on the loop.
        try:
            _, fobj, st, encoding = self._make_response(request, "")
        except OSError:
            fobj = None
        if fobj is None:  # 304, 412, gone or not a file: aiohttp's own path answers
            return await super().prepare(request)
        try:
            return await self._prepare_open_file(request, fobj, st, encoding)
        finally:
            fobj.close()

    def _make_response(self, request: Any, accept_encoding: str) -> Any:
        # No Accept-Encoding: the precompressed-sibling lookup never runs.
        return super()._make_response(request, "")

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or transport is None or transport.get_extra_info("sslcontext"):
            return await self._copy_through_python(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)  # sends the head
        assert writer is not None
        try:
            await _flush(transport, writer)
            await send_file_range(sock.fileno(), fobj.fileno(), offset, count, self._on_sent)
        except (ConnectionError, OSError):
            transport.abort()  # the head promised more bytes: the connection cannot go on
            raise
        await web.StreamResponse.write_eof(self)
        return writer

    async def _copy_through_python(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await super()._sendfile(request, fobj, offset, count)
        self._on_sent(count)
        return writer


async def _flush(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until the transport has handed everything it buffered to the kernel."""
    if transport.get_write_buffer_size() == 0:
        return
    transport.set_write_buffer_limits(high=0)  # pause the protocol until the buffer is empty
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits()


async def send_file_range(
    sock_fd: int, file_fd: int, offset: int, count: int, on_sent: Callable[[int], None]
) -> None:
    """Send `count` bytes of a file from `offset` on a non-blocking socket, kernel to kernel."""
    loop = asyncio.get_running_loop()
    out = os.dup(sock_fd)  # our own registration: uvloop keeps its handle on `sock_fd`
    try:
        while count > 0:
            try:
                sent = os.sendfile(out, file_fd, offset, count)
            except BlockingIOError:
                await _writable(loop, out)
                continue
            if sent == 0:  # the file is shorter than it was when the head was sent
                raise ConnectionResetError("asset shrank while it was being sent")
            on_sent(sent)
            offset += sent
            count -= sent
    finally:
        os.close(out)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, SEND_TIMEOUT)
    except TimeoutError:
        raise ConnectionResetError(f"client took nothing for {SEND_TIMEOUT:.0f} s") from None
    finally:
        loop.remove_writer(fd)
