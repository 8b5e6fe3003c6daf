"""The fast path against aiohttp's own request parser, over generated request heads.

Hypothesis builds request heads of every shape the front must survive: CL+TE, duplicate
Content-Length, chunked GETs with a smuggled request in the body, obs-fold, bare LF and CR,
controls, absolute- and asterisk-form targets, huge targets and headers, `Upgrade`,
`Expect`, HTTP/0.9 lines and HTTP/2 prefaces. Each is sent over a real socket to a front
whose hand-over target is a real aiohttp server, followed by a sentinel link request, and
the answers are compared with what aiohttp's parser (the one aiohttp serves with, with the
same limits) makes of the same bytes: when the fast path answers a request itself, aiohttp
must see one complete request without a body ending at the same byte, with the same
keep-alive; when the fast path refuses one, aiohttp must refuse it too, except where the
front is deliberately stricter (RFC 9112: an invalid Host value, an HTTP/0.9 line, a
`close` token aiohttp lets a later `keep-alive` override on HTTP/1.0; and its 16 KiB cap
on a whole head, where aiohttp caps each line). Pipelined mixes of
link and non-link requests must be answered in order.

The front's two parsers are compared too: heads near the common ones (case, whitespace,
duplicates, special headers, odd bytes) must get the same answer from the compiled head
scan as from the careful Python path whenever the scan takes them, and heads one change
away from a common one must be left to the careful path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from frontkit import Front, RecordingTransport, link_value, serve_front
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trunk8_redirector import _headscan
from trunk8_redirector.fastpath import MAX_FIELD, MAX_HEAD, MAX_HEADERS, FastPathServer
from trunk8_redirector.stats import RedirectorStats
from trunk8_redirector.table import LinkTable

DOCS_URL = "https://example.com/docs"
SENTINEL = b"GET /docs HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n"
EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    table = LinkTable()
    table.replace_all(
        {
            code: link_value(code, DOCS_URL, kind)
            for code, kind in (("docs", "redirect"), ("file1", "file"))
        }
    )
    async with serve_front(table) as served:
        yield served


async def exchange(port: int, raw: bytes, head_request: bool) -> bytes:
    """Send `raw`; what the server answers up to its second answer if the first is a
    fast-path link answer that keeps the connection, else up to its first (or its close).

    aiohttp's echo answers as soon as it has a head, so no wait here depends on a body.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    received = b""
    try:
        writer.write(raw)
        while True:
            first = first_answer(received, head_request)
            if first is not None:
                link_kept = first.by_fast_path and first.status in (302, 404) and not first.closes
                if not link_kept or first_answer(received[first.length :], False) is not None:
                    return received
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return received
            received += chunk
    finally:
        writer.close()


@dataclass
class Parsed:
    """aiohttp's parser's view of some bytes."""

    error: HttpProcessingError | None
    messages: list[object]


def aiohttp_parse(raw: bytes) -> Parsed:
    """Feed `raw` to the parser aiohttp serves with, with its default limits."""
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(
        BaseProtocol(loop), loop, 2**16, max_line_size=8190, max_field_size=8190, max_headers=128
    )
    try:
        messages, _, _ = parser.feed_data(raw)
    except HttpProcessingError as err:
        return Parsed(err, [])
    return Parsed(None, [message for message, _ in messages])


@dataclass
class Answer:
    status: int
    by_fast_path: bool
    closes: bool
    length: int  # bytes of the whole response


def first_answer(raw: bytes, head_request: bool) -> Answer | None:
    """The first response in `raw`, or None if `raw` does not hold a complete one yet."""
    assert raw[:5] == b"HTTP/"[: len(raw)], raw[:200]
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = raw[: head_end + 2].decode("latin-1")
    status = int(head[9:12])  # aiohttp answers HTTP/1.0 to its errors, echoes 2.0
    headers = dict(
        (name.lower(), value.strip())
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:] if line)
    )
    body = 0 if head_request else int(headers.get("content-length", "0"))
    closes = "close" in headers.get("connection", "").lower()
    if len(raw) < head_end + 4 + body:
        return None
    return Answer(status, "server" not in headers, closes, head_end + 4 + body)


# ---------------------------------------------------------------- generated heads

TOKENS = st.text("!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=8)
# Mostly plain link requests, so the fast path answers many; then one odd part at a time.
METHODS = st.sampled_from(["GET"] * 6 + ["HEAD"] * 3 + ["POST", "OPTIONS", "get", "G\x01T", "PRI"])
TARGETS = st.one_of(
    st.sampled_from(["/docs", "/nosuch", "/docs?x=1", "/do%63s", "/file1"] * 4),
    st.sampled_from(
        [
            "/-/healthz", "/a%2Fb", "*", "http://h/docs", "//docs", "/d#f", "/d\x01", "/d\x7f",
            "/d\x80", "/d\tx", "/" + "a" * 8189, "/" + "a" * 8190, "/" + "a" * 9000,
            "/docs?" + "q" * 8184,
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12).map(
        lambda text: "/" + text
    ),
)  # fmt: skip
VERSIONS = st.sampled_from(
    ["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 2 + ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "http/1.1", ""]
)
PLAIN_HEADERS = st.one_of(
    st.sampled_from(
        [
            "Host: x", "Host: example.com:80", "Host: [::1]", "Host:", "Connection: close",
            "Connection: keep-alive", "Connection: close, keep-alive", "Connection: TE, Close",
            "Accept: */*", "X: caf\xe9", "X-Pad: " + "a" * 8180,
            "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ]
    ),
    st.tuples(TOKENS, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20))
    .map(lambda pair: f"{pair[0]}: {pair[1]}"),
)  # fmt: skip
ODD_HEADERS = st.sampled_from(
    [
        "Host: a b", "Host: a/b", "Host: y", "host: x", "Connection: Upgrade",
        "Content-Length: 0", "Content-Length: 5", "Content-Length: -1",
        "Transfer-Encoding: chunked", "Transfer-Encoding: gzip, chunked",
        "Upgrade: websocket", "Upgrade: h2c", "Expect: 100-continue", "Expect: x",
        " folded", "\tfolded", "Bad Name: y", "NoColon", ":empty", "X: a\x01b", "X: a\x00",
        "X: a\x7f", "X-Pad: " + "a" * 8200,
    ]
)  # fmt: skip
BODIES = st.sampled_from(
    [
        b"", b"", b"", b"", b"hello", b"0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\nGET /docs HTTP/1.1\r\nHost: x\r\n\r\n",  # a smuggled request
    ]
)  # fmt: skip


@st.composite
def request_heads(draw: st.DrawFn) -> tuple[bytes, str]:
    """One request (head and maybe a body), and its method."""
    method = draw(METHODS)
    version = draw(VERSIONS)
    line = f"{method} {draw(TARGETS)}" + (f" {version}" if version else "")
    headers = draw(st.lists(PLAIN_HEADERS, max_size=5))
    if draw(st.integers(0, 9)) < 8:
        headers.insert(draw(st.integers(0, len(headers))), "Host: x")
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), draw(ODD_HEADERS))
    if draw(st.integers(0, 20)) == 0:
        headers += ["A: b"] * 130  # over aiohttp's 128 headers
    lines = [line, *headers, ""]
    endings = ["\r\n"] * len(lines)
    if draw(st.integers(0, 8)) == 0:  # one bare LF or CR somewhere
        endings[draw(st.integers(0, len(endings) - 1))] = draw(st.sampled_from(["\n", "\r"]))
    text = "".join(line + ending for line, ending in zip(lines, endings, strict=True))
    return text.encode("latin-1") + draw(BODIES), method


SPECIAL_INPUTS = [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET /docs\r\n\r\n",
    b"\r\nGET /docs HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\nUser-Agent: a\r\nuser-agent: a\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\n" + b"A: b\r\n" * 129 + b"\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 8188 + b"\r\n\r\n",
    b"GET /docs HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 8189 + b"\r\n\r\n",
]

_HOST = re.compile(
    r"[\t ]*(?:\[[0-9a-z:.\-_~!$&'()*+,;=]+\]|[0-9a-z\-._~!$&'()*+,;=%]*)(?::[0-9]*)?[\t ]*"
)


def front_is_stricter(raw: bytes) -> bool:
    """Heads the front refuses on purpose though aiohttp accepts them (see the docstring)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    if len(head) > MAX_HEAD:
        return True
    lines = head.split("\r\n")
    hosts = [line.partition(":")[2] for line in lines[1:] if line.lower().startswith("host:")]
    if any(not _HOST.fullmatch(value.lower()) for value in hosts):
        return True
    return not re.search(r" HTTP/\d\.\d$", lines[0])  # an HTTP/0.9 request line


def has_close_token(raw: bytes) -> bool:
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    return any(
        b"close" in {token.strip() for token in line[11:].split(b",")}
        for line in head.split(b"\r\n")
        if line.startswith(b"connection:")
    )


async def check_against_aiohttp(port: int, raw: bytes, method: str) -> None:
    """Send `raw` + the sentinel; compare the first answer with aiohttp's parse of `raw`."""
    received = await exchange(port, raw + SENTINEL, method == "HEAD")
    answer = first_answer(received, method == "HEAD")
    head_end = raw.find(b"\r\n\r\n")
    head, after = (raw[: head_end + 4], raw[head_end + 4 :]) if head_end >= 0 else (raw, b"")
    alone = aiohttp_parse(head)
    if answer is None:
        # Nothing answered: aiohttp must not have seen a complete request or an error.
        joined = aiohttp_parse(raw + SENTINEL)
        assert joined.error is None and not joined.messages, (raw, joined)
        return
    if not answer.by_fast_path:
        return  # handed over: aiohttp parsed it itself
    if answer.status in (302, 404):
        # The fast path answered a link request: aiohttp must see exactly that request.
        assert alone.error is None and len(alone.messages) == 1, (raw, alone)
        message = alone.messages[0]
        assert message.method in ("GET", "HEAD"), raw  # type: ignore[attr-defined]
        assert not message.chunked and not message.upgrade, raw  # type: ignore[attr-defined]
        assert "Content-Length" not in message.headers, raw  # type: ignore[attr-defined]
        if answer.closes != message.should_close:  # type: ignore[attr-defined]
            assert answer.closes and has_close_token(raw), (raw, answer)
        if not answer.closes and not after:
            # ...ending where aiohttp ends it: the sentinel is the next request for both.
            assert len(aiohttp_parse(raw + SENTINEL).messages) == 2, raw
            rest = first_answer(received[answer.length :], False)
            assert rest is not None and rest.status == 302, (raw, received[answer.length :])
    else:
        # The fast path refused it (400, 414, 431): aiohttp must refuse it too.
        assert answer.status in (400, 414, 431), (raw, answer)
        assert answer.closes
        if alone.error is None and aiohttp_parse(head + SENTINEL).error is None:
            assert front_is_stricter(raw), (raw, answer, alone)


@pytest.mark.parametrize("raw", SPECIAL_INPUTS)
async def test_special_inputs_agree(front: Front, raw: bytes) -> None:
    await check_against_aiohttp(front.port, raw, raw.split(b" ", 1)[0].decode())


@EXAMPLES
@given(request=request_heads())
async def test_generated_heads_agree_with_aiohttp(front: Front, request: tuple[bytes, str]) -> None:
    raw, method = request
    await check_against_aiohttp(front.port, raw, method)


PIPELINED = st.sampled_from(
    [
        (b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n", "link"),
        (b"HEAD /docs HTTP/1.1\r\nHost: x\r\n\r\n", "link-head"),
        (b"GET /nosuch HTTP/1.1\r\nHost: x\r\n\r\n", "link"),
        (b"GET /file1 HTTP/1.1\r\nHost: x\r\n\r\n", "other"),  # a file link: handed over
        (b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n", "other"),
        (b"POST /docs HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody", "other"),
        (b"GET /docs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "other"),
    ]
)


@EXAMPLES
@given(requests=st.lists(PIPELINED, min_size=1, max_size=12), split=st.integers(0, 400))
async def test_pipelined_mixes_are_answered_in_order(
    front: Front, requests: list[tuple[bytes, str]], split: int
) -> None:
    """Link requests answered by the fast path until the first other request, then every
    request by aiohttp, each once, in order, however the bytes are split into reads."""
    raw = b"".join(request for request, _ in requests) + SENTINEL
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", front.port), 5)
    try:
        writer.write(raw[:split])
        await writer.drain()
        await asyncio.sleep(0)
        writer.write(raw[split:])
        received = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    handed = False
    for request, kind in [*requests, (SENTINEL, "link")]:
        handed = handed or kind == "other"
        answer = first_answer(received, kind == "link-head")
        assert answer is not None, (requests, received)
        assert answer.by_fast_path == (not handed), (requests, received[:300])
        if handed and kind != "link-head":
            line = request.split(b" HTTP/1.1")[0].decode()
            body = received[answer.length - len(f"aiohttp {line}") : answer.length]
            assert answer.status == 200 and body.decode() == f"aiohttp {line}", received
        received = received[answer.length :]
    assert received == b""


# ------------------------------------------------- the compiled scan and the careful path

BROWSER_HEAD = (
    b"GET /docs HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Cookie: session=" + b"x" * 200 + b"\r\nConnection: keep-alive\r\n"
    b"Sec-Fetch-Mode: navigate\r\nPriority: u=0, i\r\n\r\n"
)
# Heads one change away from a common one: the scan must leave each to the careful path.
NOT_COMMON = {
    "HTTP/1.0": BROWSER_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "lowercase method": BROWSER_HEAD.replace(b"GET", b"get", 1),
    "two segments": BROWSER_HEAD.replace(b"/docs", b"/do/cs", 1),
    "fragment": BROWSER_HEAD.replace(b"/docs", b"/docs#x", 1),
    "no Host": BROWSER_HEAD.replace(b"Host: 127.0.0.1:8080\r\n", b""),
    "two Hosts": BROWSER_HEAD.replace(b"Host:", b"host: a\r\nHost:"),
    "invalid Host": BROWSER_HEAD.replace(b"127.0.0.1:8080", b"a b"),
    "unclosed IP literal": BROWSER_HEAD.replace(b"127.0.0.1:8080", b"[::1"),
    "two User-Agents": BROWSER_HEAD.replace(b"Accept:", b"user-agent: x\r\nAccept:"),
    "Connection: close": BROWSER_HEAD.replace(b"keep-alive", b"close"),
    "Connection: keep-alive, Upgrade": BROWSER_HEAD.replace(b"keep-alive", b"keep-alive, x"),
    "Content-Length": BROWSER_HEAD.replace(b"Priority", b"Content-Length: 0\r\nPriority"),
    "Content-Type": BROWSER_HEAD.replace(b"Priority", b"content-TYPE: x\r\nPriority"),
    "Transfer-Encoding": BROWSER_HEAD.replace(b"Priority", b"Transfer-Encoding: x\r\nPriority"),
    "Upgrade": BROWSER_HEAD.replace(b"Priority", b"Upgrade: h2c\r\nPriority"),
    "Expect": BROWSER_HEAD.replace(b"Priority", b"Expect: 100-continue\r\nPriority"),
    "ETag": BROWSER_HEAD.replace(b"Priority", b"ETag: x\r\nPriority"),
    "Server": BROWSER_HEAD.replace(b"Priority", b"Server: x\r\nPriority"),
    "Max-Forwards": BROWSER_HEAD.replace(b"Priority", b"Max-Forwards: 1\r\nPriority"),
    "bare LF in a value": BROWSER_HEAD.replace(b"en-US", b"en\nUS"),
    "bare CR in a value": BROWSER_HEAD.replace(b"en-US", b"en\rUS"),
    "control in a value": BROWSER_HEAD.replace(b"en-US", b"en\x01US"),
    "DEL in a value": BROWSER_HEAD.replace(b"en-US", b"en\x7fUS"),
    "bare LF line end": BROWSER_HEAD.replace(b"\r\nPriority", b"\nPriority"),
    "space in a name": BROWSER_HEAD.replace(b"Sec-Fetch-Mode", b"Sec Fetch"),
    "space before the colon": BROWSER_HEAD.replace(b"Priority:", b"Priority :"),
    "folded line": BROWSER_HEAD.replace(b"\r\nPriority", b"\r\n Priority"),
    "empty name": BROWSER_HEAD.replace(b"Priority", b""),
    "129 header lines": BROWSER_HEAD.replace(b"Priority", b"A: b\r\n" * 120 + b"Priority"),
    "over MAX_FIELD": BROWSER_HEAD.replace(b"x" * 200, b"x" * 8200),
}


def careful_front() -> FastPathServer:
    """A front (no socket) whose table holds /docs, for calling the two paths directly."""
    table = LinkTable()
    table.replace_all({"docs": link_value("docs", DOCS_URL)})
    return FastPathServer(table, RedirectorStats())


def test_head_scan_is_compiled_with_the_fronts_limits() -> None:
    """`make install` builds it; without it every head takes the slower careful path."""
    assert _headscan.common_link_request(b"GET /a HTTP/1.1\r\nHost: x", 0, 24) == (b"GET", b"a")
    assert (_headscan.MAX_HEADERS, _headscan.MAX_FIELD) == (MAX_HEADERS, MAX_FIELD)


def test_head_scan_takes_common_heads() -> None:
    scan = _headscan.common_link_request
    head = BROWSER_HEAD[:-4]
    assert scan(head, 0, len(head)) == (b"GET", b"docs")
    head = b"HEAD /a%20b?q=1 HTTP/1.1\r\nHOST:[::1]:80 \r\nCONNECTION:\tKeep-Alive"
    assert scan(head, 0, len(head)) == (b"HEAD", b"a%20b")
    first = b"GET /x HTTP/1.1\r\nHost: y\r\n\r\n"
    pipelined = first + BROWSER_HEAD
    assert scan(pipelined, len(first), len(pipelined) - 4) == (b"GET", b"docs")


@pytest.mark.parametrize("name", sorted(NOT_COMMON))
def test_head_scan_leaves_other_heads_to_the_careful_path(name: str) -> None:
    head = NOT_COMMON[name]
    end = head.find(b"\r\n\r\n")
    assert _headscan.common_link_request(head, 0, end) is None


def test_head_scan_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        _headscan.common_link_request(b"GET /a HTTP/1.1", 0, 99)
    with pytest.raises(TypeError):
        _headscan.common_link_request(bytearray(b"GET /a HTTP/1.1"), 0, 15)  # type: ignore[arg-type]


# Header lines near the common ones, in both cases and with odd bytes, for the comparison.
NEAR_COMMON_LINES = st.one_of(
    st.sampled_from(
        [
            "Host: x", "HOST: Example.COM:8080", "host:\t[::1] ", "Host: a b", "Host: [::1",
            "Host:", "User-Agent: a", "user-agent: b", "Connection: keep-alive",
            "connection: Keep-Alive ", "Connection: close", "Connection: keep-alive, close",
            "Connection:keep-alive,", "Content-Length: 0", "content-type: x", "ETag: x",
            "Server: x", "Max-Forwards: 1", "Upgrade: h2c", "Expect: 100-continue",
            "Transfer-Encoding: chunked", "Cookie: " + "c" * 300, "Accept: */*",
            "Sec-Fetch-Mode: navigate", "X: \tcaf\xe9", "X: a\x01b", "X: a\x7f", "X: a\rb",
            "X: a\nb", " folded", "Bad Name: y", ":empty", "X-Pad: " + "a" * 8180,
        ]
    ),
    st.tuples(TOKENS, st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=12))
    .map(lambda pair: f"{pair[0]}: {pair[1]}"),
    # A long value with one byte of every kind at any offset (the scan reads values 8 bytes
    # at a time): from where it stops, the value's last word is read byte by byte.
    st.tuples(st.integers(0, 40), st.sampled_from("\x00\x01\t\x1f \x7e\x7f\x80\xff\r\n"),
              st.integers(0, 20))
    .map(lambda odd: "X-Long: " + "v" * odd[0] + odd[1] + "w" * odd[2]),
)  # fmt: skip


@st.composite
def near_common_heads(draw: st.DrawFn) -> bytes:
    """A head (without its blank line) that is common or nearly so."""
    line = draw(st.sampled_from(["GET /docs", "HEAD /docs", "GET /nosuch?x=1", "GET /d%6fcs"]))
    line += " " + draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0"]))
    headers = draw(st.lists(NEAR_COMMON_LINES, max_size=8))
    if draw(st.integers(0, 9)) < 8:
        headers.insert(draw(st.integers(0, len(headers))), "Host: x")
    if draw(st.integers(0, 30)) == 0:
        headers += ["A: b"] * draw(st.integers(120, 130))
    return "\r\n".join([line, *headers]).encode("latin-1")


@settings(max_examples=1500, deadline=None)
@given(head=near_common_heads())
def test_head_scan_answers_as_the_careful_path(head: bytes) -> None:
    """Whenever the compiled scan takes a head, the careful path answers it the same."""
    front = careful_front()
    protocol = front.protocol()
    scanned = _headscan.common_link_request(head, 0, len(head))
    careful = protocol._answer_carefully(head, 0, len(head))
    if scanned is not None:
        assert careful is not None and careful[1], head
        assert protocol._answer(head, 0, len(head)) == careful, head


@settings(max_examples=800, deadline=None)
@given(head=near_common_heads())
def test_prepared_answers_are_the_careful_paths(head: bytes) -> None:
    """A head alone in a read gets the careful path's answer, prepared or not (the first
    common GET of a path prepares its answer, the next ones are answered from it)."""
    front = careful_front()
    protocol = front.protocol()
    careful = protocol._answer_carefully(head, 0, len(head))
    if careful is None or len(head) + 4 > MAX_HEAD:
        return  # handed to aiohttp, or held as over the cap: the socket tests compare those
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    asked = 3 if careful[1] else 1
    for _ in range(asked):
        protocol.data_received(head + b"\r\n\r\n")
    assert transport.written == [careful[0]] * asked, head[:300]
    assert transport.closed is not careful[1]
