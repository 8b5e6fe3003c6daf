"""Changing a user's links.toml: add, update and remove one link, losing nothing.

Every change goes through `datawrites.edit_toml` (folder lock, re-read, atomic replace,
hand edits never overwritten), so two admin tabs or processes saving at once both keep
their change (T8-W08). Edits keep the file's comments, order and unknown keys, and the
edited link keeps keys the admin does not manage (T8-090). Large files are not re-parsed
when that is not needed: a new link whose code cannot already be in the file (its text
is not in it) is appended as a `[links.<code>]` section, and an edit or delete of a link
whose section can be delimited in the text (`tomlsections`) replaces only that section,
so a save costs about the same with 10 links or 100,000.
Everything here blocks: callers run it in an executor.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import InlineTable, Table
from tomlkit.toml_document import TOMLDocument

from trunk8_shared.datadir import DataDir

from .datawrites import DataWriteError, edit_toml, folder_lock, replace_if_unchanged
from .tomlsections import ensure_links, find_section

# The fields of a link the admin writes; any other key of an edited link is kept.
MANAGED_KEYS = (
    "type",
    "url",
    "path",
    "original_filename",
    "file_size",
    "mime_type",
    "upload_date",
    "expiration_date",
)
_PLAIN_CODE = re.compile(r"[A-Za-z0-9_-]+")
# `links` written as an inline table, with dotted keys or as an array of tables cannot
# take a new `[links.<code>]` section.
LINKS_NOT_A_SECTION = re.compile(
    r"""^[ \t]*(?:["']?links["']?[ \t]*[.=]|\[\[[ \t]*["']?links\b)""", re.MULTILINE
)

LinkFields = dict[str, Any]


class CodeTaken(Exception):
    """The code appeared in the file since it was checked."""


class LinkMissing(Exception):
    """The link is no longer in its owner's file."""


def _links_table(document: TOMLDocument, create: bool) -> Table | InlineTable | None:
    links = document.get("links")
    if links is None and create:
        links = tomlkit.table()
        document["links"] = links
    if links is not None and not isinstance(links, Table | InlineTable):
        raise DataWriteError("links.toml: `links` is not a table; fix the file first")
    return links


def _section(code: str, fields: LinkFields) -> str:
    document = tomlkit.document()
    links = tomlkit.table(is_super_table=True)
    links.append(code, _table(fields))
    document.append("links", links)
    return tomlkit.dumps(document).lstrip("\n")


def _table(fields: LinkFields) -> Table:
    table = tomlkit.table()
    for key, value in fields.items():
        table[key] = value
    return table


class LinkStore:
    """Writes links into users' links.toml files."""

    def __init__(self, data: DataDir) -> None:
        self.data = data

    def add(self, owner: str, code: str, fields: LinkFields) -> Path:
        """Add a link to the owner's file; raises CodeTaken if the file has the code."""
        path = self.data.links_file(owner)
        if self._append(path, code, fields):
            return path

        def edit(document: TOMLDocument) -> None:
            links = _links_table(document, create=True)
            assert links is not None
            if code in links:
                raise CodeTaken(code)
            if isinstance(links, InlineTable):  # `links = { ... }` takes inline entries
                entry = tomlkit.inline_table()
                entry.update(fields)
                links[code] = entry
            else:
                links.append(code, _table(fields))

        edit_toml(path, edit)
        return path

    def _append(self, path: Path, code: str, fields: LinkFields) -> bool:
        """The fast way to add: append a section when that is certainly valid; else False."""
        if not _PLAIN_CODE.fullmatch(code):
            return False
        with folder_lock(path.parent):
            try:
                before = path.read_bytes()
            except FileNotFoundError:
                return False
            text = before.decode("utf-8", errors="replace")
            if code in text or "\\u" in text or "\\U" in text or LINKS_NOT_A_SECTION.search(text):
                return False  # the slow, parsing path decides
            separator = "" if not text or text.endswith("\n") else "\n"
            data = before + f"{separator}\n{_section(code, fields)}".encode()
            return replace_if_unchanged(path, data, before)

    def update(self, owner: str, code: str, fields: LinkFields) -> LinkFields:
        """Rebuild a link's managed fields; returns its previous fields."""
        path = self.data.links_file(owner)
        done = self._edit_section(path, code, fields)
        if done is not None:
            return done
        return edit_toml(path, lambda document: _rebuild(document, code, fields))

    def remove(self, owner: str, code: str) -> LinkFields:
        """Remove a link; returns its fields (to delete its asset afterwards)."""
        path = self.data.links_file(owner)
        done = self._edit_section(path, code, None)
        if done is not None:
            return done
        return edit_toml(path, lambda document: _drop(document, code))

    def _edit_section(self, path: Path, code: str, fields: LinkFields | None) -> LinkFields | None:
        """Rebuild (or, `fields` None, cut out) only the code's section of the text.

        Returns the link's previous fields, or None when the section cannot be found for
        certain (see `tomlsections`) or the file changed meanwhile: the caller then parses
        the whole file.
        """
        with folder_lock(path.parent):
            try:
                before = path.read_bytes()
                text = before.decode("utf-8")
            except (FileNotFoundError, UnicodeDecodeError):
                return None
            span = find_section(text, code)
            if span is None:
                return None
            start, end = span
            try:
                section = tomlkit.parse(text[start:end])
            except tomlkit.exceptions.TOMLKitError:
                return None
            if fields is None:
                previous, replacement = _fields_of(section, code), _trailing_notes(section)
            else:
                previous = _rebuild(section, code, fields)
                replacement = tomlkit.dumps(section)
            new_text = ensure_links(text[:start] + replacement + text[end:])
            if not replace_if_unchanged(path, new_text.encode("utf-8"), before):
                return None
            return previous


def _trailing_notes(section: TOMLDocument) -> str:
    """Comment lines at the end of a cut-out section: they introduce the next one."""
    lines = tomlkit.dumps(section).splitlines(keepends=True)
    kept: list[str] = []
    for line in reversed(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        kept.append(line)
    return "".join(reversed(kept))


def _rebuild(document: TOMLDocument, code: str, fields: LinkFields) -> LinkFields:
    """Replace the managed fields of a link in a parsed document; its previous ones."""
    links = _links_table(document, create=False)
    if links is None or not isinstance(links.get(code), dict):
        raise LinkMissing(code)
    entry = links[code]
    previous = {key: _plain(entry[key]) for key in MANAGED_KEYS if key in entry}
    for key in previous.keys() - fields.keys():
        del entry[key]
    for key, value in fields.items():
        entry[key] = value  # in place when present: the file keeps its order
    return previous


def _fields_of(document: TOMLDocument, code: str) -> LinkFields:
    """All fields of a link in a parsed document."""
    links = _links_table(document, create=False)
    entry = links.get(code) if links is not None else None
    if not isinstance(entry, dict):
        raise LinkMissing(code)
    return {key: _plain(value) for key, value in entry.items()}


def _drop(document: TOMLDocument, code: str) -> LinkFields:
    """Remove a link from a parsed document; its fields."""
    previous = _fields_of(document, code)
    links = _links_table(document, create=False)
    assert links is not None
    del links[code]
    if not links:
        # Keep the `[links]` header Trunk8 writes: an empty file reads as broken.
        document["links"] = tomlkit.table()
    return previous


def _plain(value: Any) -> Any:
    """A tomlkit item as a plain Python value (dates as ISO text, as the watcher reads them)."""
    unwrapped = value.unwrap() if hasattr(value, "unwrap") else value
    if hasattr(unwrapped, "isoformat"):
        return unwrapped.isoformat()
    return unwrapped
