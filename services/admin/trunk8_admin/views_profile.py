"""The effective user's own pages (§4.10, §4.13): `/profile` and `/settings`.

Profile: display name, and a password change that works for every account with a
stored hash; the admin's password comes from `TRUNK8_ADMIN_PASSWORD` only, so the page
says so and refuses to store a hash that would never be used (T8-W13). Settings: UI and
markdown themes checked against `config/themes.toml`; `admin` writes the global
`config/config.toml`, anyone else their own `config.toml` (T8-068, T8-069), with
`tomlkit` so comments and other keys stay. Pages re-read these files on the next click,
on every instance; the files service picks up the markdown theme the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
from aiohttp import web
from tomlkit.toml_document import TOMLDocument

from .accounts import ADMIN
from .accountwrites import MAX_DISPLAY_NAME, MIN_PASSWORD, AccountMissing, update_account
from .datawrites import DataWriteError, edit_toml
from .pages import Page, admin_page
from .passwords import hash_password, verify_password

log = logging.getLogger("trunk8.admin")
_T = TypeVar("_T")

ADMIN_PASSWORD_NOTE = (
    "The admin password is set by the TRUNK8_ADMIN_PASSWORD environment variable (restart "
    "Trunk8 after changing it); it cannot be changed here."
)


async def _blocking(call: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


@admin_page()
async def profile(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /profile: the effective user's account (T8-074)."""
    assert page.effective is not None
    username = page.effective.username
    entry = (await page.admin.accounts.all()).get(username)
    if entry is None and username != ADMIN:
        page.flash("error", "User data not found.")
        page.redirect("/")
    error_field, error_message = page.take_field_error()
    return page.render(
        "profile.html",
        error_field=error_field,
        error_message=error_message,
        username=username,
        display_name=page.effective.display_name,
        is_admin=page.effective.is_admin,
        member_since=((entry.created_at if entry else None) or "")[:10] or "Unknown",
        admin_password_note=ADMIN_PASSWORD_NOTE if username == ADMIN else "",
    )


@admin_page()
async def profile_update(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /profile: `action=change_password` or `action=update_profile`."""
    assert page.form is not None and page.effective is not None
    action = str(page.form.get("action", ""))
    if action == "change_password":
        await _change_password(page)
    elif action == "update_profile":
        await _update_display_name(page)
    page.redirect("/profile")


async def _change_password(page: Page) -> None:
    """Trunk8's checks and messages, in its order (§4.13)."""
    assert page.form is not None and page.effective is not None
    admin = page.admin
    username = page.effective.username
    if username == ADMIN:
        page.flash("error", ADMIN_PASSWORD_NOTE)
        return
    current, new, confirm = (
        str(page.form.get(name, "")).strip()
        for name in ("current_password", "new_password", "confirm_password")
    )
    entry = (await admin.accounts.all()).get(username)
    stored = entry.password_hash if entry is not None else None
    if not stored or not await _blocking(verify_password, current, stored):
        page.field_error("current_password", "Current password is incorrect.")
        return
    if not new:
        page.field_error("new_password", "New password is required.")
        return
    if new != confirm:
        page.field_error("confirm_password", "New passwords do not match.")
        return
    if len(new) < MIN_PASSWORD:
        page.field_error("new_password", "Password must be at least 4 characters.")
        return
    new_hash = await _blocking(hash_password, new)
    try:
        await _blocking(update_account, admin.data, username, {"password_hash": new_hash})
    except (AccountMissing, DataWriteError, OSError) as err:
        log.warning("changing the password of %s failed: %s", username, err)
        page.flash("error", "Failed to change password.")
        return
    assert page.user is not None
    await admin.audit.record(
        page.user.username,
        "password.change",
        client=page.client,
        user=username if page.switched else "",
        target=username,
    )
    page.audited = True
    page.flash("success", "Password changed successfully.")


async def _update_display_name(page: Page) -> None:
    assert page.form is not None and page.effective is not None
    username = page.effective.username
    name = str(page.form.get("display_name", "")).strip()
    if not name:
        page.field_error("display_name", "Display name is required.")
        return
    if len(name) > MAX_DISPLAY_NAME or any(ord(c) < 32 for c in name):
        page.field_error(
            "display_name", f"Display name must be at most {MAX_DISPLAY_NAME} printable characters."
        )
        return
    try:
        await _blocking(update_account, page.admin.data, username, {"display_name": name})
    except AccountMissing:
        page.flash("error", "User data not found.")
        return
    except (DataWriteError, OSError) as err:
        page.flash("error", f"Failed to update profile. ({err})")
        return
    await page.admin.publisher.publish(page.admin.data.users_file)
    page.flash("success", "Profile updated successfully.")


def _settings_file(page: Page, username: str) -> Path:
    if username == ADMIN:
        return page.admin.data.config_file  # admin's choices are the global ones (T8-005)
    return page.admin.data.users_dir / username / "config.toml"


@admin_page()
async def settings(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /settings: both theme choices, the current ones marked (T8-068)."""
    assert page.effective is not None
    themes = page.admin.themes
    catalogue = await themes.catalogue.get()
    ui, markdown = await themes.effective(page.effective.username)
    return page.render(
        "settings.html",
        catalogue=list(catalogue.values()),
        current_theme=ui,
        current_markdown_theme=markdown,
        file=page.admin.data.relative(_settings_file(page, page.effective.username)),
    )


def _set_themes(path: Path, theme: str, markdown_theme: str) -> None:
    def edit(document: TOMLDocument) -> None:
        app = document.get("app")
        if app is None:
            app = document["app"] = tomlkit.table()
        if not isinstance(app, dict):
            raise DataWriteError(f"{path.name}: `app` is not a table; fix the file first")
        app["theme"] = theme
        app["markdown_theme"] = markdown_theme

    edit_toml(path, edit)


@admin_page()
async def settings_update(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /settings: validate both themes, write the right file (T8-069)."""
    assert page.form is not None and page.effective is not None
    catalogue = await page.admin.themes.catalogue.get()
    theme = str(page.form.get("theme", "")).strip()
    markdown_theme = str(page.form.get("markdown_theme", "")).strip()
    if theme not in catalogue:
        page.flash("error", "Invalid theme selected.")
        page.redirect("/settings")
    if markdown_theme not in catalogue:
        page.flash("error", "Invalid markdown theme selected.")
        page.redirect("/settings")
    username = page.effective.username
    if username != ADMIN and username not in await page.admin.accounts.all():
        page.flash("error", "User data not found.")
        page.redirect("/")
    path = _settings_file(page, username)
    try:
        await _blocking(_set_themes, path, theme, markdown_theme)
    except (DataWriteError, OSError) as err:
        log.warning("saving settings of %s failed: %s", username, err)
        page.flash("error", f"Error saving settings. ({err})")
        page.redirect("/settings")
    page.audit_detail = f"theme={theme} markdown_theme={markdown_theme}"
    page.flash("success", "Theme settings updated successfully!")
    page.redirect("/settings")
