"""Prepared answers: the front's whole answers to common GETs, kept for the current second.

A common GET whose answer is prepared is answered by one C call (`PreparedAnswers`), with
no Python run for it; these tests make sure a prepared answer is never a stale one. It
follows the link (a change, a delete, a whole new table), the Date line (the clock's
tick) and an expiring link's time; HEAD requests and draining connections never take
one; every answer is counted; a client asking for ever new codes cannot make them grow.
Served over real sockets by a front whose table the test changes as the KV mirror does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from frontkit import Front, RecordingTransport, link_value, serve_front
from rawhttp import DOCS_URL, READ_TIMEOUT, Response, assert_closed, assert_redirect, req
from rawhttp import read_response as read_one

from trunk8_redirector import _headscan
from trunk8_redirector.fastpath import PREPARED_ANSWERS, FastPathServer
from trunk8_redirector.stats import RedirectorStats
from trunk8_redirector.table import EXPIRED, HIT, UNKNOWN, LinkTable

OTHER_URL = "https://example.com/other"


class TableClock:
    """The table's Unix time, moved by the test (expiry without waiting)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Client:
    """One keep-alive connection to the front."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, path: str = "/docs", method: str = "GET") -> Response:
        self.writer.write(req(path, method))
        return await read_one(self.reader, head_only=method == "HEAD")


@pytest.fixture
def table_clock() -> TableClock:
    return TableClock()


@pytest.fixture
async def front(table_clock: TableClock) -> AsyncIterator[Front]:
    table = LinkTable(clock=table_clock)
    table.replace_all({"docs": link_value("docs", DOCS_URL)})
    async with serve_front(table) as served:
        yield served


@pytest.fixture
async def client(front: Front) -> AsyncIterator[Client]:
    opened = asyncio.open_connection("127.0.0.1", front.port)
    reader, writer = await asyncio.wait_for(opened, READ_TIMEOUT)
    try:
        yield Client(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def test_a_prepared_answer_follows_its_link(front: Front, client: Client) -> None:
    table, outcomes = front.front.table, front.front.stats.outcomes
    for _ in range(3):
        assert_redirect(await client.ask(), DOCS_URL)
    assert len(front.front.prepared) == 1  # the first answer prepared, the next two from it
    table.apply("docs", link_value("docs", OTHER_URL))
    assert_redirect(await client.ask(), OTHER_URL)
    assert_redirect(await client.ask(), OTHER_URL)
    table.apply("docs", None)
    assert (await client.ask()).status == 404
    assert (await client.ask()).status == 404
    table.replace_all({"docs": link_value("docs", DOCS_URL)})
    assert_redirect(await client.ask(), DOCS_URL)
    assert_redirect(await client.ask(), DOCS_URL)
    assert (outcomes[HIT], outcomes[UNKNOWN]) == (7, 2)


async def test_unknown_codes_are_prepared_and_counted(front: Front, client: Client) -> None:
    for _ in range(3):
        assert (await client.ask("/nosuch")).status == 404
    assert front.front.stats.outcomes[UNKNOWN] == 3
    front.front.table.apply("nosuch", link_value("nosuch", OTHER_URL))
    assert_redirect(await client.ask("/nosuch"), OTHER_URL)


async def test_prepared_answers_follow_the_date(front: Front, client: Client) -> None:
    """Answers hold the Date line: they are dropped when the front's clock ticks."""
    first = (await client.ask()).header("Date")
    deadline = time.monotonic() + 3.0  # the clock ticks once a second
    while (await client.ask()).header("Date") == first:
        assert time.monotonic() < deadline, "the Date line never changed"
        await asyncio.sleep(0.05)


async def test_an_expiring_link_is_never_prepared(
    front: Front, client: Client, table_clock: TableClock
) -> None:
    expires_at = table_clock.now + 60
    front.front.table.apply("soon", link_value("soon", OTHER_URL, expires_at=expires_at))
    assert_redirect(await client.ask("/soon"), OTHER_URL)
    assert_redirect(await client.ask("/soon"), OTHER_URL)
    table_clock.now = expires_at + 1  # in the same second of the front's clock
    assert (await client.ask("/soon")).status == 404
    assert front.front.stats.outcomes[EXPIRED] == 1


async def test_head_requests_and_draining_connections_take_no_prepared_answer(
    front: Front, client: Client
) -> None:
    assert_redirect(await client.ask(), DOCS_URL)
    head = await client.ask(method="HEAD")
    assert head.status == 302 and head.body == b""
    assert_redirect(await client.ask(), DOCS_URL)  # the connection carries on after HEAD
    front.front.drain()
    last = await client.ask()
    assert_redirect(last, DOCS_URL)
    assert last.connection_tokens == {"close"}
    await assert_closed(client.reader)


def test_prepared_answers_stay_bounded() -> None:
    """A client asking for ever new codes: the answers kept never outgrow their cap."""
    table = LinkTable()
    table.replace_all({"docs": link_value("docs", DOCS_URL)})
    front = FastPathServer(table, RedirectorStats())
    protocol = front.protocol()
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    most = 0
    for number in range(PREPARED_ANSWERS * 3):
        protocol.data_received(req(f"/unknown{number}"))
        most = max(most, len(front.prepared))
    assert most == PREPARED_ANSWERS
    assert len(transport.written) == PREPARED_ANSWERS * 3 and not transport.closed
    assert front.stats.outcomes[UNKNOWN] == PREPARED_ANSWERS * 3


def test_prepared_answers_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _headscan.PreparedAnswers([0], 0)
    with pytest.raises(TypeError):
        _headscan.PreparedAnswers((0,), 1)  # type: ignore[arg-type]
    prepared = _headscan.PreparedAnswers([0, 0], 4)
    with pytest.raises(TypeError):
        prepared.answer(bytearray(req()), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        prepared.keep(b"docs", b"HTTP/1.1 302 Found\r\n", 2, 0)  # no such counter
    prepared.keep(b"docs", b"answer", 1, 0)
    assert prepared.answer(req(), 0) == b"answer"
    assert prepared.answer(req(), 1) == (b"GET", b"docs")  # another table version
    assert prepared.answer(req()[:-2], 1) is None  # not a whole head
    assert prepared.answer(req(method="HEAD"), 1) == (b"HEAD", b"docs")
