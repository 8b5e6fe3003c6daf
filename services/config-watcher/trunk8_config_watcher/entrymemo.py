"""What each entry of a links file was checked into, so a re-read checks only changed entries.

A hand edit of one link in a 100,000-link file used to validate, build and encode all
100,000 entries again. Checking an entry is a pure function of its code, its owner (fixed
per file) and its parsed table, so per file we keep, in file order, each entry's code, a
hash of its parsed table (values and their types) and what it was checked into (the
record, or the reason it was refused). A re-read hashes every entry and checks only those
whose hash is new; when the codes are the ones of last time in the same order (the usual
hand edit) they are matched by position, with no dict of 100,000 built. Unchanged entries
keep their very record objects, so the catalog's diff passes them over by identity. A
large file's memo also keeps its bytes and where each table starts (`tablesplice`): its
next re-read parses only the tables whose text changed (`check_spliced`). Kept in memory
only (about 24 bytes a link, plus a large file's bytes); a file without one (the first
read, or one taken from the parse memo at a warm start) is checked whole. Each
`EntryMemo` is built whole and never changed, so a read outside the watcher's lock may
use one while another replaces it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any, TypeAlias

import msgspec

from trunk8_shared.records import LinkRecord

from .tablesplice import Splice, TableLayout

Checked: TypeAlias = LinkRecord | str  # the record, or why the entry was refused

_encode = msgspec.json.Encoder().encode


def entry_hashes(values: Iterable[Any]) -> array[int] | None:
    """A hash of each entry's parsed table, or None when one cannot be encoded.

    Hashed from its JSON form, so keys, their order, values and their kinds all count
    (`1`, `1.0` and `true` differ), in C: about a microsecond an entry.
    """
    try:
        return array("q", map(hash, map(_encode, values)))
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError):
        return None  # a value nobody foresaw: the file is checked whole


@dataclass(frozen=True, slots=True)
class EntryMemo:
    """One file's entries in file order: code, hash of the parsed table, what it became."""

    codes: tuple[str, ...]
    hashes: array[int] | None
    results: tuple[Checked, ...]
    refused: frozenset[str]  # the codes whose result is a reason
    layout: TableLayout | None = None  # a large file's bytes and tables (`tablesplice`)


def check_changed(
    table: dict[str, Any],
    before: EntryMemo | None,
    check: Callable[[dict[str, Any]], dict[str, Checked]],
) -> tuple[dict[str, LinkRecord], dict[str, str], EntryMemo]:
    """The records and refusals of `table`'s entries, in file order, and the new memo.

    `check` is given the entries new or changed since `before` and returns what each
    became; the others keep what they became then (the very objects, so comparing them
    later is an identity test). Each step is a pass in C.
    """
    codes = tuple(table)
    hashes = entry_hashes(table.values())
    if before is None or before.hashes is None or hashes is None:
        checked = check(table) if table else {}
        results = list(map(checked.__getitem__, codes))
        refused_codes = {code for code, result in checked.items() if isinstance(result, str)}
    elif codes == before.codes:
        # The usual hand edit: the same codes in the same order, a few tables changed.
        # Compared position by position: no dict of the previous entries is built.
        results = list(before.results)
        changed = [*compress(range(len(codes)), map(ne, hashes, before.hashes))]
        checked = check({codes[i]: table[codes[i]] for i in changed}) if changed else {}
        refused_codes = set(before.refused)
        for i in changed:
            code = codes[i]
            results[i] = result = checked[code]
            if isinstance(result, str):
                refused_codes.add(code)
            else:
                refused_codes.discard(code)
    else:  # links added, removed, renamed or moved: matched by code
        hashed_before = dict(zip(before.codes, before.hashes, strict=True))
        fresh = compress(codes, map(ne, map(hashed_before.get, codes), hashes))
        checked = check({code: table[code] for code in fresh})
        results_before = dict(zip(before.codes, before.results, strict=True))
        results_before.update(checked)
        results = list(map(results_before.__getitem__, codes))
        kept = {code for code in before.refused if code not in checked}
        refused_codes = {code for code, result in checked.items() if isinstance(result, str)}
        refused_codes |= kept & table.keys()
    memo = EntryMemo(codes, hashes, tuple(results), frozenset(refused_codes))
    return _split(memo)


def check_spliced(
    before: EntryMemo, splice: Splice, check: Callable[[dict[str, Any]], dict[str, Checked]]
) -> tuple[dict[str, LinkRecord], dict[str, str], EntryMemo] | None:
    """As `check_changed`, for a file of which only the tables of `splice` were parsed.

    None when the result would not be a full parse's: a code of the spliced tables is
    also defined outside them, or an entry cannot be hashed.
    """
    first, end, tables = splice.first, splice.end, splice.tables
    codes = before.codes[:first] + tuple(tables) + before.codes[end:]
    hashes = entry_hashes(tables.values())
    if before.hashes is None or hashes is None or len(set(codes)) != len(codes):
        return None
    replaced = before.codes[first:end]
    hashed_before = dict(zip(replaced, before.hashes[first:end], strict=True))
    fresh = compress(tables, map(ne, map(hashed_before.get, tables), hashes))
    checked = check({code: tables[code] for code in fresh})
    results_before = dict(zip(replaced, before.results[first:end], strict=True))
    results_before.update(checked)
    results = tuple(map(results_before.__getitem__, tables))
    refused_codes = before.refused.difference(replaced)
    refused_codes |= {
        code for code, result in zip(tables, results, strict=True) if isinstance(result, str)
    }
    memo = EntryMemo(
        codes,
        before.hashes[:first] + hashes + before.hashes[end:],
        before.results[:first] + results + before.results[end:],
        refused_codes,
        splice.layout,
    )
    return _split(memo)


def _split(memo: EntryMemo) -> tuple[dict[str, LinkRecord], dict[str, str], EntryMemo]:
    """The memo's records and refusals, each in file order."""
    merged: dict[str, Any] = dict(zip(memo.codes, memo.results, strict=True))  # in C
    refused: dict[str, str] = {}
    if memo.refused:
        refused = {code: merged.pop(code) for code in memo.codes if code in memo.refused}
    return merged, refused, memo
