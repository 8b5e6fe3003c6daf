"""Re-parsing only the `[links.<code>]` tables of a large links file whose text changed.

rtoml parses a 100,000-link file in 0.3-0.4 s, most of a hand edit's cost. When a file's
previous bytes are kept with where each of its tables starts (a `TableLayout`), the new
bytes are compared with them (common prefix and suffix, a memcmp), and only the run of
whole tables covering the difference is parsed, alone.

Parsing that run alone gives what a full parse would only when the file's lines that
start with `[` are exactly its tables' headers, one per code: then each run of tables
starts and ends outside any multi-line string or array, and cannot reach into another
code's table. A layout is kept only for a file whose full parse proves it: after an
optional preamble of comments or a bare `[links]`, every such line opens `[links.`, and
there are as many of them as codes. A run spliced in is held to the same test, and its
codes must not appear elsewhere in the file. Anything else (a syntax error, an odd layout,
a change in the preamble) returns None: the caller parses the whole file, which also
gives the reference verdict and error message.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

from trunk8_shared.datafiles import parse_toml

# Files smaller than this are parsed whole (tens of milliseconds), their bytes not kept.
LAYOUT_MIN_BYTES = 1_000_000

_LINE_OPENING_BRACKET = re.compile(rb"\n[ \t]*\[")  # a line whose first non-blank is `[`
_FIRST_LINE_BRACKET = re.compile(rb"[ \t]*\[")
_LINKS_HEADER = re.compile(rb"(?:\A|\n)[ \t]*\[links\.")
_OTHER_BRACKET_LINE = re.compile(rb"\n[ \t]*\[(?!links\.)")
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class TableLayout:
    """A links file's bytes and the offset of each code's header line, in file order."""

    content: bytes
    starts: array[int]


@dataclass(frozen=True, slots=True)
class Splice:
    """The tables `first` to `end` (exclusive) of the old layout replaced by `tables`."""

    first: int
    end: int
    tables: dict[str, Any]
    layout: TableLayout


def table_layout(content: bytes, table: dict[str, Any]) -> TableLayout | None:
    """The layout of a file whose full parse gave `table` (its `[links]`), if it has one."""
    found = _LINKS_HEADER.search(content)
    if found is None:
        return None
    first = found.start() + (content[found.start()] == ord("\n"))
    if _OTHER_BRACKET_LINE.search(content, first) is not None:
        return None
    starts = _bracket_lines(content)
    del starts[: bisect_left(starts, first)]
    if len(starts) != len(table) or not _bare_preamble(content[:first]):
        return None
    return TableLayout(content, starts)


def spliced(layout: TableLayout, content: bytes) -> Splice | None:
    """The tables of `content` that differ from `layout`'s, parsed alone; None if unsure."""
    old = layout.content
    if not layout.starts or old == content:
        return None
    prefix = _common_prefix(old, content)
    suffix = min(_common_suffix(old, content), len(old) - prefix, len(content) - prefix)
    starts = layout.starts
    first = bisect_right(starts, prefix - 1) - 1  # the table holding the byte before
    if first < 0:
        return None  # the preamble changed
    # The first header wholly inside the unchanged end (its newline too) ends the run.
    end = bisect_right(starts, len(old) - suffix)
    shift = len(content) - len(old)
    begin = starts[first]
    stop = starts[end] + shift if end < len(starts) else len(content)
    run = content[begin:stop]
    tables = _tables_of_run(run)
    if tables is None:
        return None
    parsed, offsets = tables
    new_starts = array("q", starts[:first])
    new_starts.extend(map(begin.__add__, offsets))
    new_starts.extend(map(shift.__add__, starts[end:]))
    return Splice(first, end, parsed, TableLayout(content, new_starts))


def _tables_of_run(run: bytes) -> tuple[dict[str, Any], array[int]] | None:
    """A run of whole tables parsed alone, and where each starts; None unless clean."""
    if _LINKS_HEADER.match(run) is None or _OTHER_BRACKET_LINE.search(run) is not None:
        return None
    try:
        document = parse_toml(run.decode("utf-8"), verdict=False)
    except Exception:  # the whole file's parse says what is wrong, in its own words
        return None
    tables = document.get("links")
    if set(document) != {"links"} or not isinstance(tables, dict):
        return None
    offsets = _bracket_lines(run)
    if len(offsets) != len(tables) or not all(isinstance(v, dict) for v in tables.values()):
        return None
    return tables, offsets


def _bracket_lines(text: bytes) -> array[int]:
    """Offsets of the lines whose first non-blank character is `[`, in C."""
    starts = array("q", [0] if _FIRST_LINE_BRACKET.match(text) else [])
    starts.extend(map(_after_newline, _LINE_OPENING_BRACKET.finditer(text)))
    return starts


def _after_newline(match: re.Match[bytes]) -> int:
    return match.start() + 1


def _bare_preamble(text: bytes) -> bool:
    """Whether what precedes the first `[links.` header defines nothing but `[links]`."""
    if not text.strip():
        return True
    try:
        document = parse_toml(text.decode("utf-8"), verdict=False)
    except Exception:
        return False
    return document in ({}, {"links": {}})


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix: compared a chunk at a time, then halved."""
    size = min(len(a), len(b))
    low = 0
    while low < size:
        high = min(low + _CHUNK, size)
        if a[low:high] != b[low:high]:
            break
        low = high
    else:
        return size
    while low < high:  # a[:low] == b[:low], a[:high + 1] != b[:high + 1]
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: bytes, b: bytes) -> int:
    """Length of the longest common suffix (as `_common_prefix`, from the end)."""
    size = min(len(a), len(b))
    end_a, end_b = len(a), len(b)
    low = 0
    while low < size:
        high = min(low + _CHUNK, size)
        if a[end_a - high : end_a - low] != b[end_b - high : end_b - low]:
            break
        low = high
    else:
        return size
    while low < high:
        middle = (low + high + 1) // 2
        if a[end_a - middle : end_a - low] == b[end_b - middle : end_b - low]:
            low = middle
        else:
            high = middle - 1
    return low
