"""Graceful stop in one process: the drain, then in-flight requests finishing.

The system runs in the test's loop on a real port; clients are raw sockets, so what is
checked is the bytes on the wire: the `Connection` header of each answer, and whether the
server closed the connection after it. Whole processes under load are in
test_drain_process.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import RunningSystem

from trunk8.server import DRAIN_SECONDS, drain_period
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
