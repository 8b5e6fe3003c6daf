"""Signing in and out (§4.4): `/auth/login` and `/auth/logout`, with Trunk8's fields and flashes.

Login attempts are throttled per client address and per username before any password is
checked; checks run in an executor and cost the same for unknown users (T8-W14). Logout
is a POST with the CSRF token; Trunk8's `GET /auth/logout` link shows a confirm button
(T8-W05). A new session is started at login, so a session fixed before it is worthless.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiohttp import web

from .accounts import ADMIN, ADMIN_DISPLAY_NAME, Identity
from .pages import ACTIVE_USER, AUTHENTICATED, REMEMBER, SEEN, USERNAME, Page, admin_page

log = logging.getLogger("trunk8.admin")

MAX_NAME_KEY = 200


def _login_form(
    page: Page, status: int = 200, username: str = "", password_error: str = ""
) -> web.Response:
    """The login page; a problem is flashed (as Trunk8 did) and shown at the password."""
    if password_error:
        page.flash("error", password_error)
    return page.render(
        "login.html",
        status=status,
        username=username,
        lifetime_days=page.admin.startup_config.permanent_lifetime_days,
        error_field="password" if password_error else "",
        error_message=password_error,
    )


@admin_page(login=False)
async def login_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /auth/login: the login page (also when signed in)."""
    return _login_form(page)


@admin_page(login=False)
async def login(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /auth/login: blank username = admin password, else users.toml (T8-017..023)."""
    assert page.form is not None
    admin = page.admin
    username = str(page.form.get("username", "")).strip()
    password = str(page.form.get("password", "")).strip()
    remember = str(page.form.get("remember", "")) != ""
    if not password:
        return _login_form(page, username=username, password_error="Password is required.")
    # Usernames are bounded in the table (a flood of long names must not fill memory).
    keys = (f"client:{page.client}", f"user:{(username or ADMIN)[:MAX_NAME_KEY]}")
    wait = admin.throttle.retry_after(*keys)
    if wait > 0:
        admin.metrics.logins.labels("throttled").inc()
        page.flash("error", "Too many login attempts. Please wait a minute and try again.")
        response = _login_form(page, status=429, username=username)
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    admin.throttle.record(*keys)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    user: Identity | None
    if not username:
        ok = await loop.run_in_executor(None, admin.accounts.check_admin_password, password)
        user = Identity(ADMIN, ADMIN_DISPLAY_NAME, True) if ok else None
        welcome, failure = "Successfully logged in!", "Invalid password."
    else:
        user = await loop.run_in_executor(None, admin.accounts.check_login, username, password)
        welcome = f"Welcome, {user.display_name}!" if user else ""
        failure = "Invalid username or password."
    if user is None:
        admin.metrics.logins.labels("failure").inc()
        log.info("failed login for %r from %s", username or "(admin mode)", page.client)
        return _login_form(page, username=username, password_error=failure)
    admin.metrics.logins.labels("success").inc()
    admin.throttle.forget(keys[1])
    log.info(
        "%s signed in from %s in %.2f s",
        user.username,
        page.client,
        time.monotonic() - started,
    )
    session = page.session
    session.invalidate()  # a fresh session (and CSRF token) for the signed-in user
    session[AUTHENTICATED] = True
    session[USERNAME] = user.username
    session[SEEN] = int(time.time())
    session.pop(ACTIVE_USER, None)
    if remember:
        session[REMEMBER] = True
        session.max_age = admin.startup_config.permanent_lifetime_days * 86400
    page.flash("success", welcome)
    page.redirect("/")


@admin_page(login=False)
async def logout_confirm(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /auth/logout: a confirm button (signing out is a POST with a CSRF token)."""
    if page.user is None:
        page.flash("success", "Successfully logged out!")
        page.redirect("/auth/login")
    return page.render(
        "confirm.html",
        title="Sign out",
        question="Sign out of Trunk8?",
        action="/auth/logout",
        button="Logout",
        button_style="primary",
        cancel="/",
    )


@admin_page(login=False)
async def logout(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /auth/logout: clear the whole session (T8-024)."""
    page.session.invalidate()
    page.flash("success", "Successfully logged out!")
    page.redirect("/auth/login")
