"""Changing accounts in users/users.toml, and the folders that go with them (§1.4, §1.7).

Every change goes through `datawrites.edit_toml`, so the rest of the file (other
accounts, comments, unknown keys, order) stays as it was. Registration writes the
account and then its folder (`links.toml` with `[links]`, `config.toml` with `[app]`,
`assets/`, T8-006); deletion removes the account first and the folder only afterwards
(the caller waits for the links to stop being served in between), so a half-done
deletion never leaves an account without its folder. The `admin` account never gets a
password hash (T8-W13). Everything here blocks: callers run it in an executor.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from trunk8_shared.codes import username_problem
from trunk8_shared.datadir import DataDir, local_timestamp
from trunk8_shared.datafiles import MAX_USERNAME_LENGTH

from .accounts import ADMIN
from .datawrites import DataWriteError, edit_toml, replace_if_unchanged
from .linkrules import Problem

MIN_USERNAME = 3
MIN_PASSWORD = 4
MAX_DISPLAY_NAME = 200


class AccountExists(Exception):
    """The username is already in users.toml."""


class AccountMissing(Exception):
    """The username is not (or no longer) in users.toml."""


@dataclass(frozen=True)
class Registration:
    """A new account as the register form describes it."""

    username: str
    display_name: str
    password: str
    confirm: str
    is_admin: bool


def registration_problem(reg: Registration) -> Problem | None:
    """Trunk8's checks, in its order and with its messages (T8-028), naming the field at fault."""
    if not reg.username:
        return Problem("Username is required.", "username")
    if not reg.password:
        return Problem("Password is required.", "password")
    if reg.password != reg.confirm:
        return Problem("Passwords do not match.", "confirm_password")
    if len(reg.username) < MIN_USERNAME:
        return Problem("Username must be at least 3 characters.", "username")
    if len(reg.password) < MIN_PASSWORD:
        return Problem("Password must be at least 4 characters.", "password")
    if username_problem(reg.username):
        return Problem(
            "Username can only contain letters, numbers, hyphens, and underscores.", "username"
        )
    # Trunk8 has no maximum; the name becomes a folder and a NATS key, so keep it sane.
    if len(reg.username) > MAX_USERNAME_LENGTH:
        return Problem(f"Username must be at most {MAX_USERNAME_LENGTH} characters.", "username")
    if len(reg.display_name) > MAX_DISPLAY_NAME:
        return Problem(
            f"Display name must be at most {MAX_DISPLAY_NAME} characters.", "display_name"
        )
    return None


def normalised_username(typed: str) -> str:
    """One spelling per name: NFC, as new codes are (T8-W24)."""
    return unicodedata.normalize("NFC", typed.strip())


def _users_table(document: TOMLDocument) -> Table:
    users = document.get("users")
    if users is None:
        users = document["users"] = tomlkit.table(is_super_table=True)
    if not isinstance(users, Table):
        raise DataWriteError("users.toml: `users` is not a table; fix the file first")
    return users


def add_account(
    data: DataDir, username: str, display_name: str, password_hash: str, is_admin: bool
) -> None:
    """Append the account to users.toml, then create its folder and files (T8-006)."""

    def edit(document: TOMLDocument) -> None:
        users = _users_table(document)
        if username in users:
            raise AccountExists(username)
        entry = tomlkit.table()
        entry["password_hash"] = password_hash
        entry["is_admin"] = is_admin
        entry["display_name"] = display_name
        entry["created_at"] = local_timestamp()
        users.append(username, entry)

    folder = data.users_dir / username
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DataWriteError(f"users/{username} exists and is not a folder; remove it first")
    edit_toml(data.users_file, edit)
    ensure_user_files(data, username)


def ensure_user_files(data: DataDir, username: str) -> None:
    """The files Trunk8 gives an account, created only where missing (§1.7)."""
    data.assets_dir(username).mkdir(parents=True, exist_ok=True)
    _create_if_missing(data.links_file(username), b"[links]\n")
    if username != ADMIN:  # admin's settings are the global ones (T8-005)
        _create_if_missing(data.users_dir / username / "config.toml", b"[app]\n")


def _create_if_missing(path: Path, content: bytes) -> None:
    if not path.exists():
        replace_if_unchanged(path, content, None)


def remove_account(data: DataDir, username: str) -> None:
    """Remove the account's entry from users.toml (its folder stays: see `remove_folder`)."""

    def edit(document: TOMLDocument) -> None:
        users = _users_table(document)
        if username not in users:
            raise AccountMissing(username)
        del users[username]

    edit_toml(data.users_file, edit)


def remove_folder(data: DataDir, username: str) -> None:
    """Delete users/<username>/ (never following a link out of users/)."""
    if username_problem(username):
        raise DataWriteError(f"{username!r} is not a folder name of users/")
    folder = data.users_dir / username
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def update_account(data: DataDir, username: str, fields: dict[str, str]) -> None:
    """Set string fields (`display_name`, `password_hash`) of an existing account."""
    if username == ADMIN and "password_hash" in fields:
        raise DataWriteError("the admin password is set by TRUNK8_ADMIN_PASSWORD only")

    def edit(document: TOMLDocument) -> None:
        users = _users_table(document)
        entry = users.get(username)
        if not isinstance(entry, dict):
            raise AccountMissing(username)
        for key, value in fields.items():
            entry[key] = value

    edit_toml(data.users_file, edit)


@dataclass(frozen=True)
class FolderUsage:
    """What a user's folder holds: files anywhere under assets/, and their total size."""

    files: int
    size: int


def folder_usage(data: DataDir, username: str, recursive: bool = True) -> FolderUsage:
    """Count the files under (or, not `recursive`, directly in) the user's assets/."""
    assets = data.assets_dir(username)
    files = size = 0
    for root, dirs, names in os.walk(assets):
        if not recursive:
            dirs.clear()
        for name in names:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            files += 1
            size += stat.st_size
    return FolderUsage(files, size)


def human_size(size: int) -> str:
    """Bytes as Trunk8 shows them: B, KB or MB with one decimal (§4.11)."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"
