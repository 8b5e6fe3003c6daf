"""Trunk8's settings files as the admin reads them: config.toml, themes.toml, user themes.

Missing keys fall back to Trunk8's defaults (§1.2); a file that does not parse keeps the
last good values and is named in an admin banner (T8-W17). `config/themes.toml` is read
in both of Trunk8's shapes (section or inline tables), and a plain-string entry, which
crashed Trunk8's settings page, is tolerated. Each user's own `config.toml` (never
admin's, T8-005) may override the UI and markdown themes (§1.6). The request-size cap
and the remember-me lifetime are read once at start, as in Trunk8 (T8-085); the
per-file upload cap is read live.
"""

from __future__ import annotations

import tomllib

import msgspec

from trunk8_shared.datadir import THEMES, DataDir

from .cachedfile import CachedFile

DEFAULT_THEME = "cerulean"
DEFAULT_MAX_FILE_MB = 100
DEFAULT_LIFETIME_DAYS = 30
MAX_CACHED_USERS = 10_000


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


class UserThemes(msgspec.Struct, frozen=True, kw_only=True):
    """A user's own choices in users/<name>/config.toml (None: the global value)."""

    theme: str | None = None
    markdown_theme: str | None = None


def parse_user_themes(data: bytes | None) -> UserThemes:
    """A user's own UI and markdown themes from users/<name>/config.toml, if set."""
    if data is None:
        return UserThemes()
    app = tomllib.loads(data.decode("utf-8")).get("app", {})
    return UserThemes(
        theme=_text(app, "theme", "") or None,
        markdown_theme=_text(app, "markdown_theme", "") or None,
    )


class ThemeChoice(msgspec.Struct, frozen=True, kw_only=True):
    """One selectable theme of config/themes.toml."""

    key: str
    name: str
    description: str = ""


def parse_theme_catalogue(data: bytes | None) -> dict[str, ThemeChoice]:
    """config/themes.toml: inline or section tables; a plain string value is tolerated (T8-W17)."""
    if data is None:
        raise ValueError("config/themes.toml is missing")
    themes = tomllib.loads(data.decode("utf-8")).get("themes")
    if not isinstance(themes, dict) or not themes:
        raise ValueError("config/themes.toml has no [themes] table")
    catalogue: dict[str, ThemeChoice] = {}
    for key, value in themes.items():
        if isinstance(value, dict):
            name = _text(value, "name", key.title())
            catalogue[key] = ThemeChoice(
                key=key, name=name, description=_text(value, "description", "")
            )
        elif isinstance(value, str):  # Trunk8's settings page crashed on these
            catalogue[key] = ThemeChoice(key=key, name=value.strip() or key.title())
        else:
            catalogue[key] = ThemeChoice(key=key, name=key.title())
    return catalogue


def _default_catalogue() -> dict[str, ThemeChoice]:
    return {key: ThemeChoice(key=key, name=name, description=text) for key, name, text in THEMES}


class Themes:
    """Which themes each page uses (T8-012, §1.6): the user's own, else the global ones."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.site = CachedFile(data.config_file, parse_site_config, SiteConfig())
        self.catalogue = CachedFile(data.themes_file, parse_theme_catalogue, _default_catalogue())
        self._users: dict[str, CachedFile[UserThemes]] = {}

    def user_file(self, username: str) -> CachedFile[UserThemes]:
        """The cached users/<name>/config.toml of a regular user."""
        cached = self._users.get(username)
        if cached is None:
            if len(self._users) > MAX_CACHED_USERS:
                self._users.clear()  # accounts come and go: never grow without bound
            path = self.data.users_dir / username / "config.toml"
            cached = self._users[username] = CachedFile(path, parse_user_themes, UserThemes())
        return cached

    async def effective(self, username: str | None) -> tuple[str, str]:
        """(UI theme, markdown theme) for `username` (None: anonymous, admin: global)."""
        site = await self.site.get()
        if username is None or username == "admin":
            return site.theme, site.markdown_theme
        own = await self.user_file(username).get()
        return own.theme or site.theme, own.markdown_theme or site.markdown_theme

    def effective_now(self, username: str | None) -> tuple[str, str]:
        """`effective`, read on the calling thread (small files: a `stat` when unchanged)."""
        site = self.site.get_now()
        if username is None or username == "admin":
            return site.theme, site.markdown_theme
        own = self.user_file(username).get_now()
        return own.theme or site.theme, own.markdown_theme or site.markdown_theme

    async def ui_theme(self, username: str | None) -> str:
        """The UI theme for a page seen by `username` (None: anonymous)."""
        return (await self.effective(username))[0]
