"""Changing a user's links.toml: add, update and remove one link, losing nothing.

Every change goes through `datawrites.edit_toml` (folder lock, re-read, atomic replace,
hand edits never overwritten), so two admin tabs or processes saving at once both keep
their change (T8-W08). Edits keep the file's comments, order and unknown keys, and the
edited link keeps keys the admin does not manage (T8-090). Adding a link to a large file
does not re-parse it: when the new code cannot already be in the file (its text is not
in it) and the file's `links` table is a plain one, the new `[links.<code>]` section is
appended to the text, so a save costs the same with 10 links or 100,000.
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
_LINKS_NOT_A_SECTION = re.compile(
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
            if code in text or "\\u" in text or "\\U" in text or _LINKS_NOT_A_SECTION.search(text):
                return False  # the slow, parsing path decides
            separator = "" if not text or text.endswith("\n") else "\n"
            data = before + f"{separator}\n{_section(code, fields)}".encode()
            return replace_if_unchanged(path, data, before)

    def update(self, owner: str, code: str, fields: LinkFields) -> LinkFields:
        """Rebuild a link's managed fields; returns its previous fields."""

        def edit(document: TOMLDocument) -> LinkFields:
            links = _links_table(document, create=False)
            if links is None or not isinstance(links.get(code), dict):
                raise LinkMissing(code)
            entry = links[code]
            previous = {key: entry[key] for key in MANAGED_KEYS if key in entry}
            for key in previous:
                del entry[key]
            for key, value in fields.items():
                entry[key] = value
            return {key: _plain(value) for key, value in previous.items()}

        return edit_toml(self.data.links_file(owner), edit)

    def remove(self, owner: str, code: str) -> LinkFields:
        """Remove a link; returns its fields (to delete its asset afterwards)."""

        def edit(document: TOMLDocument) -> LinkFields:
            links = _links_table(document, create=False)
            if links is None or code not in links:
                raise LinkMissing(code)
            entry = links[code]
            previous = {key: _plain(entry[key]) for key in entry} if isinstance(entry, dict) else {}
            del links[code]
            if not links:
                # Keep the `[links]` header Trunk8 writes: an empty file reads as broken.
                document["links"] = tomlkit.table()
            return previous

        return edit_toml(self.data.links_file(owner), edit)


def _plain(value: Any) -> Any:
    """A tomlkit item as a plain Python value (dates as ISO text, as the watcher reads them)."""
    unwrapped = value.unwrap() if hasattr(value, "unwrap") else value
    if hasattr(unwrapped, "isoformat"):
        return unwrapped.isoformat()
    return unwrapped
