"""Helpers for the admin tests: a browser-like client that keeps cookies and CSRF tokens.

The admin password comes from the environment, as in production: `admin_env` sets it
before the system is built by the real composition root (`build_app`).
"""

from __future__ import annotations

import html
import io
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import RunningSystem, StartSystem
from reference import TRUNK8_FIXTURE

FIXTURE = TRUNK8_FIXTURE
ADMIN_PASSWORD = "test-admin-pw"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ALERT = re.compile(r'data-flash="(\w+)">\s*(.*?)\s*<(?:button|/div)', re.S)


class Browser:
    """An HTTP client with its own cookie jar, like one browser profile."""

    def __init__(
        self, system: RunningSystem, base: str = "", source_address: str | None = None
    ) -> None:
        """`base` defaults to the system's; `source_address` picks the client's own address."""
        self.system = system
        self.base = base or system.base
        local_addr = (source_address, 0) if source_address else None
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=local_addr),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies for 127.0.0.1
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.csrf = ""
        self.stale = False

    async def close(self) -> None:
        await self.http.close()

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, str], str]:
        """One request without following redirects; remembers the page's CSRF token."""
        async with self.http.request(
            method, self.base + path, allow_redirects=False, **kwargs
        ) as response:
            body = await response.text()
            if found := _CSRF.search(body):
                self.csrf = found.group(1)
                self.stale = False
            return response.status, dict(response.headers), body

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
        return await self.request("GET", path, **kwargs)

    async def post(
        self, path: str, data: dict[str, Any] | aiohttp.FormData, csrf: bool = True, **kw: Any
    ) -> tuple[int, dict[str, str], str]:
        """POST a form; the CSRF token of the last page is added unless `csrf` is False."""
        if not self.csrf or self.stale:
            await self.get("/add" if self.stale else "/auth/login")
        if isinstance(data, dict):
            data = {**({"csrf_token": self.csrf} if csrf else {}), **data}
        return await self.request("POST", path, data=data, **kw)

    async def post_multipart(
        self,
        path: str,
        fields: dict[str, str],
        files: dict[str, tuple[str, bytes]] | None = None,
        csrf: bool = True,
    ) -> tuple[int, dict[str, str], str]:
        """POST a multipart form like the add/edit pages (token first, then fields, files)."""
        if not self.csrf or self.stale:
            await self.get("/add")
        # Browsers send file names as raw UTF-8, not percent-encoded.
        form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
        if csrf:
            form.add_field("csrf_token", self.csrf)
        for name, value in fields.items():
            form.add_field(name, value)
        for name, (filename, content) in (files or {}).items():
            form.add_field(name, io.BytesIO(content), filename=filename)
        return await self.request("POST", path, data=form)

    async def login(self, username: str = "", password: str = ADMIN_PASSWORD, **extra: str) -> int:
        """Sign in through the login form; returns the status of the answer."""
        await self.get("/auth/login")
        status, _, _ = await self.post(
            "/auth/login", {"username": username, "password": password, **extra}
        )
        self.stale = status == 302  # a signed-in session has a new CSRF token
        return status

    async def follow(self, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        """The page a 302 leads to."""
        assert status == 302, status
        return await self.get(headers["Location"])


_FIELD_ERROR = re.compile(r'data-field-error="([^"]+)">(.*?)</div>', re.S)


def field_errors(body: str) -> dict[str, str]:
    """The errors a page shows next to its fields, by field name."""
    return {name: html.unescape(text) for name, text in _FIELD_ERROR.findall(body)}


def flashes(body: str) -> list[tuple[str, str]]:
    """The alerts of a page as (category, text)."""
    return [(kind, html.unescape(text)) for kind, text in _ALERT.findall(body)]


def fixture_copy(root: Path, name: str = "data") -> Path:
    """A writable copy of the data directory Trunk8 0.7.0 wrote, at `root/name`."""
    target = root / name
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("backups", "README.md"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin password for the system under test."""
    monkeypatch.setenv("TRUNK8_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.delenv("TRUNK8_SECRET_KEY", raising=False)


@pytest.fixture
async def admin_system(admin_env: None, start_system: StartSystem) -> RunningSystem:
    """The all-in-one system with the admin, over the test data directory."""
    return await start_system()


@pytest.fixture
async def browser(admin_system: RunningSystem) -> AsyncIterator[Browser]:
    client = Browser(admin_system)
    yield client
    await client.close()


@pytest.fixture
async def admin_browser(browser: Browser) -> Browser:
    """A browser signed in as admin (password-only mode)."""
    assert await browser.login() == 302
    return browser
