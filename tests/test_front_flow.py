"""Flow control of the public port's front, against clients that do not read their answers.

A client may pipeline far more requests than it reads answers. The front answers up to a
write-buffer cap, keeps the rest unparsed until the client reads, and aborts a connection
whose unsent answers do not drain within the send timeout, so memory stays bounded and an
honest slow reader still gets every answer. Clients here are raw non-blocking sockets that
send only what the kernel accepts, so the test process itself buffers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import pytest
from conftest import RunningSystem, StartSystem, wait_until
from rawhttp import (
    DOCS_URL,
    Connect,
    assert_redirect,
    assert_still_serving,
    read_response,
    req,
    statuses,
)

FLOOD_CONNECTIONS = 200
# RSS the flood may add: per connection one read of unparsed requests (up to 256 KiB) plus
# at most the write cap and the transport's high-water mark of answers (64 KiB each).
FLOOD_RSS_BOUND = 120 * 1024 * 1024


def rss() -> int:
    """This process's resident memory in bytes (the server runs in it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def flood_socket(port: int) -> socket.socket:
    """A connected non-blocking client socket with small kernel buffers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
    except BaseException:
        sock.close()
        raise
    return sock


def send_what_fits(sock: socket.socket, payload: bytes, sent: int) -> int:
    """Send from `payload[sent:]` until the kernel refuses more; the new offset."""
    view = memoryview(payload)
    while sent < len(payload):
        try:
            sent += sock.send(view[sent : sent + 65536])
        except BlockingIOError:
            break
    return sent


@pytest.fixture
def small_send_buffers(system: RunningSystem) -> RunningSystem:
    """Accepted sockets inherit small kernel buffers from the listener, so a client that
    does not read makes the server's own buffering (and its flow control) kick in at once."""
    assert system.server.sock is not None
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 262144)
    return system


async def test_pipelining_flood_keeps_memory_bounded(small_send_buffers: RunningSystem) -> None:
    """200 connections pipeline link requests and never read: RSS grows by less than
    FLOOD_RSS_BOUND (answered in full, the same requests would queue ~20x their size),
    and other clients are served meanwhile."""
    system = small_send_buffers
    payload = req("/docs") * 25_000  # ~1 MB of requests, ~12 MB of answers per connection
    before = rss()
    sockets: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            sockets.append(await flood_socket(system.server.port))
        sent = [0] * len(sockets)
        # Keep sending until no connection takes more for a while: the server stopped
        # reading every one of them (or all was sent, which would mean no back-pressure).
        quiet_rounds, deadline = 0, time.monotonic() + 30
        while quiet_rounds < 10 and time.monotonic() < deadline:
            progress = 0
            for i, sock in enumerate(sockets):
                now_sent = send_what_fits(sock, payload, sent[i])
                progress += now_sent - sent[i]
                sent[i] = now_sent
            quiet_rounds = 0 if progress else quiet_rounds + 1
            await asyncio.sleep(0.05)
        assert quiet_rounds >= 10, "the server kept reading"
        assert all(count < len(payload) for count in sent), "no back-pressure on some connection"
        grown = rss() - before
        print(f"RSS grew by {grown / 2**20:.1f} MiB for {len(sockets)} flooding connections")
        assert grown < FLOOD_RSS_BOUND, f"RSS grew by {grown / 2**20:.0f} MiB"
        await assert_still_serving(system)
    finally:
        for sock in sockets:
            sock.close()


async def test_slow_reader_gets_every_answer(start_system: StartSystem, connect: Connect) -> None:
    """20,000 pipelined requests read slowly, with a head timeout far shorter than the
    reading takes: no 408, no reset, every request answered in order."""
    system = await start_system(header_timeout=1.0)
    assert system.server.sock is not None
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    count = 20_000
    payload = req("/docs") * (count - 1) + req("/nosuchcode", headers=("Connection: close",))
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(payload)
    received = bytearray()
    started = time.monotonic()
    paused = False
    while chunk := await asyncio.wait_for(reader.read(8192), 10):
        received += chunk
        if len(received) < 2_000_000:  # slow for the first ~3 s, then at full speed
            await asyncio.sleep(0.012)
        if len(received) > 1_000_000 and not paused:  # and once not at all, for 2.5 s
            paused = True
            await asyncio.sleep(2.5)
    assert time.monotonic() - started > 4.0  # slower than the head timeout, by far
    assert statuses(bytes(received)) == [302] * (count - 1) + [404]


async def test_client_that_never_reads_is_aborted(
    start_system: StartSystem, connect: Connect
) -> None:
    """Unsent answers that do not drain within the send timeout: the connection is aborted
    (a plain close would wait for a flush that never comes)."""
    system = await start_system(send_timeout=1.0)
    assert system.server.sock is not None
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock = await flood_socket(system.server.port)
    try:
        assert send_what_fits(sock, req("/docs") * 5000, 0) > 0
        started = time.monotonic()

        async def aborted() -> bool:
            return (await system.metrics()).get("trunk8_redirector_send_timeouts_total", 0) >= 1

        await wait_until(aborted, timeout=6)
        assert time.monotonic() - started < 5
        # The client finds its connection ended (EOF or reset) once it reads.
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionResetError):
            while await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
                pass
    finally:
        sock.close()
    await assert_still_serving(system)


async def test_handed_over_client_that_never_reads_is_aborted(
    start_system: StartSystem,
) -> None:
    """The send timeout also binds a connection handed to aiohttp."""
    system = await start_system(send_timeout=1.0)
    assert system.server.sock is not None
    system.server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock = await flood_socket(system.server.port)
    try:
        payload = req("/-/metrics") * 3000
        sent = send_what_fits(sock, payload, 0)

        async def aborted() -> bool:
            return (await system.metrics()).get("trunk8_redirector_send_timeouts_total", 0) >= 1

        await wait_until(aborted, timeout=8)
        assert sent > 0
    finally:
        sock.close()
    await assert_still_serving(system)


async def test_reading_resumes_after_the_client_reads(
    small_send_buffers: RunningSystem, connect: Connect
) -> None:
    """Held-back requests are answered once the client reads, and later ones after them."""
    system = small_send_buffers
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(req("/docs") * 3000)
    await asyncio.sleep(0.2)  # the server fills its buffers and stops
    for _ in range(3000):
        assert_redirect(await read_response(reader), DOCS_URL)
    writer.write(req("/docs", headers=("Connection: close",)))
    assert_redirect(await read_response(reader), DOCS_URL)
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_half_closing_client_gets_every_answer(
    small_send_buffers: RunningSystem, connect: Connect
) -> None:
    """A client that sends its requests, half-closes, then reads: the answers held back
    for it are still all sent before the server closes (reading, EOF included, waits
    until the held requests are answered)."""
    system = small_send_buffers
    count = 20_000
    reader, writer = await connect(system, rcvbuf=4096)
    writer.write(req("/docs") * count)
    writer.write_eof()  # sent once the kernel took every request

    async def holding_back() -> bool:
        front = system.server.front
        return any(c.held is not None for c in getattr(front, "connections", ()))

    await wait_until(holding_back)
    raw = await asyncio.wait_for(reader.read(-1), 20)
    assert statuses(raw) == [302] * count
