"""Which Bootswatch theme a markdown page uses, behind one small interface.

Trunk8 styles a markdown page with the signed-in viewer's effective markdown theme, else
the global `[app] markdown_theme` of `config/config.toml` (T8-038). Sessions belong to
the admin service, which does not exist yet, so `GlobalMarkdownTheme` answers the global
value for every viewer; a per-viewer source can implement `MarkdownThemeSource` and fall
back to it later. The file is checked once a second by a background task (a `stat`, and
a parse only when it changed), so no request ever parses TOML. A file that does not
parse keeps the last good theme (T8-W17); a name without a vendored stylesheet falls
back to `cerulean` instead of a broken stylesheet link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path
from typing import Protocol

from aiohttp import web

from trunk8_shared.datadir import THEMES

log = logging.getLogger("trunk8.files.themes")

DEFAULT_THEME = "cerulean"
KNOWN_THEMES = frozenset(key for key, _, _ in THEMES)
# Themes with a dark background: their code blocks get a dark highlighting style.
DARK_THEMES = frozenset({"cyborg", "darkly", "slate", "solar", "superhero", "vapor"})
CHECK_INTERVAL = 1.0


class MarkdownThemeSource(Protocol):
    """Tells the markdown theme to use for one request."""

    def theme_for(self, request: web.Request) -> str:
        """A key of `KNOWN_THEMES`."""
        ...


class GlobalMarkdownTheme:
    """`[app] markdown_theme` of config/config.toml, for every viewer (T8-038, anonymous)."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.theme = DEFAULT_THEME
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) last read

    def theme_for(self, request: web.Request) -> str:
        """The global markdown theme (no parsing: `refresh` keeps it current)."""
        return self.theme

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look."""
        try:
            found = os.stat(self.config_file)
        except OSError:
            seen = None
        else:
            seen = (found.st_ino, found.st_mtime_ns, found.st_size)
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            self._set(DEFAULT_THEME, "config file missing")
            return
        try:
            document = tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            log.warning(
                "%s unreadable (%s); markdown theme stays %s", self.config_file, err, self.theme
            )
            return
        app = document.get("app")
        value = app.get("markdown_theme") if isinstance(app, dict) else None
        self._set(value.strip() if isinstance(value, str) and value.strip() else DEFAULT_THEME)

    def _set(self, theme: str, why: str = "") -> None:
        if theme not in KNOWN_THEMES:
            log.warning("markdown theme %r has no stylesheet; using %s", theme, DEFAULT_THEME)
            theme = DEFAULT_THEME
        if theme != self.theme:
            log.info("markdown theme is now %s%s", theme, f" ({why})" if why else "")
        self.theme = theme

    async def run(self) -> None:
        """Check the file once a second for as long as the service runs."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                # On the loop: one `stat` of a small local file (and a parse of a few
                # hundred bytes when it changed) costs less than a hop to a thread.
                self.refresh()
            except Exception:  # a surprise must not stop theme updates for good
                log.exception("checking %s failed", self.config_file)
