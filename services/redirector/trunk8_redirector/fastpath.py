"""The front HTTP/1.1 protocol: answers `GET`/`HEAD /<code>` itself, hands the rest to aiohttp.

aiohttp's full pipeline costs about three times what nginx spends on a redirect, so the
public port is served by this lean protocol first. It reads request heads, and for a plain
link request (no body, one path segment, not a routed segment) writes the prepared answer
from the `LinkTable`. Any other request, or anything it does not fully understand, makes
it hand the connection, with every byte not yet answered, to aiohttp's request handler,
which then owns the connection: admin pages, `/-/` endpoints, errors (400, 405) and bodies
all stay aiohttp's job. Keep-alive, pipelining, HTTP/1.0, `Connection` tokens, a cap on the
head size, and timeouts for idle and slow clients are handled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote_to_bytes

from trunk8_shared.codes import ROUTED_SEGMENTS

from .stats import RedirectorStats
from .table import BAD_REQUEST, NOT_FOUND, TIMEOUT, TOO_LARGE, Answer, HandOver, LinkTable

MAX_HEAD = 16384
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
# A whole link-request head in one match: GET or HEAD, a one-segment target (no controls,
# spaces, `/` or `#`; raw UTF-8 tolerated) with an optional query, HTTP/1.0 or 1.1, then
# header lines of token ":" visible text (no folding, no controls). Anything else is not
# ours and goes to aiohttp, which answers it (400, 404, 405...). The quantifiers are
# possessive: each class stops at the next delimiter anyway, so backtracking only costs.
_LINK_REQUEST = re.compile(
    rb"(GET|HEAD) /([^\x00-\x20\x7f/?#]++)(?:\?[^\x00-\x20\x7f#]*+)? HTTP/1\.([01])"
    rb"((?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*+)*+)"
)
# Headers that matter here, found in the lowercased header block (each line starts "\n").
_SPECIAL_HEADER = re.compile(
    rb"\n(host|connection|content-length|transfer-encoding|upgrade):([^\r]*)"
)
_REQUEST_STARTS = (b"GET /", b"HEAD /")

_BAD_REQUEST = Answer(
    400, (("Content-Type", "text/plain; charset=utf-8"),), b"Bad Request\n", BAD_REQUEST
)
_TIMEOUT = Answer(
    408, (("Content-Type", "text/plain; charset=utf-8"),), b"Request Timeout\n", TIMEOUT
)
_TOO_LARGE = Answer(
    431,
    (("Content-Type", "text/plain; charset=utf-8"),),
    b"Request Header Fields Too Large\n",
    TOO_LARGE,
)
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


class Clock:
    """A coarse clock ticked once a second: the Date header and the time for timeouts."""

    __slots__ = ("date_line", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.date_line = b""
        self.tick()

    def tick(self) -> None:
        """Refresh both values."""
        self.now = time.monotonic()
        self.date_line = b"Date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"


class FastPathProtocol(asyncio.Protocol):
    """One client connection, served here until it needs aiohttp."""

    __slots__ = ("buffer", "head_since", "idle_since", "server", "transport")

    def __init__(self, server: FastPathServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.idle_since = server.clock.now
        self.head_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        self.server.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        stats = self.server.stats
        stats.batches += 1
        started = 0.0 if stats.batches % stats.TIMING_INTERVAL else time.perf_counter()
        transport = self.transport
        assert transport is not None
        # The common case first: one whole link request in one read.
        if not self.buffer and data.endswith(b"\r\n\r\n") and len(data) <= MAX_HEAD:
            reply = self._answer(data, 0, len(data) - 4)
            if reply is not None:
                transport.write(reply[0])
                if started:
                    stats.latency.observe(time.perf_counter() - started)
                self.idle_since = self.server.clock.now
                if not reply[1]:
                    transport.close()
                return
        # Anything else: partial heads, pipelined requests, requests that are not ours.
        continuing = bool(self.buffer)
        if continuing:
            data = self.buffer + data
            self.buffer = b""
        answered: list[bytes] = []
        pos = 0
        size = len(data)
        keep_alive = True
        while keep_alive and pos < size:
            end = data.find(b"\r\n\r\n", pos, pos + MAX_HEAD + 4)
            if end < 0:  # incomplete, or over the cap: `_keep_partial` judges which
                break
            reply = self._answer(data, pos, end)
            if reply is None:
                self._hand_over(answered, data[pos:])
                return
            response, keep_alive = reply
            answered.append(response)
            pos = end + 4
        if answered:
            if len(answered) == 1:
                transport.write(answered[0])
            else:
                transport.writelines(answered)
            if started:
                stats.latency.observe(time.perf_counter() - started, len(answered))
            self.idle_since = self.server.clock.now
        if not keep_alive:
            transport.close()
        elif pos < size:
            self._keep_partial(data[pos:] if pos else data, continuing and not pos)

    def _keep_partial(self, rest: bytes, continuing: bool) -> None:
        """Hold an incomplete head, unless it is clearly not ours or too long."""
        if not rest.startswith(_REQUEST_STARTS) and not any(
            s.startswith(rest) for s in _REQUEST_STARTS
        ):
            self._hand_over([], rest)
        elif len(rest) > MAX_HEAD:
            self._reject(_TOO_LARGE)
        elif b"\n\n" in rest:  # bare-LF line endings: let aiohttp's parser judge them
            self._hand_over([], rest)
        else:
            if not continuing:  # a new head starts: its time limit starts too
                self.head_since = self.server.clock.now
            self.buffer = rest

    def _answer(self, data: bytes, pos: int, end: int) -> tuple[bytes, bool] | None:
        """The response to the head data[pos:end] and whether to keep the connection.

        None means the request is not a plain link request: hand it to aiohttp.
        """
        request = _LINK_REQUEST.fullmatch(data, pos, end)
        if request is None:
            return None
        method, path, minor, headers = request.groups()
        keep_alive = minor == b"1"
        connection = b""
        has_host = False
        for name, value in _SPECIAL_HEADER.findall(headers.lower()):
            if name == b"host":
                has_host = True
            elif name == b"connection":
                tokens = {token.strip() for token in value.split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens and not keep_alive:
                    keep_alive = True
                    connection = _KEEP_ALIVE
            else:
                return None  # a body or a protocol switch: aiohttp's business
        if not keep_alive:
            connection = _CLOSE
        server = self.server
        if minor == b"1" and not has_host:
            answer, keep_alive, connection = _BAD_REQUEST, False, _CLOSE  # RFC 9112 §3.2
        else:
            found = self._lookup(path)
            if found is None or type(found) is HandOver:
                return None
            answer = found
        server.stats.outcomes[answer.outcome] += 1
        tail = b"\r\n" if method == b"HEAD" else answer.tail
        return answer.head + connection + server.clock.date_line + tail, keep_alive

    def _lookup(self, path: bytes) -> Answer | None:
        """The answer for a one-segment path (`/a%2Fb` names no code); None = routed."""
        if b"%" in path:
            path = unquote_to_bytes(path)
            if b"/" in path:
                return NOT_FOUND
        try:
            code = path.decode()
        except UnicodeDecodeError:
            return NOT_FOUND
        if code in ROUTED_SEGMENTS:
            return None
        return self.server.table.lookup(code)

    def _hand_over(self, answered: list[bytes], rest: bytes) -> None:
        """Give the connection to aiohttp, after writing what was already answered."""
        transport = self.transport
        assert transport is not None
        if answered:
            transport.writelines(answered)
        self.server.connections.discard(self)
        self.server.stats.handed_over += 1
        self.transport = None
        self.buffer = b""
        handler = self.server.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if not transport.is_reading():
            # Paused by `pause_writing`: the transport will call the handler's
            # `resume_writing`, so it must know it is paused; and aiohttp does not tie
            # reading to writing, so reading must not stay paused on our account.
            handler.pause_writing()
            transport.resume_reading()
        if rest:
            handler.data_received(rest)

    def _reject(self, answer: Answer) -> None:
        """Answer an error and close the connection."""
        transport = self.transport
        if transport is None:
            return
        self.server.stats.outcomes[answer.outcome] += 1
        transport.write(answer.head + _CLOSE + self.server.clock.date_line + answer.tail)
        transport.close()
        self.buffer = b""

    def check_timeouts(self, now: float, header_timeout: float, keepalive_timeout: float) -> None:
        """Close this connection if it has been idle, or sending its head, for too long."""
        if self.transport is None:
            return
        if self.buffer:
            if now - self.head_since > header_timeout:
                self._reject(_TIMEOUT)
        elif now - self.idle_since > keepalive_timeout:
            self.transport.close()


class FastPathServer:
    """State shared by the connections of one listening socket, and its once-a-second tick."""

    def __init__(
        self,
        table: LinkTable,
        fallback: Callable[[], asyncio.Protocol],
        stats: RedirectorStats,
        header_timeout: float = 15.0,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.table = table
        self.fallback = fallback
        self.stats = stats
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.clock = Clock()
        self.connections: set[FastPathProtocol] = set()
        self._ticker: asyncio.Task[None] | None = None

    def protocol(self) -> FastPathProtocol:
        """Protocol factory for `loop.create_server`."""
        return FastPathProtocol(self)

    def start(self) -> None:
        """Start the clock and the timeout sweep."""
        self._ticker = asyncio.create_task(self._tick(), name="fastpath-clock")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.clock.tick()
            now = self.clock.now
            for connection in list(self.connections):
                connection.check_timeouts(now, self.header_timeout, self.keepalive_timeout)

    async def close(self) -> None:
        """Stop the tick and close every connection still served here."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
