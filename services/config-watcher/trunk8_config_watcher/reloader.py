"""Reading the data directory into the catalog: a full load, then only the files that changed.

Blocking work (file reads, TOML parsing, resolving owners) happens here in plain functions
that the service runs in an executor. Whatever goes wrong with one file, expected or not,
is that file's rejection: its last good links stay in the catalog, a `ConfigError` event
is returned, and every other file of the batch is applied. An invalid link or account is
refused alone, the rest of its file applies. A file whose bytes did not change is skipped;
at a warm start, one whose bytes match the parse memo takes its links from the published
state instead of being parsed (`parsememo`), kept undecoded until needed (`catalog`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import (
    Checked,
    DataFileError,
    LinkEntry,
    check_link_entries,
    check_users,
    entries_as_text,
    load_links_table,
    read_data_file,
)
from trunk8_shared.records import Event, LinkRecord, UserRecord, json_encoder

from .catalog import Changes, LinkCatalog, RememberedLinks, link_record, user_records
from .entrymemo import EntryMemo, check_changed, check_spliced
from .errors import ConfigLoadError
from .parsememo import FileMemo, ParseMemo, PublishedLinks, digest_of, remembered_links
from .progress import Progress
from .rejections import Rejections
from .tablesplice import LAYOUT_MIN_BYTES, spliced, table_layout

log = logging.getLogger("trunk8.config_watcher")

EMPTY_LINKS_FILE = "file is empty (being rewritten?)"
# Largest record published: far below NATS's 1 MB message cap, far above any real link.
MAX_RECORD_BYTES = 64 * 1024


def record_size_problem(record: LinkRecord | UserRecord, size: int | None = None) -> str | None:
    """Why a record is too large to publish (a multi-megabyte URL, say), or None."""
    if size is None:
        size = len(json_encoder.encode(record))
    if size > MAX_RECORD_BYTES:
        return f"too large to publish ({size} bytes; at most {MAX_RECORD_BYTES})"
    return None


@dataclass
class Reload:
    """Outcome of one reload: link changes, account changes, events to publish."""

    links: Changes = field(default_factory=Changes)
    users_changed: bool = False
    events: list[Event] = field(default_factory=list)
    files_applied: int = 0
    files_rejected: int = 0


@dataclass(frozen=True)
class ParsedLinks:
    """One links file parsed ahead of a reload: its bytes' digest and what they produce."""

    digest: str
    links: dict[str, LinkRecord]
    refused: dict[str, str]
    saves_seen: int  # `Reloader.saves_applied` when the file was read


@dataclass(frozen=True)
class AppliedSave:
    """A saver's entries applied without reading the file (replayed over an older read)."""

    number: int
    path: Path
    links: dict[str, LinkRecord]
    refused: dict[str, str]
    removed: list[str]


# Saves kept for replay; past this a file saved without pause is parsed inside the lock.
MAX_REPLAYED_SAVES = 1000


class Reloader:
    """Keeps a `LinkCatalog` equal to the last good content of the data directory."""

    def __init__(
        self, data: DataDir, catalog: LinkCatalog, rejections: Rejections, max_bytes: int
    ) -> None:
        self.data = data
        self.catalog = catalog
        self.rejections = rejections
        self.max_bytes = max_bytes
        self._hashes: dict[Path, str | None] = {}
        self.memo = ParseMemo()  # what each links file was parsed into
        self.memo_changed = False  # since it was last saved
        # Files parsed since the memo was last saved, with the links they produced: the
        # digest of those records is taken when the memo is saved (`memo_to_save`), not
        # in every re-parse (encoding 100,000 records to hash them costs 0.1 s).
        self._undigested: dict[str, dict[str, LinkRecord]] = {}
        # The published bucket while a warm start may reuse it, else None.
        self.published: PublishedLinks | None = None
        self.loading = False  # in the first load (which logs its progress)
        self.remembered_files = 0  # files taken from the memo instead of parsed
        self.entry_memos: dict[Path, EntryMemo] = {}  # what each file's entries became
        self.files_parsed = 0  # links files parsed, ahead of a reload or in it
        self.files_spliced = 0  # of those, parsed only where their text changed
        # Links files parsed by `prepare` outside the watcher's lock, used by the next
        # `reload` when the file still has those bytes.
        self.prepared: dict[Path, ParsedLinks] = {}
        self.saves_applied = 0
        self.saves: list[AppliedSave] = []  # since each file was last read as it is
        # Files applied from an older read plus the saves made since: to read again.
        self.unsettled: set[Path] = set()

    def load_all(self) -> Reload:
        """The first full load; raises ConfigLoadError when users.toml is unusable."""
        result = Reload()
        self.loading = True
        try:
            loaded = self._reload_users(result)
        finally:
            self.loading = False
        if not loaded:
            file = self.data.relative(self.data.users_file)
            reason = self.rejections.files.get(file, "missing")
            raise ConfigLoadError(f"cannot load {self.data.users_file}: {reason}")
        return result

    def reload(self, paths: set[Path] | None = None) -> Reload:
        """Re-read the given files (every file when None) and apply what changed.

        A path may also be a user's folder (moved in or out): it stands for its links.toml.
        """
        result = Reload()
        if paths is None:
            users_file = self.data.users_file
            paths = {users_file, *(self.data.links_file(owner) for owner in self.catalog.users)}
        normalised = {Path(os.path.abspath(p)) for p in paths}  # symlinks kept as they are
        if self.data.users_file in normalised and self._reload_users(result):
            normalised.discard(self.data.users_file)
        touched: set[str] = set()
        for path in normalised:
            owner = self._owner_of(path)
            if owner is not None:
                touched |= self._reload_links(owner, result)
        if touched:
            self._merge(result.links, self.catalog.resolve(touched))
        return result

    def prepare(self, paths: set[Path]) -> dict[Path, ParsedLinks]:
        """Parse the changed links files among `paths` without touching any state.

        Runs outside the watcher's lock, so a save answered meanwhile does not wait for a
        large file's parse; `reload` uses a result only if the file still has its bytes.
        Anything that goes wrong is left for `reload` to find and report.
        """
        parsed: dict[Path, ParsedLinks] = {}
        for path in {Path(os.path.abspath(p)) for p in paths}:
            owner = self._owner_of(path)
            if owner is None:
                continue
            path = self.data.links_file(owner)
            file = self.data.relative(path)
            saves_seen = self.saves_applied
            try:
                content = read_data_file(path, file, self.max_bytes)
                if not content:
                    continue
                digest = hashlib.sha256(content).hexdigest()
                if self._hashes.get(path) == digest:
                    continue  # unchanged: `reload` skips it for a hash
                # Without tomllib's verdict on a refused file (a second or more for a large
                # one caught half written): `reload` reads it again and says why.
                links, refused = self._parse_links(content, path, file, owner, verdict=False)
            except Exception:
                continue
            parsed[path] = ParsedLinks(digest, links, refused, saves_seen)
        return parsed

    def apply_entries(
        self, path: Path, entries: dict[str, dict[str, Any]], removed: list[str]
    ) -> Reload | None:
        """Apply the entries a saver changed in one links file, without reading the file.

        The entries are checked as a file read checks them (each bad one refused alone)
        and applied over the owner's last good links. Returns None when the file must be
        read instead (not a listed account's links file, or the file is rejected whole).
        The file's hash is forgotten, so its next read is applied whatever it holds: that
        read, soon after, corrects anything the saver's account of its change missed.
        """
        path = Path(os.path.abspath(path))
        owner = self._owner_of(path)
        if owner is None or path != self.data.links_file(owner):
            return None
        file = self.data.relative(path)
        if self.rejections.is_rejected(file) or not self.catalog.has_links(owner):
            return None
        result = Reload()
        links, refused = self._records(check_link_entries(entries, file), file, owner)
        self._hashes.pop(path, None)
        self._forget_memo(file)
        still = self.rejections.entries.get(file, {})
        changed = entries.keys() | set(removed)
        kept = {code: reason for code, reason in still.items() if code not in changed}
        result.events += self.rejections.refuse_links(file, {**kept, **refused})
        self.saves_applied += 1
        self.saves.append(AppliedSave(self.saves_applied, path, links, refused, list(removed)))
        # A refused entry is not served, as when the file is read.
        touched = self.catalog.update_links(owner, links, [*removed, *refused])
        self._merge(result.links, self.catalog.resolve(touched))
        return result

    def owner_rejected(self, owner: str) -> bool:
        """Whether the owner's links file is currently rejected whole."""
        return self.rejections.is_rejected(self.data.relative(self.data.links_file(owner)))

    def _owner_of(self, path: Path) -> str | None:
        """The listed account whose links.toml (or folder) this path is."""
        if path.parent == self.data.users_dir:
            owner = path.name  # the folder itself appeared or went away
        elif path.name == "links.toml" and path.parent.parent == self.data.users_dir:
            owner = path.parent.name
        else:
            return None
        return owner if owner in self.catalog.users else None

    def _read(self, path: Path, file: str) -> tuple[bytes | None, bool]:
        """The file's bytes (None when missing) and whether they differ from last time."""
        try:
            content = read_data_file(path, file, self.max_bytes)
        except DataFileError:
            self._hashes.pop(path, None)  # read it again next time
            raise
        digest = hashlib.sha256(content).hexdigest() if content is not None else None
        changed = path not in self._hashes or self._hashes[path] != digest
        self._hashes[path] = digest
        return content, changed

    def _reject(self, result: Reload, path: Path, file: str, err: Exception) -> None:
        """One file failed, expectedly or not: reject it alone and carry on."""
        if isinstance(err, DataFileError):
            reason = err.reason
        else:
            # A bug or an input nobody foresaw: still only this file's rejection.
            log.error("unexpected error reading %s", file, exc_info=err)
            reason = f"unexpected error: {type(err).__name__}: {err}"
            self._hashes.pop(path, None)  # try it again next time
        result.events.append(self.rejections.reject_file(file, reason))
        result.files_rejected += 1

    def _reload_users(self, result: Reload) -> bool:
        """Re-read users.toml; on change, load links of new accounts and re-resolve all."""
        path = self.data.users_file
        file = self.data.relative(path)
        try:
            content, changed = self._read(path, file)
            if not changed:
                return not self.rejections.is_rejected(file)
            if content is None:
                raise DataFileError(file, "file is missing")
            checked = check_users(content, file)
            if not checked.entries:
                empty = "no accounts (an empty or partly written file?)"
                raise DataFileError(file, "no valid account" if checked.rejected else empty)
            entries = dict(checked.entries)
            for name, user in user_records(entries).items():
                if problem := record_size_problem(user):
                    checked.rejected[name] = problem
                    del entries[name]
            if not entries:
                raise DataFileError(file, "no valid account")
            users = user_records(entries)  # positions without the refused ones
        except Exception as err:
            self._reject(result, path, file, err)
            return False
        self.rejections.accept_file(file)
        result.events += self.rejections.refuse_users(file, checked.rejected)
        result.files_applied += 1
        before = self.catalog.users
        first = not before  # a first load resolves every code at once, without listing them
        touched = self.catalog.set_users(users)
        result.users_changed = result.users_changed or before != users
        for owner in before.keys() - users.keys():  # forget what we knew of removed accounts
            links = self.data.links_file(owner)
            self._hashes.pop(links, None)
            self.entry_memos.pop(links, None)
            self.rejections.forget(self.data.relative(links))
        progress = Progress("first load", len(users), "files") if self.loading else None
        for owner in users:
            if owner not in before:
                self._hashes.pop(self.data.links_file(owner), None)  # read it whatever its hash
            codes = self._reload_links(owner, result)
            if not first:
                touched |= codes
            if progress is not None:
                progress.advance(links=self.catalog.link_count(owner))
        self._merge(result.links, self.catalog.resolve(None if first else touched))
        if progress is not None:
            progress.finish()
        return True

    def _reload_links(self, owner: str, result: Reload) -> set[str]:
        """Re-read one user's links.toml; returns the codes it touched."""
        path = self.data.links_file(owner)
        file = self.data.relative(path)
        try:
            content, changed = self._read(path, file)
            if not changed:
                return set()
            if content is None:
                self.entry_memos.pop(path, None)
                self.rejections.forget(file)
                self._forget_memo(file)
                return self.catalog.set_links(owner, {})  # no file: no links, as in Trunk8
            if not content:
                # Truncate-then-write caught half way; `[links]` alone means "no links".
                raise DataFileError(file, EMPTY_LINKS_FILE)
            digest = self._hashes[path] or ""
            memo = self.memo.files.get(file)
            ahead = self.prepared.get(path)
            first = not self.catalog.has_links(owner)
            remembered = remembered_links(memo, digest, owner, self.published) if first else None
            links: dict[str, LinkRecord] | RememberedLinks
            if memo is not None and remembered is not None:
                links, refused = remembered, dict(memo.refused)
                self.remembered_files += 1
            elif ahead is not None and ahead.digest == digest:
                # Taken as they are: `prepared` is dropped once this reload is done.
                links, refused = ahead.links, ahead.refused
                self._remember(file, digest, links, refused)
            elif ahead is not None and len(self.saves) <= MAX_REPLAYED_SAVES:
                # Saved again since it was prepared: that read plus the saves made since
                # (each one's write is in the file by the time it is applied). Parsing it
                # here would hold the lock; the file is read again soon instead.
                links, refused = self._replayed(path, ahead)
                self._hashes.pop(path, None)
                self.unsettled.add(path)
            else:
                links, refused = self._parse_links(content, path, file, owner)
                self._remember(file, digest, links, refused)
        except Exception as err:
            self._reject(result, path, file, err)
            return set()
        self.rejections.accept_file(file)
        result.events += self.rejections.refuse_links(file, refused)
        result.files_applied += 1
        if path not in self.unsettled:
            self.saves = [save for save in self.saves if save.path != path]  # all in the file
        if isinstance(links, RememberedLinks):
            return self.catalog.remember_links(owner, links)
        return self.catalog.set_links(owner, links)

    def _replayed(
        self, path: Path, ahead: ParsedLinks
    ) -> tuple[dict[str, LinkRecord], dict[str, str]]:
        """A prepared read of `path` with the saves applied after that read replayed over it."""
        links, refused = dict(ahead.links), dict(ahead.refused)
        for save in self.saves:
            if save.path != path or save.number <= ahead.saves_seen:
                continue
            for code in [*save.links, *save.removed]:
                refused.pop(code, None)
            for code in [*save.removed, *save.refused]:
                links.pop(code, None)
            links.update(save.links)
            refused.update(save.refused)
        return links, refused

    def _remember(
        self, file: str, digest: str, links: dict[str, LinkRecord], refused: dict[str, str]
    ) -> None:
        """Note in the parse memo what a file's bytes produced.

        In the first load its records are digested at once (part of the import), so the
        memo's first save does not digest a million records under the watcher's lock while
        the first hand edits wait; later re-parses leave that to the save.
        """
        if self.loading:
            self.memo.files[file] = FileMemo(digest, list(links), refused, digest_of(links))
        else:
            self.memo.files[file] = FileMemo(digest, list(links), refused, "")
            self._undigested[file] = links
        self.memo_changed = True

    def _forget_memo(self, file: str) -> None:
        """Drop a file from the parse memo: its last good state is not its bytes' any more."""
        self._undigested.pop(file, None)
        self.memo_changed |= self.memo.files.pop(file, None) is not None

    def memo_to_save(self) -> ParseMemo:
        """The parse memo, every file's records digested: to save, under the watcher's lock.

        A file is digested from the links its bytes produced, which the catalog may have
        changed in place since (a save's entries): that file left the memo then.
        """
        for file, links in self._undigested.items():
            self.memo.files[file].records = digest_of(links)
        self._undigested = {}
        self.memo_changed = False
        return self.memo

    def _parse_links(
        self, content: bytes, path: Path, file: str, owner: str, *, verdict: bool = True
    ) -> tuple[dict[str, LinkRecord], dict[str, str]]:
        """Parse and validate one links file: its links and the ones refused alone.

        Only entries changed since the file was last parsed are checked (`entrymemo`).
        """
        self.files_parsed += 1

        def check(entries: dict[str, Any]) -> dict[str, LinkRecord | str]:
            checked = check_link_entries(entries_as_text(entries, file), file)
            links, refused, _ = self._encoded_records(checked, file, owner)
            return {**links, **refused}

        before = self.entry_memos.get(path)
        splice = None
        if before is not None and before.layout is not None:
            splice = spliced(before.layout, content)
        outcome = check_spliced(before, splice, check) if before and splice else None
        if outcome is not None:
            self.files_spliced += 1
        else:
            table = load_links_table(content, file, dates_as_text=False, verdict=verdict)
            outcome = check_changed(table, before, check)
            if len(content) >= LAYOUT_MIN_BYTES and (layout := table_layout(content, table)):
                outcome = (*outcome[:2], replace(outcome[2], layout=layout))
        links, refused, memo = outcome
        self.entry_memos[path] = memo
        return links, refused

    def _records(
        self, checked: Checked[LinkEntry], file: str, owner: str
    ) -> tuple[dict[str, LinkRecord], dict[str, str]]:
        """The records of checked entries, and the entries refused alone with reasons."""
        links, refused, _ = self._encoded_records(checked, file, owner)
        return links, refused

    @staticmethod
    def _encoded_records(
        checked: Checked[LinkEntry], file: str, owner: str
    ) -> tuple[dict[str, LinkRecord], dict[str, str], list[bytes]]:
        refused = dict(checked.rejected)
        links: dict[str, LinkRecord] = {}
        encoded: list[bytes] = []
        for code, entry in checked.entries.items():
            try:
                record = link_record(code, owner, entry)
            except Exception as err:  # one link nobody foresaw: refuse it alone
                log.error("unexpected error in %s, link %r", file, code, exc_info=err)
                refused[code] = f"unexpected error: {type(err).__name__}: {err}"
                continue
            value = json_encoder.encode(record)
            if problem := record_size_problem(record, len(value)):
                refused[code] = problem
            else:
                links[code] = record
                encoded.append(value)
        return links, refused, encoded

    @staticmethod
    def _merge(into: Changes, more: Changes) -> None:
        if not into:  # a first load's million codes are not copied one by one
            into.put, into.removed = more.put, more.removed
            return
        for code, record in more.put.items():
            into.removed.pop(code, None)
            into.put[code] = record
        for code, record in more.removed.items():
            into.put.pop(code, None)
            into.removed[code] = record
