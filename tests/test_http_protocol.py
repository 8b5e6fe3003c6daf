"""HTTP/1.1 conformance of the redirector's public port, over real sockets.

The port is served by the fast path (`trunk8_redirector.fastpath`), which answers
`GET`/`HEAD /<code>` itself and hands any other connection, with the bytes it has not
answered, to aiohttp. These tests speak raw HTTP to it so framing, keep-alive,
pipelining, the hand-over, limits and timeouts are checked byte for byte. Every read has
a timeout so a hang fails fast instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest
from conftest import RunningSystem, StartSystem
from rawhttp import (
    DOCS_URL,
    Connect,
    assert_closed,
    assert_redirect,
    assert_silent,
    assert_still_serving,
    read_response,
    req,
    statuses,
)

CAROL_URL = "https://example.org/carol"
ADMIN_URL = "https://example.com/admin"


# ---------------------------------------------------------------- keep-alive, pipelining


async def test_keep_alive_many_requests(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    for path, location in [
        ("/docs", DOCS_URL),
        ("/carol1", CAROL_URL),
        ("/ex_redirect", ADMIN_URL),
    ] * 3:
        writer.write(req(path))
        response = await read_response(reader)
        assert_redirect(response, location)
        assert response.version == "HTTP/1.1"
        assert "close" not in response.connection_tokens
        assert not response.by_aiohttp
        assert response.header("Date")
    await assert_silent(reader)  # still open
    writer.write(req("/docs"))
    assert_redirect(await read_response(reader), DOCS_URL)


async def test_pipelined_link_requests_answered_in_order(
    system: RunningSystem, connect: Connect
) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs") + req("/carol1") + req("/nosuchcode") + req("/ex_redirect"))
    assert_redirect(await read_response(reader), DOCS_URL)
    assert_redirect(await read_response(reader), CAROL_URL)
    missing = await read_response(reader)
    assert missing.status == 404 and missing.header("Location") is None
    assert_redirect(await read_response(reader), ADMIN_URL)
    await assert_silent(reader)


async def test_pipelining_across_the_hand_over(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs") + req("/-/healthz") + req("/carol1"))
    first = await read_response(reader)
    assert_redirect(first, DOCS_URL)
    assert not first.by_aiohttp
    health = await read_response(reader)
    assert health.status == 200 and health.by_aiohttp
    assert b'"ok"' in health.body
    third = await read_response(reader)
    assert_redirect(third, CAROL_URL)
    assert third.by_aiohttp  # the connection now belongs to aiohttp
    writer.write(req("/ex_redirect"))
    assert_redirect(await read_response(reader), ADMIN_URL)


async def test_partial_request_held_then_hand_over(system: RunningSystem, connect: Connect) -> None:
    """A link answer and the start of a routed request in one segment, the rest later."""
    reader, writer = await connect(system)
    writer.write(req("/docs") + b"GET /-/hea")
    assert_redirect(await read_response(reader), DOCS_URL)
    await asyncio.sleep(0.05)
    writer.write(b"lthz HTTP/1.1\r\nHost: x\r\n\r\n")
    health = await read_response(reader)
    assert health.status == 200 and health.by_aiohttp


async def test_request_written_byte_by_byte(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    for request, location in [(req("/docs"), DOCS_URL), (req("/carol1"), CAROL_URL)]:
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.002)
        assert_redirect(await read_response(reader), location)
    # And a routed request dribbled in, handed over part way.
    request = req("/-/healthz")
    for i in range(len(request)):
        writer.write(request[i : i + 1])
        await asyncio.sleep(0.002)
    assert (await read_response(reader)).status == 200


# ---------------------------------------------------------------- HEAD


async def test_head_has_headers_but_no_body(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs"))
    get = await read_response(reader)
    writer.write(req("/docs", method="HEAD") + req("/carol1"))
    head = await read_response(reader, head_only=True)
    assert head.status == get.status == 302
    assert head.header("Location") == get.header("Location") == DOCS_URL
    assert head.header("Content-Length") == get.header("Content-Length") == str(len(get.body))
    assert head.header("Content-Type") == get.header("Content-Type")
    # The next pipelined response starts right after HEAD's blank line: no body bytes.
    assert_redirect(await read_response(reader), CAROL_URL)
    writer.write(req("/nosuchcode", method="HEAD"))
    missing = await read_response(reader, head_only=True)
    assert missing.status == 404 and int(missing.header("Content-Length") or 0) > 0
    await assert_silent(reader)


async def test_head_through_aiohttp_matches(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", method="HEAD"))
    fast = await read_response(reader, head_only=True)
    writer.write(req("/-/healthz") + req("/docs", method="HEAD") + req("/docs"))
    assert (await read_response(reader)).status == 200
    slow = await read_response(reader, head_only=True)
    assert slow.by_aiohttp
    assert (slow.status, slow.header("Location"), slow.header("Content-Length")) == (
        fast.status,
        fast.header("Location"),
        fast.header("Content-Length"),
    )
    assert_redirect(await read_response(reader), DOCS_URL)


# ---------------------------------------------------------------- HTTP/1.0 and Connection


async def test_http10_without_connection_header_closes(
    system: RunningSystem, connect: Connect
) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", version="HTTP/1.0", host=False))
    response = await read_response(reader)
    assert_redirect(response, DOCS_URL)
    assert "keep-alive" not in response.connection_tokens
    await assert_closed(reader)


async def test_http10_keep_alive_stays_open(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    for path, location in [("/docs", DOCS_URL), ("/carol1", CAROL_URL)]:
        writer.write(req(path, version="HTTP/1.0", headers=("Connection: keep-alive",)))
        response = await read_response(reader)
        assert_redirect(response, location)
        assert response.connection_tokens == {"keep-alive"}
    await assert_silent(reader)
    # Without the header again, the 1.0 default (close) applies.
    writer.write(req("/docs", version="HTTP/1.0"))
    assert_redirect(await read_response(reader), DOCS_URL)
    await assert_closed(reader)


async def test_http11_connection_close(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", headers=("Connection: close",)) + req("/carol1"))
    response = await read_response(reader)
    assert_redirect(response, DOCS_URL)
    assert response.connection_tokens == {"close"}
    await assert_closed(reader)  # the pipelined second request is not answered


async def test_connection_close_among_other_tokens(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", method="HEAD", headers=("connection: TE, Close",)))
    response = await read_response(reader, head_only=True)
    assert response.status == 302 and response.connection_tokens == {"close"}
    await assert_closed(reader)


async def test_http11_without_host_is_400(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", host=False))
    response = await read_response(reader)
    assert response.status == 400
    assert response.connection_tokens == {"close"}
    await assert_closed(reader)
    await assert_still_serving(system)


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "head",
    [
        b"GET /docs HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost: x\r\nX-Bad : y\r\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    ],
    ids=["no-colon", "space-before-colon-host", "space-before-colon", "obs-fold"],
)
async def test_malformed_header_line(system: RunningSystem, connect: Connect, head: bytes) -> None:
    reader, writer = await connect(system)
    writer.write(head)
    response = await read_response(reader)
    assert 400 <= response.status < 500
    assert response.header("Location") is None
    await assert_closed(reader)
    await assert_still_serving(system)


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"GET /docs HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /docs HTTP/1.1x\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        # Control bytes in the target (a bare CR must never be taken as part of a code).
        b"GET /do\x01cs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a\x7f HTTP/1.0\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /docs?q=\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=[
        "garbage", "four-parts", "bad-version", "tls-hello",
        "ctl-in-target", "bare-cr-in-target", "nul-in-target", "del-in-target-http10",
        "tab-in-target", "ctl-in-query",
    ],
)  # fmt: skip
async def test_garbage_request_line_is_400(
    system: RunningSystem, connect: Connect, head: bytes
) -> None:
    reader, writer = await connect(system)
    writer.write(head)
    response = await read_response(reader)
    assert response.status == 400
    await assert_closed(reader)
    await assert_still_serving(system)


async def test_head_over_the_cap_is_431(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    padding = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"a" * 100) for i in range(170))  # ~19 KiB
    writer.write(b"GET /docs HTTP/1.1\r\nHost: x\r\n" + padding)  # no blank line
    response = await read_response(reader)
    assert response.status == 431
    assert response.connection_tokens == {"close"}
    await assert_closed(reader)
    await assert_still_serving(system)


async def test_complete_head_over_the_cap_is_431(system: RunningSystem, connect: Connect) -> None:
    """The cap holds however the head is segmented, even when it arrives whole."""
    reader, writer = await connect(system)
    padding = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"a" * 100) for i in range(170))
    writer.write(req("/carol1") + b"GET /docs HTTP/1.1\r\nHost: x\r\n" + padding + b"\r\n")
    assert_redirect(await read_response(reader), CAROL_URL)  # the one before still answered
    response = await read_response(reader)
    assert response.status == 431
    await assert_closed(reader)
    await assert_still_serving(system)


# ---------------------------------------------------------------- timeouts


async def test_slow_head_gets_408(start_system: StartSystem, connect: Connect) -> None:
    system = await start_system(header_timeout=1.0)
    reader, writer = await connect(system)
    writer.write(b"GET /docs HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    started = time.monotonic()
    response = await read_response(reader, timeout=4.0)
    assert response.status == 408
    assert response.connection_tokens == {"close"}
    await assert_closed(reader)
    assert time.monotonic() - started < 3.5
    await assert_still_serving(system)


async def test_dribbling_head_is_cut(start_system: StartSystem, connect: Connect) -> None:
    """One byte every 0.4 s keeps the connection busy, but the head as a whole is timed."""
    system = await start_system(header_timeout=1.0)
    reader, writer = await connect(system)
    request = req("/docs", headers=("User-Agent: a-very-patient-client",))

    async def dribble() -> None:
        with contextlib.suppress(OSError):
            for i in range(len(request)):  # ~25 s at this pace: never completes in time
                writer.write(request[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.4)

    started = time.monotonic()
    task = asyncio.create_task(dribble())
    try:
        response = await read_response(reader, timeout=4.0)
        assert response.status == 408
        await assert_closed(reader)
        assert time.monotonic() - started < 3.5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await assert_still_serving(system)


async def test_head_within_its_timeout_is_never_cut(
    start_system: StartSystem, connect: Connect
) -> None:
    """Heads each held 0.6 s of a 1 s head timeout, across several clock ticks: all answered.

    The front's sweep runs once a second; a head timed from its coarse clock looked up to a
    tick older than it was, and one held across a tick was cut after a few milliseconds.
    """
    system = await start_system(header_timeout=1.0, keepalive_timeout=30.0)
    reader, writer = await connect(system)
    request = req("/docs")
    for _ in range(6):  # 3.6 s: every phase of the tick is crossed
        writer.write(request[:10])
        await asyncio.sleep(0.6)
        writer.write(request[10:])
        assert_redirect(await read_response(reader), DOCS_URL)


async def test_idle_keep_alive_is_closed(start_system: StartSystem, connect: Connect) -> None:
    system = await start_system(keepalive_timeout=1.0)
    reader, writer = await connect(system)
    writer.write(req("/docs"))
    assert_redirect(await read_response(reader), DOCS_URL)
    started = time.monotonic()
    await assert_closed(reader, timeout=4.0)
    assert time.monotonic() - started < 3.5
    await assert_still_serving(system)


async def test_handed_over_connection_idle_is_closed(
    start_system: StartSystem, connect: Connect
) -> None:
    """After the hand-over, aiohttp's keep-alive timeout (same setting) applies."""
    system = await start_system(keepalive_timeout=1.0)
    reader, writer = await connect(system)
    writer.write(req("/-/healthz"))
    assert (await read_response(reader)).status == 200
    await assert_closed(reader, timeout=4.0)


# ---------------------------------------------------------------- methods and bodies


async def test_post_is_405(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", method="POST", headers=("Content-Length: 3",), body=b"a=b"))
    response = await read_response(reader)
    assert response.status == 405
    assert response.header("Location") is None
    await assert_still_serving(system)


async def test_get_with_body(system: RunningSystem, connect: Connect) -> None:
    reader, writer = await connect(system)
    writer.write(req("/docs", headers=("Content-Length: 5",), body=b"hello") + req("/carol1"))
    response = await read_response(reader)
    assert_redirect(response, DOCS_URL)
    assert_redirect(await read_response(reader), CAROL_URL)  # the body was not taken as a request
    writer.write(req("/ex_redirect"))
    assert_redirect(await read_response(reader), ADMIN_URL)


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("path", ["/a%2Fb", "/%FF", "/docs/", "/docs/x", "/nosuchcode", "/%2F"])
async def test_odd_targets_are_404(system: RunningSystem, connect: Connect, path: str) -> None:
    reader, writer = await connect(system)
    writer.write(req(path) + req("/docs"))
    response = await read_response(reader)
    assert response.status == 404
    assert response.header("Location") is None
    assert_redirect(await read_response(reader), DOCS_URL)  # connection still usable


@pytest.mark.parametrize("path", ["/docs?x=1", "/docs?", "/do%63s", "/%64ocs?a=b&c=%2F"])
async def test_equivalent_targets_redirect(
    system: RunningSystem, connect: Connect, path: str
) -> None:
    reader, writer = await connect(system)
    writer.write(req(path))
    assert_redirect(await read_response(reader), DOCS_URL)


async def test_fallback_route_answers_like_the_fast_path(
    system: RunningSystem, connect: Connect
) -> None:
    fast_reader, fast_writer = await connect(system)
    slow_reader, slow_writer = await connect(system)
    slow_writer.write(req("/-/healthz"))  # hands this connection to aiohttp
    assert (await read_response(slow_reader)).by_aiohttp
    for path in ["/docs", "/carol1", "/ex_redirect", "/nosuchcode", "/%64ocs?x=1"]:
        fast_writer.write(req(path))
        slow_writer.write(req(path))
        fast = await read_response(fast_reader)
        slow = await read_response(slow_reader)
        assert not fast.by_aiohttp and slow.by_aiohttp
        assert slow.status == fast.status, path
        assert slow.header("Location") == fast.header("Location"), path
        assert slow.header("Content-Type") == fast.header("Content-Type"), path
        assert slow.header("Content-Length") == fast.header("Content-Length"), path
        assert slow.body == fast.body, path


# ---------------------------------------------------------------- flow control


@pytest.fixture
def small_send_buffers(system: RunningSystem) -> RunningSystem:
    """Accepted sockets inherit a small SO_SNDBUF from the listener, so a client that does
    not read makes the server's transport buffer (and its flow control) kick in at once."""
    assert system.server.sock is not None
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return system


async def test_many_pipelined_requests_without_reading(
    small_send_buffers: RunningSystem, connect: Connect
) -> None:
    """20,000 requests written at once while not reading: others are served meanwhile,
    and every request is then answered, in order."""
    system = small_send_buffers
    count = 20_000
    cycle = [(req("/docs"), 302), (req("/nosuchcode"), 404), (req("/carol1"), 302)]
    payload = b"".join(cycle[i % 3][0] for i in range(count - 1)) + req(
        "/docs", headers=("Connection: close",)
    )
    expected = [cycle[i % 3][1] for i in range(count - 1)] + [302]
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(payload)  # not drained, not read: the server must hold back
    await asyncio.sleep(0.3)
    await assert_still_serving(system)
    raw = await asyncio.wait_for(reader.read(-1), 20)
    assert statuses(raw) == expected
    assert raw.endswith(b"click the link.\n")


async def test_hand_over_while_writing_is_paused(
    small_send_buffers: RunningSystem, connect: Connect
) -> None:
    """The hand-over happens while the server holds back (its answers to the link requests
    before `/-/healthz` fill the socket): aiohttp must still read and answer what follows,
    including bytes sent later."""
    system = small_send_buffers
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(req("/docs") * 1000 + req("/-/healthz") + req("/carol1") * 10)
    await asyncio.sleep(0.2)  # not reading; the server's write buffer is now over its limit
    writer.write(req("/ex_redirect") * 10 + req("/docs", headers=("Connection: close",)))
    await asyncio.sleep(0.1)
    await assert_still_serving(system)
    raw = await asyncio.wait_for(reader.read(-1), 10)
    assert statuses(raw) == [302] * 1000 + [200] + [302] * 21
    assert raw.count(b"Location: " + ADMIN_URL.encode() + b"\r\n") == 10


async def test_large_pipeline_across_hand_over(
    small_send_buffers: RunningSystem, connect: Connect
) -> None:
    """Thousands of link requests, the hand-over, thousands more for aiohttp, unread."""
    system = small_send_buffers
    before, after = 12_000, 3_000
    payload = (
        req("/docs") * before
        + req("/-/healthz")
        + req("/carol1") * after
        + req("/docs", headers=("Connection: close",))
    )
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(payload)
    await asyncio.sleep(0.3)
    await assert_still_serving(system)
    raw = await asyncio.wait_for(reader.read(-1), 20)
    assert statuses(raw) == [302] * before + [200] + [302] * (after + 1)


async def test_bad_cases_leave_the_server_serving(system: RunningSystem, connect: Connect) -> None:
    """A burst of every bad case on parallel connections, then a normal client."""
    bad = [
        req("/docs", host=False),
        b"GET /docs HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
        b"garbage\r\n\r\n",
        b"GET /docs HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000,
        req("/docs", method="POST"),
        req("/a%2Fb") + req("/%FF") + req("/docs/x"),
        b"GET /docs HTTP/1.1\r\nHost: x\r\n",  # left hanging
        b"\x00\xff" * 100 + b"\r\n\r\n",
    ]
    for payload in bad:
        _, writer = await connect(system)
        writer.write(payload)
    await asyncio.sleep(0.2)
    await assert_still_serving(system)
