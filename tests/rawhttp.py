"""A raw HTTP/1.1 client for tests of the public port: bytes out, responses parsed by hand.

The front answers some requests itself and hands others to aiohttp, so the tests speak
HTTP byte for byte: `req` builds a request, `read_response` reads one answer (length or
chunked framing, HEAD without a body), `raw_connections` opens connections (optionally
with a tiny receive buffer) and closes them all at the end; the `connect` fixture of
conftest.py wraps it. Every read has a timeout so a hang fails fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # conftest imports this module for its `connect` fixture
    from conftest import RunningSystem

READ_TIMEOUT = 5.0
DOCS_URL = "https://example.com/docs"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[..., Awaitable[Connection]]


@dataclass
class Response:
    """One HTTP response as read from the wire."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for key, _ in self.headers if key.lower() == name)

    @property
    def by_aiohttp(self) -> bool:
        """aiohttp adds a `Server` header; the fast path does not."""
        return "aiohttp" in (self.header("Server") or "")

    @property
    def connection_tokens(self) -> set[str]:
        value = self.header("Connection") or ""
        return {token.strip().lower() for token in value.split(",") if token.strip()}


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, int, str, list[tuple[str, str]]]:
    line = await reader.readline()
    if not line:
        raise AssertionError("connection closed before a response started")
    assert line.endswith(b"\r\n"), f"status line not CRLF-terminated: {line!r}"
    version, status, reason = line[:-2].decode("latin-1").split(" ", 2)
    assert re.fullmatch(r"HTTP/1\.[01]", version), line
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        assert line.endswith(b"\r\n"), f"truncated response head at {line!r}"
        if line == b"\r\n":
            return version, int(status), reason, headers
        name, colon, value = line[:-2].decode("latin-1").partition(":")
        assert colon and name and name == name.strip(), f"bad response header line {line!r}"
        headers.append((name, value.strip(" \t")))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # trailers
            return body
        body += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"


async def read_response(
    reader: asyncio.StreamReader, head_only: bool = False, timeout: float = READ_TIMEOUT
) -> Response:
    """Read exactly one response: status line, headers, and the body its framing says.

    `head_only` is for answers to HEAD, which never have a body whatever their
    Content-Length says. Responses without a length are read to EOF.
    """

    async def read() -> Response:
        version, status, reason, headers = await _read_head(reader)
        response = Response(version, status, reason, headers, b"")
        lengths = {value for key, value in headers if key.lower() == "content-length"}
        assert len(lengths) <= 1, f"conflicting Content-Length: {lengths}"
        if head_only or 100 <= status < 200 or status in (204, 304):
            return response
        if "chunked" in (response.header("Transfer-Encoding") or "").lower():
            response.body = await _read_chunked(reader)
        elif lengths:
            response.body = await reader.readexactly(int(lengths.pop()))
        else:
            response.body = await reader.read()
        return response

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pytest.fail(f"no complete response within {timeout} s")


async def assert_closed(reader: asyncio.StreamReader, timeout: float = READ_TIMEOUT) -> None:
    """The server closes the connection (EOF, or a reset) within `timeout`, sending nothing more."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except TimeoutError:
        pytest.fail(f"connection still open after {timeout} s")
    except ConnectionResetError:
        return
    assert data == b"", f"unexpected bytes instead of EOF: {data[:200]!r}"


async def assert_silent(reader: asyncio.StreamReader, wait: float = 0.2) -> None:
    """Nothing arrives and the connection is not closed for `wait` seconds."""
    try:
        data = await asyncio.wait_for(reader.read(65536), wait)
    except TimeoutError:
        return
    pytest.fail(f"expected silence, got {data[:200]!r}" if data else "connection was closed")


def req(
    path: str = "/docs",
    method: str = "GET",
    version: str = "HTTP/1.1",
    host: bool = True,
    headers: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    """A raw request; `headers` are complete header lines without CRLF."""
    lines = [f"{method} {path} {version}"]
    if host:
        lines.append("Host: trunk8.test")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_redirect(response: Response, location: str) -> None:
    assert response.status == 302, response
    assert response.header("Location") == location
    assert response.count("Content-Length") == 1
    assert int(response.header("Content-Length") or -1) == len(response.body)
    assert location.encode() in response.body


async def assert_still_serving(system: RunningSystem) -> None:
    """A fresh connection is still answered, by the fast path, and aiohttp too."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", system.server.port), READ_TIMEOUT
    )
    try:
        writer.write(req("/docs") + req("/-/healthz", headers=("Connection: close",)))
        assert_redirect(await read_response(reader), DOCS_URL)
        health = await read_response(reader)
        assert health.status == 200 and health.by_aiohttp
        await assert_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def statuses(raw: bytes) -> list[int]:
    """The status codes of a run of responses, in order (bodies never hold status lines)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


@contextlib.asynccontextmanager
async def raw_connections() -> AsyncIterator[Connect]:
    """Open raw connections to a system's port (optionally with a tiny receive buffer);
    all are closed on exit."""
    writers: list[asyncio.StreamWriter] = []

    async def open_connection(system: RunningSystem, rcvbuf: int | None = None) -> Connection:
        sock = None
        if rcvbuf is not None:  # set before connect, so the TCP window stays small
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                address = ("127.0.0.1", system.server.port)
                loop = asyncio.get_running_loop()
                await asyncio.wait_for(loop.sock_connect(sock, address), READ_TIMEOUT)
            except BaseException:
                sock.close()
                raise
            opened = asyncio.open_connection(sock=sock)
        else:
            opened = asyncio.open_connection("127.0.0.1", system.server.port)
        reader, writer = await asyncio.wait_for(opened, READ_TIMEOUT)
        writers.append(writer)
        return reader, writer

    try:
        yield open_connection
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)
