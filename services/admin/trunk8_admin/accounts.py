"""Accounts from users/users.toml, and signing in against them (§1.4, §4.4).

The file is re-parsed only when it changes; every page re-checks the signed-in account
against it, so a deleted user is signed out and a demoted admin loses admin pages at
once (T8-W12). Login checks are CPU-bound and run in an executor; unknown users cost as
much as known ones (T8-W14). A good login on a legacy SHA-256 hash rewrites it as PBKDF2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tomlkit
from tomlkit.toml_document import TOMLDocument

from trunk8_shared.datadir import DataDir
from trunk8_shared.datafiles import UserEntry, check_users

from .cachedfile import CachedFile
from .datawrites import DataWriteError, edit_toml
from .passwords import hash_password, is_legacy, same_secret, spend_like_a_check, verify_password

log = logging.getLogger("trunk8.admin")

ADMIN = "admin"
ADMIN_DISPLAY_NAME = "Administrator"


@dataclass(frozen=True)
class Identity:
    """Who a session belongs to, as users.toml says now."""

    username: str
    display_name: str
    is_admin: bool


def _parse(data: bytes | None) -> dict[str, UserEntry]:
    if data is None:
        raise ValueError("users/users.toml is missing")
    # Accounts the config-watcher refuses (a name that could leave users/, say) do not
    # exist here either: nobody signs in as them, and no page writes into their folder.
    return check_users(data).entries


class AccountBook:
    """The accounts of users.toml, cached per change."""

    def __init__(self, data: DataDir, admin_password: str) -> None:
        self.data = data
        self.admin_password = admin_password
        self.file: CachedFile[dict[str, UserEntry]] = CachedFile(data.users_file, _parse, {})

    async def all(self) -> dict[str, UserEntry]:
        """Every account, in users.toml order."""
        return await self.file.get()

    async def identity(self, username: str) -> Identity | None:
        """The account's current name and rights; None when it no longer exists."""
        if username == ADMIN:
            # Admin's rights come from the environment password, whatever the file says.
            entry = (await self.all()).get(ADMIN)
            name = entry.display_name if entry is not None and entry.display_name else None
            return Identity(ADMIN, name or ADMIN_DISPLAY_NAME, True)
        entry = (await self.all()).get(username)
        if entry is None:
            return None
        return Identity(username, entry.display_name or username, entry.is_admin)

    def check_admin_password(self, password: str) -> bool:
        """Blank-username login: the environment's admin password (T8-017)."""
        return same_secret(password, self.admin_password)

    def check_login(self, username: str, password: str) -> Identity | None:
        """Username login (blocking: run in an executor); the identity on success (T8-018)."""
        entry = self.file.get_now().get(username)
        if username == ADMIN:
            spend_like_a_check(password)  # same time as any account
            if entry is None or not self.check_admin_password(password):
                return None
            return Identity(ADMIN, entry.display_name or ADMIN, True)
        if entry is None or not entry.password_hash:
            spend_like_a_check(password)
            return None
        stored = entry.password_hash
        if not is_legacy(stored):
            ok = verify_password(password, stored)
        else:
            # Legacy checks are instant; spend the same time so they do not stand out.
            spend_like_a_check(password)
            ok = verify_password(password, stored)
            if ok:
                self._upgrade(username, password, stored)
        if not ok:
            return None
        return Identity(username, entry.display_name or username, entry.is_admin)

    def _upgrade(self, username: str, password: str, stored: str) -> None:
        """Rewrite a legacy hash as PBKDF2, keeping the rest of users.toml as it is."""
        new_hash = hash_password(password)

        def edit(document: TOMLDocument) -> None:
            users = document.get("users")
            if isinstance(users, dict) and isinstance(users.get(username), dict):
                entry = users[username]
                if entry.get("password_hash") == stored:  # unchanged since we checked it
                    entry["password_hash"] = tomlkit.string(new_hash)

        try:
            edit_toml(self.data.users_file, edit)
            log.info("upgraded the legacy password hash of %s", username)
        except (DataWriteError, OSError) as err:
            log.warning("could not upgrade the password hash of %s: %s", username, err)
