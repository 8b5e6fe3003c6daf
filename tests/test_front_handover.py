"""What the front relies on in aiohttp, pinned (pyproject bounds aiohttp to versions that pass).

The fast path hands a live transport to aiohttp's `RequestHandler` in the middle of a
connection: `connection_made` on a transport that already served bytes, then the bytes
not yet answered through `data_received`, and `pause_writing` when the transport's buffer
is over its limit. It mirrors aiohttp's parser limits so it never answers a request
aiohttp would refuse, and it passes aiohttp a logger whose per-request tracebacks for
malformed requests it turns into a count. If an aiohttp upgrade changes any of this,
these tests fail before the front misbehaves (the socket-level tests of the hand-over are
in test_http_protocol.py and test_front_differential.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import RequestHandler

from trunk8_redirector.fastpath import MAX_FIELD, MAX_HEADERS, MAX_TARGET
from trunk8_shared.front import MalformedRequests, ServerLog


def test_parser_limits_are_the_ones_the_fast_path_mirrors() -> None:
    defaults = inspect.signature(RequestHandler.__init__).parameters
    assert defaults["max_line_size"].default == MAX_TARGET
    assert defaults["max_field_size"].default == MAX_FIELD
    assert defaults["max_headers"].default == MAX_HEADERS


def test_request_handler_takes_over_a_live_transport() -> None:
    """The methods the hand-over calls exist with the protocol's signatures."""
    assert issubclass(RequestHandler, BaseProtocol)
    for name in ("connection_made", "data_received", "pause_writing", "resume_writing"):
        assert callable(getattr(RequestHandler, name))
    assert "logger" in inspect.signature(RequestHandler.__init__).parameters


async def test_server_passes_its_logger_to_handlers() -> None:
    """`web.Server(..., logger=...)` (what `AppRunner` builds) hands the logger on."""
    log = ServerLog(MalformedRequests())

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response()

    server = web.Server(handler, logger=log)
    assert server().logger is log  # the protocol built for each connection


@pytest.mark.parametrize(
    "error", [BadHttpMessage("Duplicate 'Host' header found."), BadStatusLine(b"x")]
)
def test_bad_request_tracebacks_become_a_count(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's `handle_error` logs `exception("Error handling request from %s", ...)`."""
    malformed = MalformedRequests()
    log = ServerLog(malformed)
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        log.exception("Error handling request from %s", "1.2.3.4", exc_info=error)
    log.debug("Error handling request from %s", "1.2.3.4", exc_info=error)
    assert malformed.count == 6
    lines = [r for r in caplog.records if r.name in ("aiohttp.server", "trunk8.front")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and not lines[0].exc_info
    assert "1.2.3.4" in lines[0].getMessage()


@pytest.mark.allow_logged_errors("Unhandled exception")
def test_other_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = ServerLog(MalformedRequests())
    try:
        raise RuntimeError("a handler bug")
    except RuntimeError:
        log.exception("Unhandled exception")
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelno == logging.ERROR and record.exc_info


async def test_missing_and_duplicate_host_are_refused_by_aiohttp_too() -> None:
    """The fast path's Host rules are aiohttp's, plus RFC 9110's syntax of the value."""
    loop = asyncio.get_running_loop()
    for head in (
        b"GET /docs HTTP/1.1\r\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    ):
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        with pytest.raises(BadHttpMessage):
            parser.feed_data(head)
