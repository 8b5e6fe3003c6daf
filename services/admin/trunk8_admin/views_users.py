"""Accounts (§4.4, §4.11, §4.12): register, list, details, and deletion with a preview.

Admin rights are those of the signed-in account, also while switched to someone (T8-W23).
Deleting a user removes the account from users.toml first and waits until the
config-watcher has stopped serving their links (every instance follows the same bucket),
then removes their folder; their sessions end on their next click, since every page
re-checks the account (T8-W12). Password hashing runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from .accounts import ADMIN
from .accountwrites import (
    AccountExists,
    AccountMissing,
    Registration,
    add_account,
    folder_usage,
    human_size,
    normalised_username,
    registration_problem,
    remove_account,
    remove_folder,
)
from .datawrites import DataWriteError
from .linkrules import Problem
from .pages import ACTIVE_USER, Page, admin_page
from .passwords import hash_password
from .publish import Outcome

log = logging.getLogger("trunk8.admin")
_T = TypeVar("_T")


async def _blocking(call: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


def _require_admin(page: Page, message: str, location: str) -> None:
    """The register and switch routes do their own check, with their own texts (§4.4)."""
    if page.user is None or not page.user.is_admin:
        page.flash("error", message)
        page.redirect(location)


def _register_form(
    page: Page, values: dict[str, str] | None = None, problem: Problem | None = None
) -> web.Response:
    """The form, its problem flashed (as Trunk8 did) and shown next to its field."""
    if problem is not None:
        page.flash("error", problem.message)
    return page.render(
        "register.html",
        values=values or {},
        error_field=problem.field if problem else "",
        error_message=problem.message if problem else "",
    )


@admin_page(login=False)
async def register_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /auth/register: the new-account form (admins only, T8-027)."""
    _require_admin(page, "Admin access required to register new users.", "/auth/login")
    return _register_form(page)


@admin_page(login=False)
async def register(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /auth/register: check in Trunk8's order, write the account and its folder."""
    _require_admin(page, "Admin access required to register new users.", "/auth/login")
    assert page.form is not None and page.user is not None
    fields = {
        name: str(page.form.get(name, "")).strip()
        for name in ("username", "display_name", "password", "confirm_password")
    }
    username = normalised_username(fields["username"])
    reg = Registration(
        username=username,
        display_name=fields["display_name"] or username.title(),
        password=fields["password"],
        confirm=fields["confirm_password"],
        is_admin=str(page.form.get("is_admin", "")) == "on",
    )
    shown = {"username": fields["username"], "display_name": fields["display_name"]}
    if problem := registration_problem(reg):
        return _register_form(page, shown, problem)
    if username in await page.admin.accounts.all():
        taken = Problem("Username already exists or registration failed.", "username")
        return _register_form(page, shown, taken)
    password_hash = await _blocking(hash_password, reg.password)
    admin = page.admin
    try:
        await _blocking(
            add_account, admin.data, username, reg.display_name, password_hash, reg.is_admin
        )
    except AccountExists:
        taken = Problem("Username already exists or registration failed.", "username")
        return _register_form(page, shown, taken)
    except (DataWriteError, OSError) as err:
        log.warning("registering %s failed: %s", username, err)
        page.flash("error", f"Username already exists or registration failed. ({err})")
        return _register_form(page, shown)
    await admin.audit.record(
        page.user.username,
        "user.register",
        client=page.client,
        user=page.effective.username if page.switched and page.effective else "",
        target=username,
        detail="admin" if reg.is_admin else "user",
    )
    page.audited = True
    await admin.publisher.publish(admin.data.users_file)  # listed on every instance at once
    page.flash("success", f"User '{username}' created successfully!")
    page.redirect("/users")


@admin_page(admin_only=True)
async def users(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /users: a card per account, with totals (T8-071)."""
    admin = page.admin
    accounts = await admin.accounts.all()
    cards = [
        {
            "username": name,
            "display_name": entry.display_name or name,
            "is_admin": entry.is_admin or name == ADMIN,
            "links": admin.index.count(name),
            "created": (entry.created_at or "")[:10] or "Unknown",
        }
        for name, entry in accounts.items()
    ]
    admins = sum(1 for name, entry in accounts.items() if entry.is_admin or name == ADMIN)
    totals = {
        "users": len(cards),
        "admins": admins,
        "regular": len(cards) - admins,
        "links": sum(admin.index.count(name) for name in accounts),
    }
    return page.render("users.html", cards=cards, totals=totals)


async def _known_user(page: Page, username: str) -> Any:
    entry = (await page.admin.accounts.all()).get(username)
    if entry is None:
        page.flash("error", f"User '{username}' not found.")
        page.redirect("/users")
    return entry


@admin_page(admin_only=True)
async def user_detail(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /users/<u>: account, counts, files and links (T8-072)."""
    username = request.match_info["username"]
    entry = await _known_user(page, username)
    admin = page.admin
    links = sorted(admin.index.records(username), key=lambda r: r.code)
    usage = await _blocking(folder_usage, admin.data, username, False)
    return page.render(
        "user_detail.html",
        username=username,
        display_name=entry.display_name or username,
        is_admin=entry.is_admin or username == ADMIN,
        created=(entry.created_at or "")[:10] or "Unknown",
        links=links,
        file_links=sum(1 for record in links if record.type == "file"),
        assets=usage.files,
        assets_size=human_size(usage.size),
        base_url=page.base_url(),
    )


def _refuse_deletion(page: Page, username: str) -> None:
    assert page.user is not None
    if username == ADMIN:
        page.flash("error", "Cannot delete the admin user.")
        page.redirect("/users")
    if username == page.user.username:
        page.flash("error", "You cannot delete your own account while signed in as it.")
        page.redirect("/users")


@admin_page(admin_only=True)
async def delete_preview(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /users/<u>/delete: what goes (links, files, folder) and a confirm button."""
    username = request.match_info["username"]
    _refuse_deletion(page, username)
    await _known_user(page, username)
    admin = page.admin
    usage = await _blocking(folder_usage, admin.data, username, True)
    return page.render(
        "user_delete.html",
        username=username,
        links=admin.index.count(username),
        files=usage.files,
        size=human_size(usage.size),
        folder=admin.data.relative(admin.data.users_dir / username),
    )


@admin_page(admin_only=True)
async def delete_user(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /users/<u>/delete: the account, then (once its links are gone) its folder."""
    username = request.match_info["username"]
    _refuse_deletion(page, username)
    await _known_user(page, username)  # only accounts users.toml really holds
    assert page.user is not None
    admin = page.admin
    try:
        await _blocking(remove_account, admin.data, username)
    except AccountMissing:
        page.flash("error", f"User '{username}' not found.")
        page.redirect("/users")
    except (DataWriteError, OSError) as err:
        log.warning("deleting user %s failed: %s", username, err)
        page.flash("error", f"Failed to delete user '{username}'. ({err})")
        page.redirect("/users")
    published = await admin.publisher.publish(admin.data.users_file)
    try:
        await _blocking(remove_folder, admin.data, username)
    except (DataWriteError, OSError) as err:
        log.warning("removing the folder of deleted user %s failed: %s", username, err)
        page.flash("warning", f"The folder users/{username} could not be removed: {err}")
    if page.session.get(ACTIVE_USER) == username:
        page.session.pop(ACTIVE_USER, None)
    await admin.audit.record(
        page.user.username,
        "user.delete",
        client=page.client,
        user=page.effective.username if page.switched and page.effective else "",
        target=username,
    )
    page.audited = True
    if published.outcome is not Outcome.LIVE:
        page.flash(
            "warning",
            "The link service did not confirm yet: the user's links stop resolving as soon "
            "as it is back.",
        )
    page.flash("success", f"User '{username}' deleted successfully.")
    page.redirect("/users")
