"""HTTP/1.1 conformance of the public port's front against hostile and broken clients.

Over real sockets: which `Connection` token wins, `Host` rules (RFC 9112 §3.2), heads that
can never become valid answered at once rather than after the head timeout, the 414 cap,
error answers to HEAD without a body, the head timeout for silent connections and for
requests that are not link requests, and a log that stays brief under malformed input.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from conftest import RunningSystem, StartSystem, wait_until
from rawhttp import (
    DOCS_URL,
    Connect,
    assert_closed,
    assert_redirect,
    assert_still_serving,
    read_response,
    req,
)


async def answered_at_once(
    system: RunningSystem, connect: Connect, raw: bytes, head_only: bool = False
) -> int:
    """Send `raw`, expect an answer and a close well before the head timeout; the status."""
    reader, writer = await connect(system)
    writer.write(raw)
    started = time.monotonic()
    response = await read_response(reader, head_only=head_only, timeout=2.0)
    await assert_closed(reader, timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert response.header("Location") is None
    return response.status


async def test_connection_close_wins_over_a_later_keep_alive(
    system: RunningSystem, connect: Connect
) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", headers=("Connection: close", "Connection: keep-alive")))
    response = await read_response(reader)
    assert_redirect(response, DOCS_URL)
    assert response.connection_tokens == {"close"}
    await assert_closed(reader)


async def test_http10_close_among_keep_alive_closes(
    system: RunningSystem, connect: Connect
) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", version="HTTP/1.0", headers=("Connection: keep-alive, close",)))
    assert_redirect(await read_response(reader), DOCS_URL)
    await assert_closed(reader)


@pytest.mark.parametrize(
    "hosts",
    [
        ("Host: a", "Host: a"),
        ("Host: a", "host: b"),
        ("Host: a b",),
        ("Host: a/b",),
        ("Host: exa\x80mple",),
        ("Host: [::1",),
        ("Host: a:8o",),
    ],
    ids=["duplicate", "duplicate-case", "space", "slash", "non-ascii", "bad-ipv6", "bad-port"],
)
async def test_duplicate_or_invalid_host_is_400(
    system: RunningSystem, connect: Connect, hosts: tuple[str, ...]
) -> None:
    raw = req("/docs", host=False, headers=hosts)
    assert await answered_at_once(system, connect, raw) == 400
    await assert_still_serving(system)


@pytest.mark.parametrize("host", ["", "example.com:8080", "[::1]:5001", "127.0.0.1", "a-b.c_d~"])
async def test_valid_host_values_redirect(
    system: RunningSystem, connect: Connect, host: str
) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", host=False, headers=(f"Host: {host}",)))
    assert_redirect(await read_response(reader), DOCS_URL)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /docs HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost: x\r\n\n",
        b"GET /docs HTTP/1.1\nHost: x\n",
        b"GET /docs\r\n",
        b"GET /docs\r\nHost: x\r\n",
        b"POST /add HTTP/1.1\r\nHost: x\rContent-Length: 1\r\n",
        b"GET /docs HTTP/1.1\r\nHost: x\r\n folded\r\n",
        b"GET /docs HTTP/1.1\r\nBad Name: y\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
    ids=[
        "lf-crlf", "crlf-lf", "bare-lf", "http09", "http09-with-header", "bare-cr",
        "obs-fold", "space-in-name", "tls-hello",
    ],
)  # fmt: skip
async def test_heads_that_cannot_become_valid_are_400_at_once(
    system: RunningSystem, connect: Connect, raw: bytes
) -> None:
    """The head timeout is 15 s: the answer must not wait for it."""
    assert await answered_at_once(system, connect, raw) == 400
    await assert_still_serving(system)


async def test_target_over_the_cap_is_414(system: RunningSystem, connect: Connect) -> None:
    long_code = "/" + "a" * 9000
    assert await answered_at_once(system, connect, req(long_code)) == 414
    # Also before the request line is complete, and for a request that is not ours.
    assert await answered_at_once(system, connect, b"POST /" + b"a" * 9000) == 414
    assert await answered_at_once(system, connect, req("/docs?" + "q" * 9000)) == 414
    # Just under aiohttp's 8190-byte limit is fine.
    reader, writer = await connect(system)
    writer.write(req("/docs?" + "q" * 8000))
    assert_redirect(await read_response(reader), DOCS_URL)


@pytest.mark.parametrize(
    "raw",
    [
        req("/docs", method="HEAD", host=False),
        req("/" + "a" * 9000, method="HEAD"),
        req("/docs", method="HEAD", host=False, headers=("Host: a", "Host: b")),
        b"HEAD /docs HTTP/1.1\r\nHost: x\n\r\n",
        b"HEAD /" + b"a" * 9000,
        b"HEAD /docs HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 17000,
    ],
    ids=["no-host", "long-target", "two-hosts", "bare-lf", "long-partial", "head-too-large"],
)
async def test_error_answers_to_head_have_no_body(
    system: RunningSystem, connect: Connect, raw: bytes
) -> None:
    """Read as a HEAD answer, then nothing may follow but the close."""
    status = await answered_at_once(system, connect, raw, head_only=True)
    assert status in (400, 414, 431)


async def test_timed_out_head_request_has_no_body(
    start_system: StartSystem, connect: Connect
) -> None:
    system = await start_system(header_timeout=1.0)
    reader, writer = await connect(system)
    writer.write(b"HEAD /docs HTTP/1.1\r\nHost: x\r\n")
    response = await read_response(reader, head_only=True, timeout=4.0)
    assert response.status == 408
    await assert_closed(reader)


async def test_silent_connection_is_closed_after_the_head_timeout(
    start_system: StartSystem, connect: Connect
) -> None:
    """A connection that never sends a byte gets the head timeout, not the keep-alive one."""
    system = await start_system(header_timeout=1.0, keepalive_timeout=30.0)
    reader, _ = await connect(system)
    started = time.monotonic()
    await assert_closed(reader, timeout=4.0)
    assert time.monotonic() - started < 3.5


async def test_slow_head_that_is_not_a_link_request_is_timed(
    start_system: StartSystem, connect: Connect
) -> None:
    """A slow `POST` head is held by the front until complete, so its head timeout holds
    (aiohttp alone would wait for the keep-alive timeout)."""
    system = await start_system(header_timeout=1.0, keepalive_timeout=30.0)
    reader, writer = await connect(system)
    writer.write(b"POST /add HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n")
    started = time.monotonic()
    response = await read_response(reader, timeout=4.0)
    assert response.status == 408
    await assert_closed(reader)
    assert time.monotonic() - started < 3.5


async def test_non_link_head_sent_in_pieces_is_handed_over_whole(
    system: RunningSystem, connect: Connect
) -> None:
    reader, writer = await connect(system)
    for piece in (b"GET /-/hea", b"lthz HTTP/1.1\r\nHo", b"st: x\r\n", b"\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    health = await read_response(reader)
    assert health.status == 200 and health.by_aiohttp


async def test_malformed_requests_are_counted_not_logged_each(
    system: RunningSystem, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """60 malformed requests of 8 KiB, found by the front or by aiohttp after a hand-over:
    no ERROR and no traceback; a few brief lines; every one counted."""
    caplog.set_level(logging.DEBUG)
    padding = "a" * 8000
    bad = [
        req("/docs", host=False, headers=(f"X-Pad: {padding}",)),  # the fast path's 400
        # Complete heads aiohttp refuses after the hand-over:
        req("/add", method="POST", headers=("Content-Length: 1", "Content-Length: 2")),
        f"GET /-/ready HTTP/1.1\r\nHost: x\r\nBad Name: {padding}\r\n\r\n".encode(),
    ]
    before = (await system.metrics()).get("trunk8_redirector_malformed_requests_total", 0)
    for i in range(60):
        reader, writer = await connect(system)
        writer.write(bad[i % len(bad)])
        assert (await read_response(reader)).status == 400
        await assert_closed(reader)

    async def all_counted() -> bool:
        after = (await system.metrics()).get("trunk8_redirector_malformed_requests_total", 0)
        return after - before >= 60

    await wait_until(all_counted)
    records = [r for r in caplog.records if "malformed" in r.getMessage() or r.exc_info]
    assert all(r.levelno < logging.ERROR and not r.exc_info for r in records), records
    assert 1 <= len(records) <= 3
    assert sum(len(r.getMessage()) for r in records) < 2000
