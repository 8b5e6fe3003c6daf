"""The admin service's own settings, and the session key kept in the data directory.

Only the admin needs the admin password and the session secret, so they live here rather
than in every service's `Settings`. The composition root builds `AdminSettings` once from
the environment; handlers never read it. With no `TRUNK8_SECRET_KEY` a random key is made
on first start and kept in `<data>/.trunk8/secret_key` (mode 0600), so sessions survive
restarts and every admin instance on the same data directory shares them (T8-W01).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from trunk8_shared.settings import SettingsError

from .proxies import parse_networks

log = logging.getLogger("trunk8.admin")

DEFAULT_ADMIN_PASSWORD = "admin"
SECRET_KEY_FILE = "secret_key"


class AdminSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What only the admin service needs; built once by the composition root."""

    admin_password: str = DEFAULT_ADMIN_PASSWORD
    # Empty: generated once and kept in the data directory.
    secret_key: str = ""
    # Login attempts allowed per client address and per username in `login_window` seconds.
    login_attempts: int = 5
    login_window: float = 60.0
    # Idle limit of a session without "remember me" (Trunk8 had none; the cookie dies with
    # the browser anyway, this bounds a stolen one).
    session_idle_hours: float = 24.0
    # Seconds a save waits for the link to be served before answering anyway.
    publish_timeout: float = 5.0
    # Links per page in /links.
    page_size: int = 50
    # Seconds between purges of expired links.
    purge_interval: float = 60.0
    # Seconds an upload may send nothing before it is given up (and its temp file removed).
    upload_idle_timeout: float = 60.0
    # Restores have their own caps (a whole user's data, not one file): the upload in
    # MiB, what it may unpack to in MiB, and how many entries it may hold (zip bombs).
    restore_max_mb: int = 2048
    restore_max_unpacked_mb: int = 4096
    restore_max_entries: int = 10_000
    # Reverse proxies (addresses or networks, comma-separated) whose X-Forwarded-For names
    # the client: nginx's address when it is in front. Empty: the peer is the client.
    trusted_proxies: str = ""

    @property
    def default_password(self) -> bool:
        """True while the admin password is Trunk8's public default (T8-W02)."""
        return self.admin_password.strip() in ("", DEFAULT_ADMIN_PASSWORD)


_ENV_FIELDS = {
    "TRUNK8_ADMIN_PASSWORD": "admin_password",
    "TRUNK8_SECRET_KEY": "secret_key",
    "TRUNK8_LOGIN_ATTEMPTS": "login_attempts",
    "TRUNK8_SESSION_IDLE_HOURS": "session_idle_hours",
    "TRUNK8_EXPIRY_PURGE_SECONDS": "purge_interval",
    "TRUNK8_UPLOAD_IDLE_SECONDS": "upload_idle_timeout",
    "TRUNK8_RESTORE_MAX_MB": "restore_max_mb",
    "TRUNK8_RESTORE_MAX_UNPACKED_MB": "restore_max_unpacked_mb",
    "TRUNK8_RESTORE_MAX_ENTRIES": "restore_max_entries",
    "TRUNK8_TRUSTED_PROXIES": "trusted_proxies",
}


def admin_settings_from(environ: Mapping[str, str], **overrides: Any) -> AdminSettings:
    """Build the admin settings from `TRUNK8_*` variables, then explicit overrides."""
    fields: dict[str, Any] = {
        field: environ[variable]
        for variable, field in _ENV_FIELDS.items()
        if environ.get(variable, "") != ""
    }
    fields.update(overrides)
    try:
        settings = msgspec.convert(fields, AdminSettings, strict=False)
    except msgspec.ValidationError as err:
        raise SettingsError(f"invalid admin setting: {err}") from err
    parse_networks(settings.trusted_proxies)  # a typo fails at start, not at sign-in
    return settings


def session_key(settings: AdminSettings, state_dir: Path) -> bytes:
    """The 32-byte key that encrypts session cookies: from the setting, else the kept one."""
    if settings.secret_key:
        # Any text works as a secret; derive a key of the size Fernet needs.
        return hashlib.sha256(settings.secret_key.encode("utf-8")).digest()
    return _kept_key(state_dir / SECRET_KEY_FILE)


def _kept_key(path: Path) -> bytes:
    """Read the key file, creating it (0600, exclusively, so instances agree) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    try:
        os.write(fd, base64.urlsafe_b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("generated a session key in %s (set TRUNK8_SECRET_KEY to choose one)", path)
    return key


def _read_key(path: Path) -> bytes:
    # Another instance may be creating it right now: its content follows within moments.
    deadline = time.monotonic() + 2.0
    text = path.read_bytes().strip()
    while not text and time.monotonic() < deadline:
        time.sleep(0.01)
        text = path.read_bytes().strip()
    try:
        key = base64.urlsafe_b64decode(text)
    except ValueError as err:
        raise SettingsError(f"{path} does not hold a session key; delete it to make one") from err
    if len(key) != 32:
        raise SettingsError(f"{path} does not hold a 32-byte key; delete it to make one")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    return key
