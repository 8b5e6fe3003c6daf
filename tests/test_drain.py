"""Graceful stop: the drain, then in-flight requests finishing, in one process and whole.

Most tests run the system in the test's loop on a real port; clients are raw sockets, so
what is checked is the bytes on the wire: the `Connection` header of each answer, and
whether the server closed the connection after it. The last one SIGTERMs a real
`trunk8 up` under a paced load (`loadgen.Load`) with a slow download and half-sent heads
under way: no accepted request fails, and the process exits 0 within drain + grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningSystem, wait_until
from loadgen import Load, redirect_to
from nginxkit import free_port
from rawhttp import DOCS_URL, Response, assert_closed, read_response, req
from topologykit import TRUNK8, Processes, clean_env, ready

from trunk8.server import DRAIN_SECONDS, SHUTDOWN_TIMEOUT, drain_period
from trunk8_shared.settings import Settings, SettingsError, settings_from

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(system: RunningSystem) -> Stream:
    return await asyncio.open_connection("127.0.0.1", system.server.port)


async def exchange(stream: Stream, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request and read its answer: (status, lower-cased headers, body)."""
    reader, writer = stream
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return int(status_line.split()[1]), headers, body


async def closed_by_server(stream: Stream) -> bool:
    """True when the server has closed the connection (EOF, nothing more sent)."""
    return await asyncio.wait_for(stream[0].read(1), 5) == b""


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: drain.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_drain_fails_readiness_and_closes_connections_after_their_answer(
    system: RunningSystem,
) -> None:
    """Draining: `/-/ready` is 503 with `draining`, links are still served, and every
    keep-alive connection (fast path, HTTP/1.0 keep-alive, handed to aiohttp) gets
    `Connection: close` on its next answer and is closed after it."""
    fast, old, handed = await connect(system), await connect(system), await connect(system)
    status, headers, _ = await exchange(fast, get("/docs"))
    assert status == 302 and "connection" not in headers
    status, headers, _ = await exchange(old, get("/docs", "Connection: keep-alive", version="1.0"))
    assert status == 302 and headers["connection"] == "keep-alive"
    status, headers, _ = await exchange(handed, get("/-/healthz"))
    assert status == 200 and headers.get("connection", "keep-alive") == "keep-alive"
    status, _, body = await system.get("/-/ready")
    assert status == 200 and json.loads(body)["draining"] is False

    system.server.begin_drain()

    status, _, body = await system.get("/-/ready")
    answer = json.loads(body)
    assert status == 503 and answer["ready"] is False and answer["draining"] is True
    assert all(answer["services"].values()), "the services themselves are still ready"
    for stream, request, expected in (
        (fast, get("/docs"), 302),
        (old, get("/docs", "Connection: keep-alive", version="1.0"), 302),
        (handed, get("/-/healthz"), 200),
    ):
        status, headers, _ = await exchange(stream, request)
        assert status == expected and headers["connection"] == "close"
        assert await closed_by_server(stream)
    # A new connection is served too, and closed after its answer.
    fresh = await connect(system)
    status, headers, _ = await exchange(fresh, get("/docs"))
    assert status == 302 and headers["location"] == "https://example.com/docs"
    assert headers["connection"] == "close" and await closed_by_server(fresh)
    # Pipelined link requests: the first is answered, with close, and nothing after it.
    pipelined = await connect(system)
    status, headers, _ = await exchange(pipelined, get("/docs") + get("/carol1"))
    assert status == 302 and headers["connection"] == "close"
    assert await closed_by_server(pipelined)
    for stream in (fast, old, handed, fresh, pipelined):
        stream[1].close()


async def test_a_second_stop_does_nothing(system: RunningSystem) -> None:
    await system.server.stop()
    await system.server.stop()  # the fixture stops it a third time


def test_drain_period_by_command_and_target() -> None:
    """`run` drains 5 s by default, `up` not at all; the setting wins, except for the
    config-watcher, which no load balancer sends traffic to."""
    unset, set_ = Settings(), Settings(drain_seconds=2.5)
    assert drain_period(unset, "redirector", all_in_one=False) == DRAIN_SECONDS == 5.0
    assert drain_period(unset, "all", all_in_one=False) == DRAIN_SECONDS
    assert drain_period(unset, "all", all_in_one=True) == 0.0
    assert drain_period(set_, "all", all_in_one=True) == 2.5
    assert drain_period(set_, "files", all_in_one=False) == 2.5
    assert drain_period(Settings(drain_seconds=0), "admin", all_in_one=False) == 0.0
    assert drain_period(set_, "config-watcher", all_in_one=False) == 0.0
    assert drain_period(unset, "config-watcher", all_in_one=False) == 0.0


@pytest.mark.parametrize("value", ["-1", "nan", "3601", "soon"])
def test_bad_drain_setting_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="drain_seconds"):
        settings_from({"TRUNK8_DRAIN_SECONDS": value})


def test_drain_setting_from_the_environment() -> None:
    assert settings_from({"TRUNK8_DRAIN_SECONDS": "0.5"}).drain_seconds == 0.5
    assert settings_from({"TRUNK8_DRAIN_SECONDS": ""}).drain_seconds is None


async def test_stop_waits_for_a_head_under_way_and_answers_it(system: RunningSystem) -> None:
    """A head half sent when the port closes is waited for, answered with `Connection:
    close`, and only then is the connection closed, whether the fast path answers it or
    aiohttp (handed over while the front closes, as the last one it waits for); a
    connection that had sent nothing yet is answered too. Idle ones are closed at once."""
    port = system.server.port
    link, page = await _connect(port), await _connect(port)
    silent, idle = await _connect(port), await _connect(port)
    idle[1].write(req("/docs"))
    assert (await read_response(idle[0])).status == 302
    link[1].write(b"GET /docs HTTP/1.1\r\nHost: drain.test\r\n")
    page[1].write(b"GET /-/healthz HTTP/1.1\r\nHost: drain.test\r\n")
    await asyncio.sleep(0.05)  # the partial heads have arrived before the stop

    stopping = asyncio.create_task(system.server.stop())
    await assert_closed(idle[0])
    await wait_until(lambda: _refused(port), timeout=5)
    assert not stopping.done(), "the stop waits for the requests under way"
    link[1].write(b"\r\n")
    silent[1].write(req("/carol1"))
    for reader, location in ((link[0], DOCS_URL), (silent[0], "https://example.org/carol")):
        answer = await read_response(reader)
        assert answer.status == 302 and answer.header("Location") == location
        assert answer.header("Connection") == "close"
        await assert_closed(reader)
    page[1].write(b"\r\n")
    answer = await read_response(page[0])
    assert answer.status == 200 and answer.by_aiohttp and answer.header("Connection") == "close"
    await assert_closed(page[0])
    await asyncio.wait_for(stopping, 5)
    for _, writer in (link, page, silent, idle):
        writer.close()


async def test_connections_waiting_to_be_accepted_are_answered(system: RunningSystem) -> None:
    """A connection the kernel has completed but the loop has not accepted yet when the port
    closes is accepted and answered, not reset with its request."""
    waiting = socket.create_connection(("127.0.0.1", system.server.port), timeout=5)
    try:
        # Connected by the kernel alone: the loop has not run since, so it is still queued.
        waiting.sendall(req("/docs"))
        await system.server.stop()
        reader, writer = await asyncio.open_connection(sock=waiting)
        answer = await read_response(reader)
        assert answer.status == 302 and answer.header("Connection") == "close"
        writer.close()
    finally:
        waiting.close()


async def test_stop_gives_up_on_what_never_finishes_after_the_grace(
    system: RunningSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head that never completes and a download nobody reads hold the stop for the grace
    at most (one deadline for both), then their connections are closed."""
    monkeypatch.setattr("trunk8.server.SHUTDOWN_TIMEOUT", 0.5)
    assets = data_dir / "users" / "bob" / "assets"
    assets.mkdir(parents=True)
    (assets / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf").write_bytes(b"%" * 16 * 1024 * 1024)
    port = system.server.port
    stuck = await _connect(port)
    stuck[1].write(b"GET /docs HTTP/1.1\r\nHost: drain.test\r\n")
    unread = socket.socket()
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    unread.settimeout(5)
    unread.connect(("127.0.0.1", port))
    unread.sendall(req("/report"))
    await asyncio.sleep(0.2)  # the download fills the buffers and waits for the client

    started = time.monotonic()
    await asyncio.wait_for(system.server.stop(), 5)
    took = time.monotonic() - started
    assert 0.5 <= took < 2.5, took
    await assert_closed(stuck[0])
    unread.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=unread)
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(1 << 20), 5):
            pass  # what was sent before the close, then EOF (or a reset)
    writer.close()
    stuck[1].close()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def _refused(port: int) -> bool:
    """Whether the port refuses connections (the listening socket is closed)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


DRAIN = 1.0
DOWNLOAD_SIZE = 16 * 1024 * 1024
DOWNLOAD_RATE = 5 * 1024 * 1024  # bytes/s: the download outlives the drain


async def slow_download(port: int, path: str) -> tuple[bytes, float]:
    """GET `path`, reading its body at DOWNLOAD_RATE; (the SHA-256 of the body, when done)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(req(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        digest, received, started = hashlib.sha256(), 0, time.monotonic()
        while received < DOWNLOAD_SIZE:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, f"download cut after {received} bytes"
            digest.update(chunk)
            received += len(chunk)
            await asyncio.sleep(max(0.0, started + received / DOWNLOAD_RATE - time.monotonic()))
        return digest.digest(), time.monotonic()
    finally:
        writer.close()


async def test_sigterm_under_load_fails_no_accepted_request(data_dir: Path, tmp_path: Path) -> None:
    """`trunk8 up` SIGTERMed under ~300 requests/s over keep-alive connections (redirects
    answered by the fast path, health checks by aiohttp), with a slow download and a
    half-sent head under way: `/-/ready` answers 503 while it drains, every request it
    accepted is answered, the download completes after the port closed, and the process
    exits 0 within drain + grace. Connections refused once the port is closed are the
    load balancer's to send elsewhere: counted apart."""
    body = os.urandom(DOWNLOAD_SIZE)
    (data_dir / "users" / "bob" / "assets").mkdir(parents=True)
    (
        data_dir / "users" / "bob" / "assets" / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf"
    ).write_bytes(body)
    port = free_port()
    processes = Processes(tmp_path / "logs")
    env = clean_env(TRUNK8_DATA_DIR=str(data_dir), TRUNK8_DRAIN_SECONDS=str(DRAIN))
    processes.start("up", [str(TRUNK8), "up", "--port", str(port)], env, tmp_path)
    proc = processes.started["up"]
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    load = Load(
        port,
        [("/docs", redirect_to(DOCS_URL)), ("/-/healthz", lambda r: r.status == 200)],
        rate=300, connections=8, budget=10_000, stop_when_refused=True,
    )  # fmt: skip
    try:
        await wait_until(lambda: ready(http, port), timeout=30)
        load.start()
        await load.until_sent(300)
        download = asyncio.create_task(slow_download(port, "/report"))
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"GET /docs HTTP/1.1\r\nHost: drain.test\r\n")
        await asyncio.sleep(0.2)  # the download is under way

        load.phase("draining")
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait_until(lambda: _draining(http, port), timeout=DRAIN)
        await wait_until(lambda: _refused(port), timeout=DRAIN + 5)
        closed = time.monotonic()
        load.phase("stopping")
        half[1].write(b"\r\n")
        answer: Response = await read_response(half[0])
        assert answer.status == 302 and answer.header("Connection") == "close"
        digest, downloaded = await asyncio.wait_for(download, SHUTDOWN_TIMEOUT)
        assert digest == hashlib.sha256(body).digest()
        assert downloaded > closed, "the download was still under way when the port closed"
        status = await asyncio.wait_for(asyncio.to_thread(proc.wait), DRAIN + SHUTDOWN_TIMEOUT)
        stopped = time.monotonic() - signalled
        half[1].close()
    finally:
        total = await load.stop()
        await http.close()
        processes.stop_all()
    for name, counts in load.phases.items():
        print(f"drain under load, {name}: {counts.summary()}")
    print(f"stopped {stopped:.2f} s after SIGTERM, port closed after {closed - signalled:.2f} s")
    assert status == 0, processes.log("up")
    assert total.failed == 0, total.failures[:10]
    assert load.phases["draining"].ok > 0 and load.phases["stopping"].refused > 0
    assert stopped < DRAIN + SHUTDOWN_TIMEOUT


async def _draining(http: aiohttp.ClientSession, port: int) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get(f"http://127.0.0.1:{port}/-/ready") as response:
            return response.status == 503 and (await response.json())["draining"] is True
    return False
