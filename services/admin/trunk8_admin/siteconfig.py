"""Trunk8's settings files as the admin reads them: config/config.toml and themes (§1.2, §1.6).

Missing keys fall back to Trunk8's defaults; a file that does not parse keeps the last
good values. Each user's own `config.toml` (never admin's, T8-005) may override the UI
theme. The request-size cap and the remember-me lifetime are read once at start, as in
Trunk8 (T8-085); the per-file upload cap is read live.
"""

from __future__ import annotations

import tomllib

import msgspec

from trunk8_shared.datadir import DataDir

from .cachedfile import CachedFile

DEFAULT_THEME = "cerulean"
DEFAULT_MAX_FILE_MB = 100
DEFAULT_LIFETIME_DAYS = 30


class SiteConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The values of config/config.toml that Trunk8 reads."""

    theme: str = DEFAULT_THEME
    markdown_theme: str = DEFAULT_THEME
    max_file_size_mb: int = DEFAULT_MAX_FILE_MB
    permanent_lifetime_days: int = DEFAULT_LIFETIME_DAYS

    @property
    def max_file_bytes(self) -> int:
        """The upload cap in bytes (Trunk8 counts MiB)."""
        return self.max_file_size_mb * 1024 * 1024


def _text(table: object, key: str, default: str) -> str:
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, str) and value.strip() else default


def _number(table: object, key: str, default: int) -> int:
    value = table.get(key) if isinstance(table, dict) else None
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )


def parse_site_config(data: bytes | None) -> SiteConfig:
    """config/config.toml with Trunk8's defaults for what is missing."""
    if data is None:
        return SiteConfig()
    document = tomllib.loads(data.decode("utf-8"))
    app, session = document.get("app", {}), document.get("session", {})
    return SiteConfig(
        theme=_text(app, "theme", DEFAULT_THEME),
        markdown_theme=_text(app, "markdown_theme", DEFAULT_THEME),
        max_file_size_mb=_number(app, "max_file_size_mb", DEFAULT_MAX_FILE_MB),
        permanent_lifetime_days=_number(session, "permanent_lifetime_days", DEFAULT_LIFETIME_DAYS),
    )


def parse_user_theme(data: bytes | None) -> str | None:
    """A user's own UI theme from users/<name>/config.toml, if set."""
    if data is None:
        return None
    app = tomllib.loads(data.decode("utf-8")).get("app", {})
    value = app.get("theme") if isinstance(app, dict) else None
    return value if isinstance(value, str) and value.strip() else None


class Themes:
    """Which UI theme each page uses (T8-012): the user's own, else the global one."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.site = CachedFile(data.config_file, parse_site_config, SiteConfig())
        self._users: dict[str, CachedFile[str | None]] = {}

    async def ui_theme(self, username: str | None) -> str:
        """The UI theme for a page seen by `username` (None: anonymous)."""
        site = await self.site.get()
        if username is None or username == "admin":
            return site.theme
        cached = self._users.get(username)
        if cached is None:
            path = self.data.users_dir / username / "config.toml"
            cached = self._users[username] = CachedFile(path, parse_user_theme, None)
        return await cached.get() or site.theme
