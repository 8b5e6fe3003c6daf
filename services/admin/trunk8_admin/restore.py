"""Restoring a backup zip into one user's folder (§4.15), hardened and all or nothing.

`read_backup` checks the archive before anything is written, in Trunk8's order where
Trunk8 had a check: a zip; a `links.toml`; then the entry-count cap of its own setting;
no unsafe member (absolute, `..`, backslash, drive letter, symlink, encrypted, duplicate
name); the total unpacked size (zip bombs are refused from the central directory, and
the bytes actually unpacked are counted again). Only `links.toml`, `config.toml`,
`backup_metadata.toml` and files under `assets/` are used; anything else (a
`users.toml`, say) is ignored and reported. Links are checked like the config-watcher
checks them: a link whose `path` leaves `assets/` (T8-W03) or whose code belongs to
another user is skipped and reported, never duplicated (T8-W15).

`apply_restore` then works under the user's folder lock: assets are unpacked into a
hidden staging folder beside them, the new `links.toml` and `config.toml` texts are
built (merge: backup entries win on equal codes; replace: the backup's document as it
is), and only then are files moved into place, each overwritten asset kept aside until
the end. Any error rolls every step back, so a failed restore leaves the folder as it
was. `replace` finally deletes the assets that only the removed links used. Everything
here blocks: callers run it in an executor.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import rtoml
import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.toml_document import TOMLDocument

from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import DataFileError, asset_path_problem, check_links

from .accounts import ADMIN
from .datawrites import folder_lock, fsync_folder, replace_if_unchanged
from .linkstore import LINKS_NOT_A_SECTION as _LINKS_NOT_A_SECTION

CHUNK = 256 * 1024
LINKS = "links.toml"
CONFIG = "config.toml"
METADATA = "backup_metadata.toml"
ASSETS_PREFIX = "assets/"
# Largest config.toml or metadata read from a backup (links.toml: the data file cap).
MAX_TOML_BYTES = 1024 * 1024
MAX_REPORTED = 10
_DRIVE = re.compile(r"^[A-Za-z]:")


class RestoreError(Exception):
    """A backup that is not restored; the message is Trunk8's flash where it had one."""


@dataclass(frozen=True)
class RestoreLimits:
    """Caps on what one backup may unpack to."""

    max_entries: int
    max_unpacked_bytes: int
    # The config-watcher would refuse a larger links.toml (TRUNK8_MAX_DATA_FILE_MB).
    max_links_bytes: int


@dataclass
class Backup:
    """What a checked backup holds, before anything is written."""

    links_text: bytes
    links: dict[str, Any]  # code -> link table as parsed, in file order
    config_text: bytes | None
    assets: dict[str, zipfile.ZipInfo]  # path under assets/ -> member
    created_at: str | None
    ignored: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # code -> why it is skipped


@dataclass
class Restored:
    """The outcome of a restore, for the flash messages."""

    links: int
    files: int
    created_at: str | None
    refused: dict[str, str]
    ignored: list[str]
    removed_assets: int = 0


def _unsafe(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or _DRIVE.match(name):
        return True
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".") for part in name.split("/")) or not parts:
        return True
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode) or bool(info.flag_bits & 0x1)  # symlink, or encrypted


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise RestoreError(f"Error restoring backup: {info.filename} is too large.")
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise RestoreError(f"Error restoring backup: {info.filename} is too large.")
    return data


def _toml(data: bytes, name: str) -> TOMLDocument:
    try:
        return tomlkit.parse(data.decode("utf-8"))
    except (UnicodeDecodeError, TOMLKitError) as err:
        raise RestoreError(f"Error restoring backup: {name} cannot be read ({err})") from err


def read_backup(
    archive: zipfile.ZipFile, limits: RestoreLimits, target: str, owners: Mapping[str, str]
) -> Backup:
    """Check the archive and its links (`owners`: code -> owner of every served link)."""
    members = archive.infolist()
    names = {info.filename for info in members}
    if LINKS not in names:
        raise RestoreError("Invalid backup file. Missing links.toml.")
    if len(members) > limits.max_entries:
        raise RestoreError(
            f"Invalid backup file: it has {len(members)} entries (at most {limits.max_entries})."
        )
    if len(names) != len(members) or any(_unsafe(info) for info in members):
        raise RestoreError("Invalid backup file: contains unsafe paths.")
    unpacked = sum(info.file_size for info in members)
    if unpacked > limits.max_unpacked_bytes:
        raise RestoreError(
            "Invalid backup file: it unpacks to more than "
            f"{limits.max_unpacked_bytes // (1024 * 1024)} MB."
        )
    used: dict[str, zipfile.ZipInfo] = {}
    assets: dict[str, zipfile.ZipInfo] = {}
    ignored: list[str] = []
    for info in members:
        if info.is_dir():
            continue
        if info.filename in (LINKS, CONFIG, METADATA):
            used[info.filename] = info
        elif info.filename.startswith(ASSETS_PREFIX) and len(info.filename) > len(ASSETS_PREFIX):
            assets[info.filename[len(ASSETS_PREFIX) :]] = info
        else:
            ignored.append(info.filename)
    links_text = _read_member(archive, used[LINKS], limits.max_links_bytes)
    # tomllib (fast) for checks; tomlkit only ever parses the user's current file.
    try:
        table = tomllib.loads(links_text.decode("utf-8")).get("links", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RestoreError(f"Error restoring backup: links.toml cannot be read ({err})") from err
    if not isinstance(table, dict):
        raise RestoreError("Error restoring backup: links.toml: `links` is not a table.")
    try:
        checked = check_links(links_text, LINKS)
    except DataFileError as err:
        raise RestoreError(f"Error restoring backup: {err}") from err
    refused = dict(checked.rejected)
    for code, entry in checked.entries.items():
        if entry.path is not None and (problem := asset_path_problem(entry.path)):
            refused[code] = problem
        elif owners.get(code, target) != target:
            refused[code] = f"the code belongs to {owners[code]}"
    config_text = None
    if target != ADMIN and CONFIG in used:
        config_text = _read_member(archive, used[CONFIG], MAX_TOML_BYTES)
        if not isinstance(_toml(config_text, CONFIG).get("app", {}), dict):
            raise RestoreError("Error restoring backup: config.toml: `app` is not a table.")
    created_at = None
    if METADATA in used:
        try:
            meta = tomllib.loads(_read_member(archive, used[METADATA], 1024 * 1024).decode())
            value = meta.get("backup_info", {}).get("created_at")
            created_at = value if isinstance(value, str) else None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
            created_at = None  # only shown in the flash; Trunk8 ignored it the same way
    return Backup(
        links_text=links_text,
        links=table,
        config_text=config_text,
        assets=assets,
        created_at=created_at,
        ignored=ignored,
        refused=refused,
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _links_of(text: bytes | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        links = tomllib.loads(text.decode("utf-8")).get("links", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise RestoreError(
            f"Error restoring backup: the current links.toml is broken ({err})"
        ) from err
    return links if isinstance(links, dict) else {}


def _asset_paths(links: dict[str, Any]) -> set[str]:
    return {
        entry["path"]
        for entry in links.values()
        if isinstance(entry, dict)
        and entry.get("type") in ("file", "markdown", "html")
        and isinstance(entry.get("path"), str)
        and not asset_path_problem(entry["path"])
    }


def _sections(links: dict[str, Any]) -> str:
    """`[links.<code>]` sections of `links` (rtoml: fast, whatever the count)."""
    return rtoml.dumps({"links": links}) if links else ""


def new_links_text(backup: Backup, current: bytes | None, replace: bool) -> bytes:
    """The user's next links.toml: the backup's (replace) or merged into the current one."""
    kept = {code: value for code, value in backup.links.items() if code not in backup.refused}
    if replace:
        if not backup.refused:
            return backup.links_text  # as made by the backup, byte for byte
        return _sections(kept).encode("utf-8") or b"[links]\n"
    text = current.decode("utf-8", errors="replace") if current is not None else ""
    if _LINKS_NOT_A_SECTION.search(text):
        return _merged_by_tomlkit(current, kept)  # inline or dotted `links`: rare, slower
    overlap = kept.keys() & _links_of(current).keys()
    if overlap:
        # The backup wins on equal codes: drop them from the current file first (this
        # parse costs what any whole-file save costs; the new sections are only text).
        document = _toml(current or b"", LINKS)
        table = document.get("links")
        if not isinstance(table, dict):
            raise RestoreError(
                "Error restoring backup: the current links.toml has no [links] table."
            )
        for code in overlap:
            del table[code]
        text = tomlkit.dumps(document)
    if text and not text.endswith("\n"):
        text += "\n"
    merged = text + ("\n" if text else "") + _sections(kept)
    try:
        tomllib.loads(merged)
    except tomllib.TOMLDecodeError:
        return _merged_by_tomlkit(current, kept)  # an unusual file: let tomlkit place them
    return merged.encode("utf-8")


def _merged_by_tomlkit(current: bytes | None, kept: dict[str, Any]) -> bytes:
    document = _toml(current, LINKS) if current is not None else tomlkit.document()
    table = document.get("links")
    if table is None:
        table = document["links"] = tomlkit.table()
    if not isinstance(table, dict):
        raise RestoreError("Error restoring backup: the current links.toml has no [links] table.")
    for code, value in kept.items():
        table[code] = tomlkit.item(value)
    return tomlkit.dumps(document).encode("utf-8")


def new_config_text(backup: Backup, current: bytes | None, replace: bool) -> bytes | None:
    """The user's next config.toml, or None to leave it alone (admin, or none in the zip)."""
    if backup.config_text is None:
        return None
    if replace or current is None:
        return backup.config_text
    document = _toml(current, CONFIG)
    app = document.get("app")
    if app is None:
        app = document["app"] = tomlkit.table()
    if not isinstance(app, dict):
        raise RestoreError("Error restoring backup: the current config.toml has no [app] table.")
    backup_app = _toml(backup.config_text, CONFIG).get("app", {})
    for key, value in backup_app.items():
        app[key] = value
    return tomlkit.dumps(document).encode("utf-8")


def _unpack(archive: zipfile.ZipFile, backup: Backup, stage: Path, budget: int) -> None:
    """Unpack the assets into `stage/new/`, counting the bytes really written."""
    written = 0
    for relative, info in backup.assets.items():
        target = stage / "new" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as member, open(target, "xb") as out:
            while chunk := member.read(CHUNK):
                written += len(chunk)
                if written > budget:
                    raise RestoreError("Invalid backup file: it unpacks to more than it says.")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())


@dataclass
class _Undo:
    """What to put back if a later step fails."""

    placed: list[tuple[Path, Path | None]] = field(default_factory=list)  # (asset, kept old)
    files: list[tuple[Path, bytes | None]] = field(default_factory=list)

    def roll_back(self) -> None:
        for path, old in reversed(self.files):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                replace_if_unchanged(path, old, _read(path))
        for asset, kept in reversed(self.placed):
            if kept is not None:
                os.replace(kept, asset)
            else:
                asset.unlink(missing_ok=True)


def apply_restore(
    data: DataDir,
    target: str,
    archive: zipfile.ZipFile,
    backup: Backup,
    replace: bool,
    budget: int,
) -> Restored:
    """Write the checked backup into `target`'s folder, all or nothing (caller holds no lock)."""
    folder = data.users_dir / target
    assets = data.assets_dir(target)
    links_file, config_file = data.links_file(target), folder / CONFIG
    with folder_lock(folder):
        stage = folder / f".restore-{secrets.token_hex(6)}"
        stage.mkdir()
        undo = _Undo()
        try:
            _unpack(archive, backup, stage, budget)
            links_before = _read(links_file)
            config_before = _read(config_file) if target != ADMIN else None
            links_after = new_links_text(backup, links_before, replace)
            config_after = (
                new_config_text(backup, config_before, replace) if target != ADMIN else None
            )
            old_links = _links_of(links_before)
            new_links = _links_of(links_after)
            if assets.is_symlink():
                raise RestoreError("Error restoring backup: assets/ is a symbolic link.")
            real_assets = os.path.realpath(assets)
            for relative in backup.assets:
                asset = assets / relative
                # A linked sub-folder already in assets/ must not lead the files elsewhere.
                real_parent = os.path.realpath(asset.parent)
                if os.path.commonpath([real_assets, real_parent]) != real_assets:
                    raise RestoreError(
                        f"Error restoring backup: assets/{relative} would land outside assets/."
                    )
                if asset.is_symlink() or (asset.exists() and not asset.is_file()):
                    raise RestoreError(f"Error restoring backup: assets/{relative} is not a file.")
                asset.parent.mkdir(parents=True, exist_ok=True)
                kept = None
                if asset.exists():
                    kept = stage / "old" / relative
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(asset, kept)
                undo.placed.append((asset, kept))
                os.replace(stage / "new" / relative, asset)
            if backup.assets:
                fsync_folder(assets)
            undo.files.append((links_file, links_before))
            if not replace_if_unchanged(links_file, links_after, links_before):
                raise RestoreError(
                    "Error restoring backup: links.toml changed meanwhile; try again."
                )
            if config_after is not None:
                undo.files.append((config_file, config_before))
                if not replace_if_unchanged(config_file, config_after, config_before):
                    raise RestoreError(
                        "Error restoring backup: config.toml changed meanwhile; try again."
                    )
        except BaseException:
            undo.roll_back()
            shutil.rmtree(stage, ignore_errors=True)
            raise
        removed = 0
        if replace:
            restored = set(backup.assets)
            for path in _asset_paths(old_links) - _asset_paths(new_links) - restored:
                try:
                    (assets / path).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError:
                    pass  # an unused file left behind is harmless; the restore stands
        shutil.rmtree(stage, ignore_errors=True)
    return Restored(
        links=len(backup.links) - len(backup.refused),
        files=len(backup.assets),
        created_at=backup.created_at,
        refused=backup.refused,
        ignored=backup.ignored,
        removed_assets=removed,
    )


def restore_file(
    data: DataDir,
    target: str,
    zip_path: Path,
    limits: RestoreLimits,
    owners: Mapping[str, str],
    replace: bool,
) -> Restored:
    """Check and restore the zip at `zip_path` into `target`'s folder (blocking)."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise RestoreError("Invalid backup file. Please upload a valid zip file.") from err
    with archive:
        try:
            backup = read_backup(archive, limits, target, owners)
            return apply_restore(data, target, archive, backup, replace, limits.max_unpacked_bytes)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
            # A damaged member (bad CRC, cut short) or an unsupported compression.
            raise RestoreError(f"Error restoring backup: {err}") from err
