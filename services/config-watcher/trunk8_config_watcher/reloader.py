"""Reading the data directory into the catalog: a full load, then only the files that changed.

Blocking work (file reads, TOML parsing, resolving owners) happens here in plain functions
that the service runs in an executor. A file that fails to read, parse or validate changes
nothing: its last good links stay in the catalog and the problem is returned as a
`ConfigError` event. A file whose bytes did not change is skipped entirely.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import DataFileError, parse_links, parse_users
from trunk8_shared.records import ConfigError

from .catalog import Changes, LinkCatalog, link_record, user_records

log = logging.getLogger("trunk8.config_watcher")


class ConfigLoadError(Exception):
    """The first load cannot produce a usable state (users.toml unreadable)."""


@dataclass
class Reload:
    """Outcome of one reload: link changes, account changes, rejected files."""

    links: Changes = field(default_factory=Changes)
    users_changed: bool = False
    errors: list[ConfigError] = field(default_factory=list)
    files_applied: int = 0


class Reloader:
    """Keeps a `LinkCatalog` equal to the last good content of the data directory."""

    def __init__(self, data: DataDir, catalog: LinkCatalog) -> None:
        self.data = data
        self.catalog = catalog
        self._hashes: dict[Path, str | None] = {}
        self.rejected: dict[str, str] = {}  # file -> reason, while it stays rejected

    def load_all(self) -> Reload:
        """The first full load; raises ConfigLoadError when users.toml is unusable."""
        result = Reload()
        if not self._reload_users(result):
            reason = self.rejected.get(self.data.relative(self.data.users_file), "missing")
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

    def _owner_of(self, path: Path) -> str | None:
        """The listed account whose links.toml (or folder) this path is."""
        if path.parent == self.data.users_dir:
            owner = path.name  # the folder itself appeared or went away
        elif path.name == "links.toml" and path.parent.parent == self.data.users_dir:
            owner = path.parent.name
        else:
            return None
        return owner if owner in self.catalog.users else None

    def _read(self, path: Path) -> tuple[bytes | None, bool]:
        """The file's bytes (None when missing) and whether they differ from last time."""
        try:
            content: bytes | None = path.read_bytes()
        except FileNotFoundError:
            content = None
        except OSError as err:
            self._hashes.pop(path, None)  # read it again next time
            reason = f"cannot read the file ({err.strerror or err})"
            raise DataFileError(self.data.relative(path), reason) from err
        digest = hashlib.sha256(content).hexdigest() if content is not None else None
        changed = path not in self._hashes or self._hashes[path] != digest
        self._hashes[path] = digest
        return content, changed

    def is_rejected(self, path: Path) -> bool:
        """Whether the file is currently rejected."""
        return self.data.relative(path) in self.rejected

    def _reject(self, result: Reload, err: DataFileError) -> None:
        if self.rejected.get(err.file) != err.reason:
            log.error("rejected %s: %s (keeping its last good state)", err.file, err.reason)
        self.rejected[err.file] = err.reason
        result.errors.append(ConfigError(file=err.file, reason=err.reason))

    def _accept(self, file: str) -> None:
        if self.rejected.pop(file, None) is not None:
            log.info("%s is valid again", file)

    def _reload_users(self, result: Reload) -> bool:
        """Re-read users.toml; on change, load links of new accounts and re-resolve all."""
        file = self.data.relative(self.data.users_file)
        try:
            content, changed = self._read(self.data.users_file)
            if not changed:
                return file not in self.rejected
            if content is None:
                raise DataFileError(file, "file is missing")
            users = user_records(parse_users(content, file).users)
            if not users:
                raise DataFileError(file, "no accounts (an empty or partly written file?)")
        except DataFileError as err:
            self._reject(result, err)
            return False
        self._accept(file)
        result.files_applied += 1
        before = self.catalog.users
        touched = self.catalog.set_users(users)
        result.users_changed = result.users_changed or before != users
        for owner in before.keys() - users.keys():  # forget what we knew of removed accounts
            links = self.data.links_file(owner)
            self._hashes.pop(links, None)
            self._accept(self.data.relative(links))
        for owner in users:
            if owner not in before:
                self._hashes.pop(self.data.links_file(owner), None)  # read it whatever its hash
            touched |= self._reload_links(owner, result)
        self._merge(result.links, self.catalog.resolve(touched))
        return True

    def _reload_links(self, owner: str, result: Reload) -> set[str]:
        """Re-read one user's links.toml; returns the codes it touched."""
        path = self.data.links_file(owner)
        file = self.data.relative(path)
        try:
            content, changed = self._read(path)
            if not changed:
                return set()
            if content is None:
                self._accept(file)
                return self.catalog.set_links(owner, {})  # no file: no links, as in Trunk8
            parsed = parse_links(content, file)
        except DataFileError as err:
            self._reject(result, err)
            return set()
        self._accept(file)
        result.files_applied += 1
        links = {code: link_record(code, owner, entry) for code, entry in parsed.links.items()}
        return self.catalog.set_links(owner, links)

    @staticmethod
    def _merge(into: Changes, more: Changes) -> None:
        for code, record in more.put.items():
            into.removed.pop(code, None)
            into.put[code] = record
        for code, record in more.removed.items():
            into.put.pop(code, None)
            into.removed[code] = record
