"""The front HTTP/1.1 protocol: answers `GET`/`HEAD /<code>` itself, hands the rest to aiohttp.

aiohttp's full pipeline costs about three times what nginx spends on a redirect, so the
public port is served by this lean protocol first (hand-written for the redirect budget of
docs/architecture.md, >= 0.9x nginx). It reads request heads, and for a plain link request
(no body, one path segment that no route owns) writes the prepared answer from the
`LinkTable`. Common heads are recognised in one pass by the compiled `_headscan` (its cost
hardly grows with a browser's 500-800 bytes); other heads take the careful path here,
regular expressions that give the same answer to the heads the scan takes. A complete head
that is not a plain link request makes it hand the connection, with every byte not yet
answered, to aiohttp's request handler, which then owns the connection: admin pages, `/-/`
endpoints, 405s and bodies stay aiohttp's job. Heads are held here until complete, so the
head timeout binds every request head, and a head that can never become valid (bare LF,
an HTTP/0.9 line, controls, over the caps) is answered 400/414/431 at once. Answers to
pipelined requests stop at a write-buffer cap; the rest waits unparsed until the client
reads (`resume_writing`), and a client that takes nothing for `send_timeout` is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from email.utils import formatdate
from typing import cast
from urllib.parse import unquote_to_bytes

from aiohttp import web

from trunk8_shared.front import MalformedRequests, ProtocolFactory, ServerLog, routed_segments
from trunk8_shared.settings import Settings

from .stats import RedirectorStats
from .table import (
    BAD_REQUEST,
    HIT,
    NOT_FOUND,
    TIMEOUT,
    TOO_LARGE,
    UNKNOWN,
    URI_TOO_LONG,
    Answer,
    HandOver,
    LinkTable,
)


class NothingPrepared:
    """`PreparedAnswers` that prepare nothing: every head is served by `_serve`.

    A draining front's (its answers must close their connections), and the stand-in where
    `_headscan` is not compiled.
    """

    def __init__(self, outcomes: list[int] | None = None, capacity: int = 0) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def answer(self, data: bytes, version: int) -> bytes | tuple[bytes, bytes] | None:
        """Never an answer: the caller's careful path decides."""
        return None

    def keep(self, path: bytes, response: bytes, outcome: int, version: int) -> None:
        """Keeps nothing."""

    def clear(self) -> None:
        """Nothing to drop."""


try:
    from ._headscan import PreparedAnswers, common_link_request
except ImportError:  # not compiled (no C compiler at install): every head takes the careful path

    def common_link_request(data: bytes, pos: int, end: int) -> tuple[bytes, bytes] | None:
        """Stands in for the compiled scan: no head is taken as common."""
        return None

    PreparedAnswers = NothingPrepared  # type: ignore[assignment,misc]


log = logging.getLogger("trunk8.redirector.front")

MAX_HEAD = 16384
# aiohttp's own limits (its parser's defaults, which `HttpServer` keeps): a target, a header
# line's name plus value, and the number of header lines. Beyond them aiohttp refuses a
# request, so the fast path must not answer it either.
MAX_TARGET = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128
# A request line longer than this cannot carry a target within MAX_TARGET.
MAX_REQUEST_LINE = MAX_TARGET + 32
# Answers queued per batch of pipelined requests before checking the transport's back-pressure.
WRITE_CAP = 65536
# Whole answers kept ready for the codes asked in the current second (`PreparedAnswers`):
# they hold the Date line, so they last until the clock ticks; a redirect's is about 1 KB.
PREPARED_ANSWERS = 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
# A whole link-request head in one match: GET or HEAD, a one-segment target (visible ASCII,
# no `/`, `?` or `#`) with an optional query, HTTP/1.0 or 1.1, then header lines of token ":"
# visible text (no folding, no controls), at most MAX_HEADERS lines (counted by the
# regex engine: cheaper than counting them). Anything else is not ours and goes to aiohttp,
# which answers it (400, 404, 405...). The quantifiers are possessive: each class stops at
# the next delimiter anyway, so backtracking only costs.
_LINK_REQUEST = re.compile(
    rb"(GET|HEAD) /([!-\"$-.0-9:;=>@-~]++)(?:\?[!-\"$-~]*+)? HTTP/1\.([01])"
    rb"((?:\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*+){0,%d}+)" % MAX_HEADERS
)
# A Host value (RFC 9110 §7.2): uri-host [":" port], with optional whitespace around it.
_HOST_VALUE = (
    rb"[\t ]*+(?:\[[0-9a-z:.\-_~!$&'()*+,;=]++\]|[0-9a-z\-._~!$&'()*+,;=%]*+)(?::[0-9]*+)?[\t ]*+"
)
# Headers that matter here, found in the lowercased header block (each line starts "\n"),
# as (valid Host value, ":" + Connection value, other name): a valid Host; a Connection;
# else the name of a header that makes the request aiohttp's business, of one aiohttp
# refuses twice in a head (its SINGLETON_HEADERS), or of a Host whose value is invalid.
# One pass for all, capturing no value it does not need: each costs on every request.
_SPECIAL_HEADER = re.compile(
    rb"\n(?:host:(" + _HOST_VALUE + rb")(?![^\r])|connection(:[^\r]*)"
    rb"|(host|content-(?:length|type|location|range)|transfer-encoding|upgrade|expect"
    rb"|user-agent|etag|max-forwards|server):)"
)
_NOT_OURS = frozenset((b"content-length", b"transfer-encoding", b"upgrade", b"expect"))
# What a held (incomplete) head may hold, line by line; a line that fails can never be
# part of a valid request, for us or for aiohttp, so it is answered 400 at once.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++ ++([^\x00-\x20\x7f]++) ++HTTP/\d\.\d")
_HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*+")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NO_REQUEST_YET = -1.0

_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)
_BAD_REQUEST = Answer(400, _TEXT, b"Bad Request\n", BAD_REQUEST)
_TIMEOUT = Answer(408, _TEXT, b"Request Timeout\n", TIMEOUT)
_TOO_LARGE = Answer(431, _TEXT, b"Request Header Fields Too Large\n", TOO_LARGE)
_URI_TOO_LONG = Answer(414, _TEXT, b"URI Too Long\n", URI_TOO_LONG)
# Only these are prepared: an expiring link's answer changes with the time, a 503 soon.
_PREPARED_OUTCOMES = frozenset((HIT, UNKNOWN))
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"

Reply = tuple[bytes, bool]  # the response bytes, and whether the connection stays open


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


class DrainWatch:
    """Whether a transport's unsent data shrinks; `stalled` once it has not for a while."""

    __slots__ = ("since", "unsent")

    def __init__(self) -> None:
        self.unsent = 0
        self.since = 0.0

    def progress(self) -> None:
        """The client took data (the transport's buffer went below its low-water mark)."""
        self.unsent = 0

    def stalled(self, transport: asyncio.Transport, now: float, timeout: float) -> bool:
        """True when data has waited unsent, without shrinking, for more than `timeout`."""
        unsent = transport.get_write_buffer_size()
        if not unsent:
            self.unsent = 0
        elif not self.unsent or unsent < self.unsent:
            self.unsent, self.since = unsent, now
        elif now - self.since > timeout:
            return True
        return False


class FastPathProtocol(asyncio.Protocol):
    """One client connection, served here until it needs aiohttp."""

    __slots__ = (
        "buffer",
        "drain",
        "head_since",
        "held",
        "held_at",
        "idle_since",
        "line_start",
        "request_line_seen",
        "server",
        "transport",
        "writing_paused",
    )

    def __init__(self, server: FastPathServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        # An incomplete head: its bytes, where its current line starts, and whether its
        # request line has been checked (lines are checked once each, as they complete).
        self.buffer = bytearray()
        self.line_start = 0
        self.request_line_seen = False
        # Unparsed requests held back while the client does not read its answers.
        self.held: bytes | None = None
        self.held_at = 0
        self.writing_paused = False
        self.drain = DrainWatch()
        # The first head is timed from the connection: one that never sends a byte is closed
        # after the head timeout, not the keep-alive one. Head times are read from the real
        # clock, not the coarse one: a head held for a moment must not look a tick older.
        self.head_since = time.monotonic()
        self.idle_since = _NO_REQUEST_YET

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections.add(self)
        self.server.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.transport = None
        self.held = None

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        self.writing_paused = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.drain.progress()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        held = self.held
        if held is not None:
            self.held = None
            self._serve(held, self.held_at)
            if self.transport is None or self.writing_paused or transport.is_closing():
                return
        if self.buffer:  # its head was held back by us, not slowed by the client
            self.head_since = time.monotonic()
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        server = self.server
        stats = server.stats
        timed = next(stats.timing)
        started = time.perf_counter() if timed else 0.0
        if self.buffer:
            self._add_to_head(data)
            return
        # The common case first: one whole common link request in one read. One C call scans
        # it and finds its answer if prepared (bytes), else gives its (method, path).
        found = server.prepared.answer(data, server.table.updates)
        keep_alive = True
        if not isinstance(found, bytes):
            if found is not None:
                reply = self._reply(found[0], found[1], True, b"", True)
            elif data.endswith(b"\r\n\r\n") and len(data) <= MAX_HEAD:
                reply = self._answer(data, 0, len(data) - 4)  # another head alone in the read
            else:
                reply = None
            if reply is None:  # partial heads, pipelined requests, requests that are not ours
                self._serve(data, 0, started)
                return
            found, keep_alive = reply
        transport = self.transport
        assert transport is not None
        transport.write(found)
        if timed:
            stats.latency.observe(time.perf_counter() - started)
        self.idle_since = server.clock.now
        if not keep_alive:
            transport.close()

    def _serve(self, data: bytes, pos: int, started: float = 0.0) -> None:
        """Answer the complete heads in data[pos:] until one is not ours or the client lags."""
        transport = self.transport
        assert transport is not None
        size = len(data)
        while True:
            answered: list[bytes] = []
            room = WRITE_CAP - transport.get_write_buffer_size()  # once per batch
            keep_alive = complete = True
            while pos < size:
                end = data.find(b"\r\n\r\n", pos, pos + MAX_HEAD + 4)
                if end < 0:  # incomplete, or over the cap: `_hold_head` judges which
                    complete = False
                    break
                reply = self._answer(data, pos, end)
                if reply is None:
                    self._hand_over(answered, data[pos:])
                    return
                response, keep_alive = reply
                answered.append(response)
                pos = end + 4
                room -= len(response)
                if not keep_alive or room <= 0:
                    break
            if answered:
                if len(answered) == 1:
                    transport.write(answered[0])
                else:
                    transport.writelines(answered)
                if started:
                    self.server.stats.latency.observe(time.perf_counter() - started, len(answered))
                    started = 0.0
                self.idle_since = self.server.clock.now
            if not keep_alive:
                transport.close()
                return
            if pos >= size:
                return
            if not complete:
                break
            if self.writing_paused:  # the client lags: keep the rest unparsed until it reads
                self.held, self.held_at = data, pos
                return
            # The answers went straight to the socket: carry on with the next batch.
        self._hold_head(data, pos)

    def _hold_head(self, data: bytes, pos: int) -> None:
        """Start holding the incomplete head data[pos:]."""
        if self.idle_since != _NO_REQUEST_YET:  # a new head starts: so does its time limit
            self.head_since = time.monotonic()
        self.line_start = 0
        self.request_line_seen = False
        self._add_to_head(memoryview(data)[pos:])

    def _add_to_head(self, data: bytes | memoryview) -> None:
        """Add a read to the held head; serve it once complete."""
        buffer = self.buffer
        checked = len(buffer)
        buffer += data
        if self._check_head(checked) and self.buffer is buffer and self.line_start < 0:
            # The blank line arrived: the head is complete; serve it and what follows.
            self.buffer = bytearray()
            self._serve(bytes(buffer), 0)

    def _check_head(self, new: int) -> bool:
        """Check the lines of the held head completed since byte `new`; False once rejected.

        Each byte is looked at a bounded number of times however the head is split into
        reads (no quadratic cost for a head sent byte by byte). Sets `line_start` to -1
        when the head's blank line has arrived.
        """
        buffer = self.buffer
        if _CONTROL.search(buffer, new):
            return self._reject(_BAD_REQUEST, "control character in the request head")
        start = self.line_start
        while True:
            # Bytes before `new` hold no unchecked line end: never scan them again.
            newline = buffer.find(b"\n", max(start, new))
            if newline < 0:
                break
            if newline == start or buffer[newline - 1] != 0x0D:
                return self._reject(_BAD_REQUEST, "bare LF in the request head")
            line = bytes(buffer[start : newline - 1])
            start = newline + 1
            if b"\r" in line:
                return self._reject(_BAD_REQUEST, "bare CR in the request head")
            if not self.request_line_seen:
                if not line:  # empty lines before a request line are allowed (RFC 9112 §2.2)
                    continue
                request_line = _REQUEST_LINE.fullmatch(line)
                if request_line is None:
                    return self._reject(_BAD_REQUEST, "invalid request line")
                if len(request_line.group(1)) > MAX_TARGET:
                    return self._reject(_URI_TOO_LONG, "request target too long")
                self.request_line_seen = True
            elif not line:
                if start > MAX_HEAD:
                    return self._reject(_TOO_LARGE, "request head too large")
                self.line_start = -1
                return True
            elif not _HEADER_LINE.fullmatch(line) or _field_size(line) > MAX_FIELD:
                return self._reject(_BAD_REQUEST, "invalid header line")
        self.line_start = start
        if not self.request_line_seen and len(buffer) - start > MAX_REQUEST_LINE:
            return self._reject(_URI_TOO_LONG, "request target too long")
        if len(buffer) > MAX_HEAD:
            return self._reject(_TOO_LARGE, "request head too large")
        return True

    def _answer(self, data: bytes, pos: int, end: int) -> Reply | None:
        """The response to the head data[pos:end] and whether to keep the connection.

        None means the request is not a plain link request: hand it to aiohttp.
        """
        # Most heads are common ones (see `_headscan.c`): one pass in C tells whether this
        # one is, at a cost that hardly grows with its size.
        common = common_link_request(data, pos, end)
        if common is not None:
            return self._reply(common[0], common[1], True, b"", True)
        return self._answer_carefully(data, pos, end)

    def _answer_carefully(self, data: bytes, pos: int, end: int) -> Reply | None:
        """`_answer` for any head, with every check in Python (regular expressions)."""
        request = _LINK_REQUEST.fullmatch(data, pos, end)
        if request is None:
            return None
        method, path, minor, headers = request.groups()
        if end - pos > MAX_FIELD:  # only a long head can break aiohttp's other limits
            refusal = _over_limits(request.start(3) - 7 - request.start(2), headers)
            if refusal is not None:
                return self._refuse(refusal, method, "request over aiohttp's limits")
        hosts = 0
        close = keep_alive_asked = False
        once: set[bytes] | None = None
        for _host, connection_value, name in _SPECIAL_HEADER.findall(headers.lower()):
            if connection_value:
                tokens = {token.strip() for token in connection_value[1:].split(b",")}
                if b"close" in tokens:
                    close = True  # anywhere in the head: it wins over any keep-alive
                elif b"keep-alive" in tokens:
                    keep_alive_asked = True
            elif not name:
                hosts += 1
                if hosts > 1:
                    return self._refuse(_BAD_REQUEST, method, "duplicate Host")
            elif name == b"host":
                return self._refuse(_BAD_REQUEST, method, "invalid Host")
            elif name in _NOT_OURS:
                return None  # a body, a protocol switch, an expectation: aiohttp's business
            elif once is None:
                once = {name}
            elif name in once:
                return self._refuse(_BAD_REQUEST, method, "duplicate " + name.decode())
            else:
                once.add(name)
        if minor == b"1":
            if not hosts:  # RFC 9112 §3.2
                return self._refuse(_BAD_REQUEST, method, "HTTP/1.1 request without Host")
            keep_alive, connection = not close, _CLOSE if close else b""
        else:
            keep_alive = keep_alive_asked and not close
            connection = _KEEP_ALIVE if keep_alive else _CLOSE
        return self._reply(method, path, keep_alive, connection, False)

    def _reply(
        self, method: bytes, path: bytes, keep_alive: bool, connection: bytes, common: bool
    ) -> Reply | None:
        """The answer to a valid link request; None when its code is not a redirect's.

        A `common` head's GET answer is kept prepared for the next requests of its path.
        """
        server = self.server
        version = server.table.updates
        answer = self._lookup(path)
        if answer is None or type(answer) is HandOver:
            return None
        outcome = answer.outcome
        server.stats.outcomes[outcome] += 1
        if method == b"HEAD":
            return answer.head + connection + server.clock.date_line + b"\r\n", keep_alive
        response = answer.head + connection + server.clock.date_line + answer.tail
        if common and answer.expires_at is None and outcome in _PREPARED_OUTCOMES:
            server.prepared.keep(path, response, outcome, version)
        return response, keep_alive

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
        if code in self.server.routed:
            return None
        return self.server.table.lookup(code)

    def _refuse(self, answer: Answer, method: bytes, reason: str) -> Reply:
        """An error answer to a complete head, closing the connection."""
        server = self.server
        server.stats.outcomes[answer.outcome] += 1
        server.malformed.report(reason, self._peer())
        tail = b"\r\n" if method == b"HEAD" else answer.tail
        return answer.head + _CLOSE + server.clock.date_line + tail, False

    def _reject(self, answer: Answer, reason: str | None) -> bool:
        """Answer an error to the held head, close the connection; always False."""
        transport = self.transport
        head_request = self.buffer.startswith(b"HEAD ")
        self.buffer = bytearray()
        self.line_start = 0
        if transport is None:
            return False
        server = self.server
        server.stats.outcomes[answer.outcome] += 1
        if reason is not None:
            server.malformed.report(reason, self._peer())
        tail = b"\r\n" if head_request else answer.tail
        transport.write(answer.head + _CLOSE + server.clock.date_line + tail)
        transport.close()
        return False

    def _peer(self) -> object:
        transport = self.transport
        return transport.get_extra_info("peername") if transport is not None else None

    def _hand_over(self, answered: list[bytes], rest: bytes) -> None:
        """Give the connection to aiohttp, after writing what was already answered."""
        transport = self.transport
        assert transport is not None
        if answered:
            transport.writelines(answered)
        server = self.server
        server.forget(self)
        server.stats.handed_over += 1
        server.handed[transport] = DrainWatch()
        self.transport = None
        self.buffer = bytearray()
        handler = server.fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.writing_paused:
            # The transport will call the handler's `resume_writing`, so it must know it is
            # paused; and aiohttp does not tie reading to writing.
            handler.pause_writing()
        if not transport.is_reading():
            transport.resume_reading()
        if rest:
            handler.data_received(rest)

    @property
    def busy(self) -> bool:
        """True while a request is under way: a head not complete, requests held, or none yet.

        A connection that has sent nothing yet counts: its client has just connected to send
        a request, and closing it now would fail that request.
        """
        return bool(self.buffer) or self.held is not None or self.idle_since == _NO_REQUEST_YET

    def check_timeouts(self, now: float) -> None:
        """Close this connection if it has been idle, slow or not reading for too long."""
        transport = self.transport
        if transport is None:
            return
        server = self.server
        if self.drain.stalled(transport, now, server.send_timeout):
            server.stats.send_timeouts += 1
            transport.abort()  # `close` would wait for a flush that never comes
            return
        if self.writing_paused or self.held is not None or transport.is_closing():
            return  # we hold the client back: its head and idle time do not run
        if self.buffer or self.idle_since == _NO_REQUEST_YET:
            if now - self.head_since > server.header_timeout:
                if self.buffer:
                    self._reject(_TIMEOUT, None)
                else:
                    transport.close()
        elif now - self.idle_since > server.keepalive_timeout:
            transport.close()


class DrainingProtocol(FastPathProtocol):
    """A connection of a draining front: answered as usual, then closed after each answer.

    Draining swaps the class of every connection (and of new ones) for this one, so the
    common path of a running front never checks a drain flag.
    """

    __slots__ = ()

    def _answer(self, data: bytes, pos: int, end: int) -> Reply | None:
        reply = super()._answer(data, pos, end)
        if reply is None or not reply[1]:
            return reply
        return _with_close(reply[0]), False


def _with_close(response: bytes) -> bytes:
    """A keep-alive answer's bytes with `Connection: close` instead of its own header."""
    # The Connection header, if any, is the line before Date (see `_answer`); no earlier
    # line can hold CR LF + "Date: " (Location values are normalised, without CR or LF).
    date = response.index(b"\r\nDate: ") + 2
    head = response[:date]
    if head.endswith(_KEEP_ALIVE):
        head = head[: -len(_KEEP_ALIVE)]
    return head + _CLOSE + response[date:]


def _over_limits(target_size: int, headers: bytes) -> Answer | None:
    """414 or 431 for a link-request head beyond aiohttp's limits (only long heads get here)."""
    if target_size > MAX_TARGET:
        return _URI_TOO_LONG
    if max(map(_field_size, headers.split(b"\r\n")[1:]), default=0) > MAX_FIELD:
        return _TOO_LARGE
    return None


def _field_size(line: bytes) -> int:
    """A header line's size as aiohttp counts it: name plus value without leading spaces."""
    name, _, value = line.partition(b":")
    return len(name) + len(value.lstrip(b" \t"))


class FastPathServer:
    """The redirector's front: state shared by the connections of one listening socket.

    A clock task ticks once a second and sweeps the connections for timeouts, including
    the ones handed to aiohttp for unsent data that never drains; a failure in one
    connection's check cannot stop it, and if the task dies anyway it is restarted.
    """

    RESTARTS = 5  # restarts of the clock task in a row before the front reports unhealthy

    def __init__(
        self, table: LinkTable, stats: RedirectorStats, settings: Settings | None = None
    ) -> None:
        settings = settings or Settings()
        self.table = table
        self.stats = stats
        self.malformed: MalformedRequests = stats.malformed
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.send_timeout = settings.send_timeout
        self.clock = Clock()
        self.prepared: PreparedAnswers | NothingPrepared = PreparedAnswers(
            stats.outcomes, PREPARED_ANSWERS
        )
        self.connections: set[FastPathProtocol] = set()
        self.handed: dict[asyncio.Transport, DrainWatch] = {}
        self.routed: frozenset[str] = frozenset()
        self.fallback: ProtocolFactory = asyncio.Protocol
        self.restarts = 0
        self._log = ServerLog(self.malformed)
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._protocol_class: type[FastPathProtocol] = FastPathProtocol
        # Set, while `close` waits for busy connections, once the last one is gone.
        self._all_gone: asyncio.Event | None = None

    @property
    def server_log(self) -> ServerLog:
        """aiohttp's server logger for handed-over connections (malformed requests counted)."""
        return self._log

    @property
    def healthy(self) -> bool:
        """False once the clock task has died and could not be kept running."""
        return self._ticker is None or not self._ticker.done()

    def serve(self, app: web.Application, fallback: ProtocolFactory) -> ProtocolFactory:
        """Start the clock; the protocol factory for the socket (see `trunk8_shared.front`)."""
        self.routed = routed_segments(app.router)
        self.fallback = fallback
        self._start_clock()
        return self.protocol

    def protocol(self) -> FastPathProtocol:
        """Protocol factory for `loop.create_server`."""
        return self._protocol_class(self)

    def forget(self, connection: FastPathProtocol) -> None:
        """A connection is no longer served here (closed, or handed to aiohttp)."""
        self.connections.discard(connection)
        if self._all_gone is not None and not self.connections:
            self._all_gone.set()

    def drain(self) -> None:
        """From now on, every connection closes after its next answer (`Connection: close`)."""
        self._protocol_class = DrainingProtocol
        # Prepared answers keep their connections. (uvloop keeps the bound `data_received`
        # of a connection's first class: the swap below only reaches `_answer`.)
        self.prepared = NothingPrepared()
        for connection in self.connections:
            connection.__class__ = DrainingProtocol

    def _start_clock(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="fastpath-clock")
        self._ticker.add_done_callback(self._clock_stopped)

    def _clock_stopped(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        if self.restarts >= self.RESTARTS:
            log.critical("front clock task died again (%r); readiness now fails", error)
            return
        self.restarts += 1
        log.error("front clock task died (%r); restarting it", error)
        self._start_clock()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.clock.tick()
            self.prepared.clear()  # they hold the old Date line
            self.sweep()
            self.restarts = 0

    def sweep(self) -> None:
        """Apply timeouts to every connection; one failing check cannot stop the others."""
        now = self.clock.now
        for connection in list(self.connections):
            try:
                connection.check_timeouts(now)
            except Exception:
                log.exception("timeout check failed; aborting the connection")
                self.forget(connection)  # a `close` waiting for it must hear it is gone
                if connection.transport is not None:
                    connection.transport.abort()
        for transport, watch in list(self.handed.items()):
            try:
                if transport.is_closing() and not transport.get_write_buffer_size():
                    del self.handed[transport]
                elif watch.stalled(transport, now, self.send_timeout):
                    del self.handed[transport]
                    self.stats.send_timeouts += 1
                    transport.abort()
            except Exception:
                log.exception("send check of a handed-over connection failed; aborting it")
                self.handed.pop(transport, None)
                transport.abort()

    async def close(self, grace: float = 0.0) -> None:
        """Close idle connections now, busy ones after their answer (within `grace` s); stop.

        The clock keeps running meanwhile, so a client that stalls is still cut off by the
        head and send timeouts; whatever is left after `grace` is closed.
        """
        self.drain()
        for connection in list(self.connections):
            if connection.transport is not None and not connection.busy:
                connection.transport.close()
        if self.connections and grace > 0:
            self._all_gone = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), grace)
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        self.handed.clear()
