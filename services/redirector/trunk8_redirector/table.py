"""The in-memory link table: short code -> normalised target, answers built on first hit.

The table keeps, per code, only what an answer needs: the normalised Location of a
redirect (or the type of another link) and, for the few that have one, its expiry, packed
into a few blobs and arrays (`packed.py`: about 70 bytes a link, no object per link) with
the changes since beside them in a dict. The full 302 (head and body as bytes) is built on
a code's first hit and kept in a bounded cache. The table is a
`SnapshotSink`: the KV mirror builds the next state aside (from the link-table snapshot
and the changes after it, or from the whole bucket), installs it whole, then applies
single changes from its task; the hit path never awaits and never logs. Expiry is
checked against an injectable clock at every lookup.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Generator
from itertools import repeat
from operator import methodcaller

import msgspec

from trunk8_shared.codes import code_of_key
from trunk8_shared.location import location_header
from trunk8_shared.pages import NOT_FOUND_HEADERS, NOT_FOUND_PAGE
from trunk8_shared.plainmetrics import PlainHistogram
from trunk8_shared.records import LinkRecord, link_decoder
from trunk8_shared.snapshot import TABLE_OBJECT, SnapshotError, decode_table

from .packed import EMPTY_LINKS, Fold, Link, PackedLinks, link_meta, packable, released
from .pages import redirect_page

log = logging.getLogger("trunk8.redirector")

__all__ = ["Answer", "HandOver", "LinkTable", "location_header", "redirect_answer"]

# Outcomes, used as indexes into the plain counters of `RedirectorStats`.
HIT, UNKNOWN, EXPIRED, BAD_REQUEST, TIMEOUT, TOO_LARGE, URI_TOO_LONG, STARTING = range(8)

REASONS = {
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
# Answers kept built: the hot codes' 302s (about 1 KB each), evicted oldest first.
ANSWER_CACHE_SIZE = 65_536
# Changes kept beside the packed rows until they outnumber this share of them (and this
# many); then they are folded into new rows, a step of a millisecond or two at a time.
COMPACT_RATIO = 0.25
COMPACT_MIN = 4096
FREE_STEP = 2048  # folded changes dropped per step (about a millisecond)


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


def redirect_answer(location: str, expires_at: float | None = None) -> Answer:
    """The 302 to a normalised Location (no cache headers, as in Trunk8)."""
    headers = (("Location", location), ("Content-Type", "text/html; charset=utf-8"))
    return Answer(302, headers, redirect_page(location).encode(), HIT, expires_at)


def _page_answer(status: int, outcome: int, body: bytes) -> Answer:
    return Answer(status, tuple(NOT_FOUND_HEADERS.items()), body, outcome)


NOT_FOUND = _page_answer(404, UNKNOWN, NOT_FOUND_PAGE.encode())
EXPIRED_ANSWER = _page_answer(404, EXPIRED, NOT_FOUND_PAGE.encode())
# Before the first load a miss proves nothing: a 503 that a proxy retries on another
# redirector (nginx's `proxy_next_upstream http_503`), never a 404 for a live link.
NOT_LOADED = "not-loaded"  # the pseudo link type of every code before the first load
STARTING_ANSWER = Answer(
    503,
    (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("Retry-After", "1"),
    ),
    b"Trunk8 is starting: its links are not loaded yet.\n",
    STARTING,
)


class HandOver(Answer):
    """A live code of another type (file, markdown, html): answered through aiohttp.

    The fast path hands such requests over; the `/{code}` dispatcher then picks the
    handler for `link_type`. Only the type is kept, so a code costs the same either way.
    """

    __slots__ = ("link_type",)

    def __init__(self, link_type: str, expires_at: float | None) -> None:
        super().__init__(404, (), b"", UNKNOWN, expires_at)
        self.link_type = link_type


_UNCHANGED: Link = ("", "", None)  # no change recorded: the packed records answer
_NO_CHANGES: dict[str, Link | None] = {}  # never written: no fold under way
_pop = methodcaller("popitem")


class TableState:
    """The table's content, built aside and swapped in whole (a `StagedState`).

    Packed rows (`PackedLinks`, from a snapshot or a fold) and a dict of the changes since
    (None: deleted), consulted first. Changes are folded into new rows when they outgrow
    `COMPACT_RATIO` of the rows, so a bucket read or a stream of new links ends in packed
    rows too. A state being built folds at once (nothing is served from it yet); the live
    one in steps (`LinkTable.keep_folded`), while `changes` and the old rows keep answering.
    """

    __slots__ = ("changes", "folding", "rows", "size", "skipped", "table")

    def __init__(self, table: LinkTable, rows: PackedLinks = EMPTY_LINKS) -> None:
        self.table = table
        self.rows = rows
        self.changes: dict[str, Link | None] = {}
        self.folding = _NO_CHANGES
        self.size = len(rows)
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return self.size

    def find(self, code: str) -> Link | None:
        """The link of a code (whether it has expired or not), or None."""
        link = self.changes.get(code, _UNCHANGED)
        return self._folded(code) if link is _UNCHANGED else link

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one put (value) or delete (None); an unusable value deletes its code."""
        code = code_of_key(key)
        if code is None:
            return  # a foreign key names none of our codes
        link: Link | None = None
        if value is not None:
            record = _decode(key, code, value)
            if record is not None:
                target = location_header(record.url or "") if record.type == "redirect" else ""
                link = (record.type, target, record.expires_at)
            if link is None or not packable(code, link[0], link[1]):
                link = None
                self.skipped.append(key)
        self.size += (link is not None) - (self.find(code) is not None)
        if link is None and self._folded(code) is None:
            self.changes.pop(code, None)  # nothing to hide: keep no tombstone
        else:
            self.changes[code] = link

    def _folded(self, code: str) -> Link | None:
        """The link of a code in the rows, or in the changes being folded into new ones."""
        link = self.folding.get(code, _UNCHANGED)
        return self.rows.get(code) if link is _UNCHANGED else link

    def fold_due(self) -> bool:
        """Whether the changes outgrew their share of the rows (and no fold is under way)."""
        changes = len(self.changes)
        return changes > max(COMPACT_MIN, len(self.rows) * COMPACT_RATIO) and not self.folding

    def fold_steps(self) -> Generator[None, None, None]:
        """Fold the changes into new rows, yielding between steps.

        The changes are set aside whole as `folding` (still consulted, after `changes`),
        and `changes` starts empty and takes the changes made meanwhile; once the new rows
        are in, `folding` is dropped (a step at a time). No step depends on their number.
        """
        folding = self.folding = self.changes
        self.changes = {}
        fold = Fold(self.rows, folding, capacity=self.size)
        try:
            yield from fold.steps()
            rows = fold.result()
        except BaseException:  # failed or given up: nothing lost, later changes win
            folding.update(self.changes)
            self.changes, self.folding = folding, _NO_CHANGES
            raise
        old_buffers = [self.rows.slots, self.rows.blob]
        self.rows, self.folding = rows, _NO_CHANGES
        del fold, rows
        # The old rows' memory (at a million links 16 MB of slots and a 60 MB blob) handed
        # back a step at a time when nothing else holds it (old rows kept, a view of them):
        # each page unmapped costs the loop's thread too.
        while old_buffers:
            buffer = old_buffers.pop()
            if sys.getrefcount(buffer) == 2:  # this frame's and the call's
                yield from released(buffer)
            del buffer
            yield
        # Emptied a step at a time: freeing 250,000 changes at once holds the loop 20-30 ms.
        while folding:
            deque(map(_pop, repeat(folding, min(len(folding), FREE_STEP))), maxlen=0)
            yield

    def compact(self) -> None:
        """Fold the changes at once, if due (a state not served yet)."""
        if self.fold_due():
            deque(self.fold_steps(), maxlen=0)

    def install(self) -> int:
        """Make this the table's content; returns the number of codes."""
        if self.skipped:  # one line, however many: a foreign tool may have written thousands
            shown = self.skipped[:3]
            log.warning("ignoring %d unusable records (keys %r...)", len(self.skipped), shown)
            self.skipped = []
        self.compact()
        self.table._install(self)
        return len(self)


def _decode(key: str, code: str, value: bytes) -> LinkRecord | None:
    """The record of one bucket entry; None for an unusable one or another code's."""
    try:
        record = link_decoder.decode(value)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
    return record if record.code == code else None  # stored under another code's key


class LinkTable:
    """Short code -> Answer, for the links this redirector can serve."""

    snapshot_object = TABLE_OBJECT

    def __init__(
        self, clock: Callable[[], float] = time.time, cache_size: int = ANSWER_CACHE_SIZE
    ) -> None:
        self.clock = clock  # Unix time now; tests move it to expire links without waiting
        self.cache_size = cache_size
        self._state = TableState(self)
        self._answers: dict[str, Answer] = {}  # built answers, oldest first
        self.updates = 0  # changes applied since start, snapshots included
        self.loaded = False  # a first full state (snapshot or bucket) was installed
        self.folds = 0  # folds of the live state's changes into new rows, completed
        self.folded_changes = 0  # changes those folds took into their new rows
        self.longest_fold_step = 0.0  # CPU seconds of the last fold's longest step
        self.fold_step_seconds = PlainHistogram()  # CPU seconds of every step (the loop waits)
        self._fold_due = asyncio.Event()

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, code: str) -> bool:
        return self._state.find(code) is not None

    def lookup(self, code: str) -> Answer:
        """The answer for a code: its redirect, a `HandOver`, or the not-found page."""
        answer = self._answers.get(code)
        if answer is None:
            answer = self._build(code)
        if answer.expires_at is not None and self.clock() > answer.expires_at:
            return EXPIRED_ANSWER
        return answer

    def link_type(self, code: str) -> str | None:
        """The type of a live code, or None when unknown or expired (a `TypeFinder`)."""
        answer = self.lookup(code)
        if isinstance(answer, HandOver):
            return answer.link_type
        if answer is STARTING_ANSWER:
            return NOT_LOADED  # answered by the redirector too: its 503
        return "redirect" if answer.status == 302 else None

    def _build(self, code: str) -> Answer:
        """Build a known code's answer into the cache; unknown codes are not cached."""
        link = self._state.find(code)
        if link is None:
            return NOT_FOUND if self.loaded else STARTING_ANSWER
        link_type, location, expires_at = link
        answer: Answer
        if link_type == "redirect":
            answer = redirect_answer(location, expires_at)
        else:
            answer = HandOver(link_type, expires_at)
        answers = self._answers
        if len(answers) >= self.cache_size:
            del answers[next(iter(answers))]
        answers[code] = answer
        return answer

    def stage(self, payload: bytearray | None) -> tuple[TableState, int, str]:
        """The state in a link-table snapshot (empty for None), its revision and bucket."""
        if payload is None:
            return TableState(self), 0, ""
        snapshot = decode_table(payload)
        others, expiring = snapshot.others, snapshot.expiring
        codes, locations = snapshot.codes, snapshot.locations
        if others:
            codes = codes + list(others)
            locations = locations + [""] * len(others)
        metas = {
            code: link_meta(link_type, expiring.get(code)) for code, link_type in others.items()
        }
        for code, expires_at in expiring.items():
            metas.setdefault(code, link_meta("redirect", expires_at))
        try:
            rows = PackedLinks(codes, locations, metas)
        except ValueError as err:
            raise SnapshotError(f"unusable table snapshot ({err})") from err
        # Only the packed rows stay: the decoded columns (and the payload) go with this frame.
        return TableState(self, rows), snapshot.revision, snapshot.bucket_created

    def _install(self, state: TableState) -> None:
        self.loaded = True
        self._state = state
        self._answers = {}
        self.updates += 1

    async def keep_folded(self) -> None:
        """Fold the live state's changes into new rows whenever due, until cancelled.

        One step per turn of the loop: requests are served between steps, from the old
        rows and the changes (a fold changes no answer, so the cache stays).
        """
        while True:
            await self._fold_due.wait()
            self._fold_due.clear()
            state = self._state
            if not state.fold_due():
                continue
            folding, longest = len(state.changes), 0.0  # all of them, set aside at once
            started = time.thread_time()
            steps = state.fold_steps()
            try:
                for _ in steps:
                    longest = max(longest, self._fold_step_took(started))
                    await asyncio.sleep(0)
                    if state is not self._state:
                        break  # replaced by a whole load: its fold no longer matters
                    started = time.thread_time()
                else:
                    longest = max(longest, self._fold_step_took(started))
                    self.folds += 1
                    self.folded_changes += folding
                    self.longest_fold_step = longest
            finally:
                steps.close()

    def _fold_step_took(self, started: float) -> float:
        took = time.thread_time() - started
        self.fold_step_seconds.observe(took)
        return took

    def replace_all(self, entries: dict[str, bytes]) -> None:
        """Swap in a full snapshot of the links bucket; entries it cannot serve are skipped."""
        state = TableState(self)
        for key, value in entries.items():
            state.apply(key, value)
        state.install()

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one put (value) or delete (None); never raises (a NATS callback calls it)."""
        self.updates += 1
        state = self._state
        state.apply(key, value)
        if state.skipped:
            log.warning("ignoring an unusable links record for key %r", key)
            state.skipped.clear()
        if state.fold_due():
            self._fold_due.set()
        code = code_of_key(key)
        if code is not None:
            self._answers.pop(code, None)
