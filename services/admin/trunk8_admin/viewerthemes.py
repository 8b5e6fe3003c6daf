"""A signed-in viewer's own markdown theme, for the files service's markdown pages (T8-038).

Trunk8 styles a markdown page with the viewer's effective markdown theme (their own
`config.toml`, or the account they act as while switched), else the global one. Only
the admin can read its session cookie, so it offers this `theme_for(request)` source
and the composition root hands it to the files service when both run in one process;
elsewhere the files service keeps the global theme. It decrypts the cookie (tens of
microseconds, only for markdown pages with a cookie), re-checks the account against
users.toml as every admin page does (T8-W12), and answers only themes that have a
vendored stylesheet; anything else falls back to the global source.
"""

from __future__ import annotations

import json
from typing import Protocol

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from trunk8_shared.datadir import THEMES

from .accounts import ADMIN
from .pages import ACTIVE_USER, AUTHENTICATED, USERNAME
from .state import Admin

KNOWN_THEMES = frozenset(key for key, _, _ in THEMES)
MAX_COOKIE = 4096


class ThemeSource(Protocol):
    """The files service's `MarkdownThemeSource`: a theme for one request."""

    def theme_for(self, request: web.Request) -> str: ...


class ViewerMarkdownTheme:
    """The viewer's effective markdown theme, else `fallback`'s (the global one)."""

    def __init__(self, admin: Admin, fallback: ThemeSource, cookie_name: str, fernet: Fernet):
        self.admin = admin
        self.fallback = fallback
        self.cookie_name = cookie_name
        self.fernet = fernet

    def _viewer(self, request: web.Request) -> str | None:
        """The effective username of the request's admin session, if any."""
        cookie = request.cookies.get(self.cookie_name)
        if not cookie or len(cookie) > MAX_COOKIE:
            return None
        try:
            data = json.loads(self.fernet.decrypt(cookie.encode("ascii")))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        session = data.get("session") if isinstance(data, dict) else None
        if not isinstance(session, dict) or not session.get(AUTHENTICATED):
            return None
        username = session.get(USERNAME)
        accounts = self.admin.accounts.file.get_now()
        if not isinstance(username, str) or (username != ADMIN and username not in accounts):
            return None
        active = session.get(ACTIVE_USER)
        is_admin = username == ADMIN or accounts[username].is_admin
        if is_admin and isinstance(active, str) and active in accounts:
            return active
        return username

    def theme_for(self, request: web.Request) -> str:
        """The viewer's own markdown theme when it has a stylesheet, else the global one."""
        username = self._viewer(request)
        if username is None or username == ADMIN:
            return self.fallback.theme_for(request)
        theme = self.admin.themes.effective_now(username)[1]
        return theme if theme in KNOWN_THEMES else self.fallback.theme_for(request)
