"""Signing in and out of the admin, sessions, CSRF and throttling, through real HTTP."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningSystem, StartSystem, wait_until
from test_admin_support import (
    ADMIN_PASSWORD,
    Browser,
    admin_browser,
    admin_env,
    admin_system,
    browser,
    field_errors,
    fixture_copy,
    flashes,
)

from trunk8.embedded_nats import EmbeddedNats
from trunk8.server import HttpServer
from trunk8.targets import build_app
from trunk8_shared.settings import Settings

# Fixtures used by name in test arguments.
__all__ = ["admin_browser", "admin_env", "admin_system", "browser"]


async def test_login_page_has_trunk8_fields(browser: Browser) -> None:
    status, headers, body = await browser.get("/auth/login")
    assert status == 200
    assert "Login to Trunk8" in body
    for field in ('name="username"', 'name="password"', 'name="adminMode"', 'name="remember"'):
        assert field in body
    assert "Remember me for 30 days" in body
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "<script>" not in body and " on" + "error=" not in body  # nothing inline


async def test_pages_need_login(browser: Browser) -> None:
    for path in ("/", "/add", "/links", "/edit_link/docs"):
        status, headers, _ = await browser.get(path)
        assert (status, headers["Location"]) == (302, "/auth/login"), path
    _, _, body = await browser.get("/auth/login")
    assert ("warning", "Please log in to access this page.") in flashes(body)


async def test_admin_password_mode(browser: Browser) -> None:
    status = await browser.login("", "wrong")
    assert status == 200
    _, _, body = await browser.get("/auth/login")  # flashes were shown on the failed page
    assert await browser.login("", "  " + ADMIN_PASSWORD + " ") == 302  # trimmed (T8-019)
    status, _, body = await browser.get("/")
    assert status == 200
    assert "Welcome to Trunk8, Administrator!" in body
    assert ("success", "Successfully logged in!") in flashes(body)


async def test_failed_logins_say_why(browser: Browser) -> None:
    await browser.get("/auth/login")
    _, _, body = await browser.post("/auth/login", {"username": "", "password": "nope"})
    assert ("error", "Invalid password.") in flashes(body)
    # Flashed as in Trunk8, and shown next to the field too.
    assert field_errors(body) == {"password": "Invalid password."}
    _, _, body = await browser.post("/auth/login", {"username": "bob", "password": " "})
    assert ("error", "Password is required.") in flashes(body)
    assert field_errors(body) == {"password": "Password is required."}
    _, _, body = await browser.post("/auth/login", {"username": "ghost", "password": "x"})
    assert ("error", "Invalid username or password.") in flashes(body)
    assert field_errors(body) == {"password": "Invalid username or password."}
    assert 'value="ghost"' in body  # the username stays filled in
    assert field_errors((await browser.get("/auth/login"))[2]) == {}


async def test_login_without_csrf_token_is_refused(browser: Browser) -> None:
    await browser.get("/auth/login")
    status, _, _ = await browser.post(
        "/auth/login", {"username": "", "password": ADMIN_PASSWORD}, csrf=False
    )
    assert status == 403
    status, _, _ = await browser.get("/")
    assert status == 302  # not signed in


async def test_cross_site_post_is_refused(admin_browser: Browser) -> None:
    status, _, _ = await admin_browser.post(
        "/auth/logout", {}, headers={"Origin": "https://evil.example"}
    )
    assert status == 403
    assert (await admin_browser.get("/"))[0] == 200  # still signed in


async def test_post_from_a_sandboxed_page_is_refused(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    # A sandboxed page (an HTML link served on this host) posts with `Origin: null`.
    form = {"link_type": "redirect", "url": "https://evil.example/", "short_code": "sbx"}
    status, _, _ = await admin_browser.post("/add", form, headers={"Origin": "null"})
    assert status == 403
    assert await admin_system.location("/sbx") is None
    status, _, _ = await admin_browser.post("/auth/logout", {}, headers={"Origin": "null"})
    assert status == 403
    # The same form from the site itself is taken.
    status, _, body = await admin_browser.post("/add", form, headers={"Origin": admin_system.base})
    assert status == 200 and "Link Created Successfully!" in body
    assert await admin_system.location("/sbx") == "https://evil.example/"


async def test_logout_is_a_post_with_a_confirm_page(admin_browser: Browser) -> None:
    status, _, body = await admin_browser.get("/auth/logout")
    assert status == 200 and 'action="/auth/logout"' in body
    assert (await admin_browser.get("/"))[0] == 200  # GET changed nothing
    status, _, _ = await admin_browser.post("/auth/logout", {}, csrf=False)
    assert status == 403
    status, headers, _ = await admin_browser.post("/auth/logout", {})
    assert (status, headers["Location"]) == (302, "/auth/login")
    _, _, body = await admin_browser.get("/auth/login")
    assert ("success", "Successfully logged out!") in flashes(body)
    assert (await admin_browser.get("/"))[0] == 302


async def test_remember_me_sets_a_persistent_cookie(browser: Browser) -> None:
    await browser.get("/auth/login")
    status, headers, _ = await browser.post(
        "/auth/login", {"username": "", "password": ADMIN_PASSWORD, "remember": "1"}
    )
    assert status == 302
    assert "Max-Age=2592000" in headers["Set-Cookie"]  # 30 days from config.toml
    # Sliding: every page refreshes it.
    _, headers, _ = await browser.get("/")
    assert "Max-Age=2592000" in headers["Set-Cookie"]


async def test_browser_session_cookie_without_remember(admin_browser: Browser) -> None:
    _, headers, _ = await admin_browser.get("/")
    assert "Max-Age" not in headers["Set-Cookie"] and "expires" not in headers["Set-Cookie"]


async def test_forged_cookie_is_ignored(browser: Browser) -> None:
    browser.http.cookie_jar.update_cookies({"trunk8_session": "gAAAAABforged"})
    status, _, _ = await browser.get("/")
    assert status == 302


async def test_secret_key_is_generated_private_and_kept(
    admin_system: RunningSystem, data_dir: Path
) -> None:
    key_file = data_dir / ".trunk8" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 44  # 32 bytes, base64


async def test_session_survives_a_restart_with_the_kept_key(
    admin_env: None, start_system: StartSystem
) -> None:
    first = await start_system()
    client = Browser(first)
    try:
        assert await client.login() == 302
        second = await start_system()  # another instance on the same data directory
        client.base = second.base
        status, _, body = await client.get("/")
        assert status == 200 and "Administrator" in body
    finally:
        await client.close()


async def test_default_password_shows_a_banner(
    monkeypatch: pytest.MonkeyPatch, start_system: StartSystem, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TRUNK8_ADMIN_PASSWORD", raising=False)
    system = await start_system()
    assert "admin password is the public default" in caplog.text
    client = Browser(system)
    try:
        _, _, body = await client.get("/auth/login")
        assert "default-password-banner" in body
    finally:
        await client.close()


async def test_no_banner_with_a_real_password(browser: Browser) -> None:
    _, _, body = await browser.get("/auth/login")
    assert "default-password-banner" not in body


async def test_login_is_throttled_per_username(
    browser: Browser, admin_system: RunningSystem
) -> None:
    await browser.get("/auth/login")
    statuses = []
    for _ in range(6):
        status, headers, _ = await browser.post("/auth/login", {"username": "", "password": "x"})
        statuses.append(status)
    assert statuses == [200] * 5 + [429]
    assert int(headers["Retry-After"]) > 0
    # Even the right password waits now: guessing gains nothing.
    status, _, _ = await browser.post("/auth/login", {"username": "", "password": ADMIN_PASSWORD})
    assert status == 429
    values = await admin_system.metrics()
    assert values.get("trunk8_admin_logins_total") is None  # labelled; checked below
    _, _, text = await admin_system.get("/-/metrics")
    assert 'trunk8_admin_logins_total{outcome="throttled"} 2.0' in text


async def test_unknown_and_known_users_take_the_same_time(
    admin_env: None, start_system: StartSystem
) -> None:
    system = await start_system()
    client = Browser(system)
    try:
        await client.get("/auth/login")

        async def timed(username: str) -> float:
            # CPU time of the process (the hash runs in its executor): wall time swung
            # with the machine's load and failed on a busy CI machine.
            started = time.process_time()
            status, _, _ = await client.post(
                "/auth/login", {"username": username, "password": "wrong-password"}
            )
            assert status == 200
            return time.process_time() - started

        known = min([await timed("bob") for _ in range(2)])
        unknown = min([await timed("nobody-here") for _ in range(2)])
        # Both pay one 600,000-round PBKDF2; an instant answer would be far below half.
        assert unknown > known * 0.5 and known > unknown * 0.5
    finally:
        await client.close()


async def test_login_does_not_block_the_event_loop(browser: Browser) -> None:
    await browser.get("/auth/login")
    login = asyncio.create_task(
        browser.post("/auth/login", {"username": "bob", "password": "wrong"})
    )
    answered_during_login = 0
    while not login.done():  # PBKDF2 (600,000 rounds) runs meanwhile
        started = time.perf_counter()
        status, _, _ = await browser.system.get("/-/healthz")
        assert status == 200
        assert time.perf_counter() - started < 0.2
        answered_during_login += not login.done()
    assert (await login)[0] == 200
    assert answered_during_login >= 2


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Trunk8 0.7.0's own data directory (its accounts and password hashes)."""
    return fixture_copy(tmp_path)


async def test_trunk8_accounts_sign_in(browser: Browser) -> None:
    assert await browser.login("alice", "alice-pass-1") == 302
    _, _, body = await browser.get("/")
    assert ("success", "Welcome, Alice Example!") in flashes(body)
    assert "Welcome to Trunk8, Alice Example!" in body


async def test_non_ascii_username_signs_in(browser: Browser) -> None:
    assert await browser.login("carol_ü", "carol-pass-4") == 302


async def test_legacy_hash_is_upgraded_on_login(browser: Browser, data_dir: Path) -> None:
    users = data_dir / "users" / "users.toml"
    before = users.read_text()
    assert 'password_hash = "3a70613f' in before
    assert await browser.login("dave", "dave-pass-5") == 302
    after = users.read_text()
    dave = after.split("[users.dave]")[1]
    assert 'password_hash = "pbkdf2$600000$' in dave
    # Everything else in the file is as it was.
    assert after.replace(dave, "") == before.replace(before.split("[users.dave]")[1], "")
    # And the upgraded hash still signs in.
    other = Browser(browser.system)
    try:
        assert await other.login("dave", "dave-pass-5") == 302
        assert await other.login("dave", "wrong") == 200
    finally:
        await other.close()


async def test_admin_username_uses_the_environment_password(browser: Browser) -> None:
    assert await browser.login("admin", "fixture-admin-pw") == 200  # the file's is ignored
    assert await browser.login("admin", ADMIN_PASSWORD) == 302


async def test_deleted_account_is_signed_out(browser: Browser, data_dir: Path) -> None:
    assert await browser.login("alice", "alice-pass-1") == 302
    assert (await browser.get("/"))[0] == 200
    users = data_dir / "users" / "users.toml"
    text = users.read_text()
    start = text.index("[users.alice]")
    end = text.index("[users.bob]")
    users.write_text(text[:start] + text[end:])
    status, headers, _ = await browser.get("/")
    assert (status, headers["Location"]) == (302, "/auth/login")


async def test_admin_only_pages_redirect_other_users(
    admin_env: None, data_dir: Path, nats_server: EmbeddedNats
) -> None:
    settings = Settings(data_dir=str(data_dir), port=0, nats_url=nats_server.url)
    app = build_app("all", settings)
    server = HttpServer(app, settings)
    await server.start()
    system = RunningSystem(
        settings, server, aiohttp.ClientSession(), f"http://127.0.0.1:{server.port}"
    )
    client = Browser(system)
    try:
        await wait_until(system.ready, timeout=15)
        status, headers, _ = await client.get("/users")
        assert (status, headers["Location"]) == (302, "/auth/login")
        assert await client.login("alice", "alice-pass-1") == 302
        status, headers, _ = await client.get("/users")
        assert (status, headers["Location"]) == (302, "/")
        _, _, body = await client.get("/")
        assert ("error", "Admin access required for this page.") in flashes(body)
        assert await client.login("bob", "bob-pass-2") == 302  # is_admin in users.toml
        status, _, body = await client.get("/users")
        assert status == 200 and "User Management" in body
    finally:
        await client.close()
        await system.http.close()
        await server.stop()
