"""The in-memory link table: short code -> a ready-made HTTP answer.

Each answer carries its response head and body as bytes, built once when the link arrives
from NATS, so serving a link is one dict lookup and a write. The table is a `MirrorSink`:
the KV mirror swaps in snapshots and applies single changes from its task; the hit path
never awaits and never logs.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from trunk8_shared.codes import code_of_key
from trunk8_shared.pages import NOT_FOUND_HEADERS, NOT_FOUND_PAGE
from trunk8_shared.records import LinkRecord, link_decoder

from .pages import redirect_page

log = logging.getLogger("trunk8.redirector")

# Outcomes, used as indexes into the plain counters of `RedirectorStats`.
HIT, UNKNOWN, EXPIRED, BAD_REQUEST, TIMEOUT, TOO_LARGE, URI_TOO_LONG = range(7)

REASONS = {
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}

# Characters kept as they are in a Location; everything else (spaces, non-ASCII, controls)
# is percent-encoded as UTF-8, as Trunk8 does (T8-035). `%` is kept: existing escapes stay.
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~"


def location_header(url: str) -> str:
    """The URL as a header-safe Location: IDNA host, percent-encoded UTF-8 elsewhere."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        host, colon, port = hostport.partition(":")
        if not host.isascii():
            ascii_host = host.encode("idna").decode("ascii")
            url = urlunsplit(parts._replace(netloc=userinfo + at + ascii_host + colon + port))
    except (UnicodeError, ValueError):
        pass
    return quote(url, safe=_LOCATION_SAFE)


class Answer:
    """One prepared response: status, headers and body, plus the same as raw bytes."""

    __slots__ = ("expires_at", "head", "headers", "outcome", "status", "tail")

    def __init__(
        self,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        outcome: int,
        expires_at: float | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.outcome = outcome
        self.expires_at = expires_at
        lines = [f"HTTP/1.1 {status} {REASONS[status]}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}\r\n")
        # The response is head + [Connection] + Date + tail; HEAD answers end after "\r\n".
        self.head = "".join(lines).encode("latin-1")
        self.tail = b"\r\n" + body  # the body is kept only here: a table can hold millions

    @property
    def body(self) -> bytes:
        """The response body."""
        return self.tail[2:]


def redirect_answer(record: LinkRecord) -> Answer:
    """The 302 for a redirect link (no cache headers, as in Trunk8)."""
    location = location_header(record.url or "")
    headers = (("Location", location), ("Content-Type", "text/html; charset=utf-8"))
    return Answer(302, headers, redirect_page(location).encode(), HIT, record.expires_at)


def _page_answer(status: int, outcome: int, body: bytes) -> Answer:
    return Answer(status, tuple(NOT_FOUND_HEADERS.items()), body, outcome)


NOT_FOUND = _page_answer(404, UNKNOWN, NOT_FOUND_PAGE.encode())
EXPIRED_ANSWER = _page_answer(404, EXPIRED, NOT_FOUND_PAGE.encode())


class HandOver(Answer):
    """A live code of another type (file, markdown, html): answered through aiohttp.

    The fast path hands such requests over; the `/{code}` dispatcher then picks the
    handler for `link_type`. Only the type is kept, so a code costs the same either way.
    """

    __slots__ = ("link_type",)

    def __init__(self, link_type: str, expires_at: float | None) -> None:
        super().__init__(404, (), b"", UNKNOWN, expires_at)
        self.link_type = link_type


class LinkTable:
    """Short code -> Answer, for the links this redirector can serve."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.updates = 0  # changes applied since start, snapshots included

    def __len__(self) -> int:
        return len(self.answers)

    def lookup(self, code: str) -> Answer:
        """The answer for a code: its redirect, a `HandOver`, or the not-found page."""
        answer = self.answers.get(code, NOT_FOUND)
        if answer.expires_at is not None and time.time() > answer.expires_at:
            return EXPIRED_ANSWER
        return answer

    def link_type(self, code: str) -> str | None:
        """The type of a live code, or None when unknown or expired (a `TypeFinder`)."""
        answer = self.lookup(code)
        if isinstance(answer, HandOver):
            return answer.link_type
        return "redirect" if answer.status == 302 else None

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a full snapshot of the links bucket; entries it cannot serve are skipped."""
        answers: dict[str, Answer] = {}
        skipped: list[str] = []
        for key, value in entries.items():
            prepared = self._prepare(key, value)
            if prepared is None:
                skipped.append(key)
            else:
                answers[prepared[0]] = prepared[1]
        if skipped:  # one line, however many: a foreign tool may have written thousands
            log.warning("ignoring %d unusable records (keys %r...)", len(skipped), skipped[:3])
        self.answers = answers
        self.updates += 1

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one put (value) or delete (None); never raises (a NATS callback calls it)."""
        self.updates += 1
        code = code_of_key(key)
        if code is None:
            return  # a foreign key names none of our codes
        prepared = self._prepare(key, value) if value is not None else None
        if prepared is None:
            if value is not None:
                log.warning("ignoring an unusable links record for key %r", key)
            self.answers.pop(code, None)
        else:
            self.answers[prepared[0]] = prepared[1]

    @staticmethod
    def _prepare(key: str, value: bytes) -> tuple[str, Answer] | None:
        """The code and answer for one bucket entry; None for a foreign or unusable one."""
        try:
            record = link_decoder.decode(value)
            if code_of_key(key) != record.code:
                return None  # stored under another code's key: not ours to serve
            if record.type != "redirect":
                return record.code, HandOver(record.type, record.expires_at)
            return record.code, redirect_answer(record)
        except (msgspec.DecodeError, ValueError, TypeError):
            return None
