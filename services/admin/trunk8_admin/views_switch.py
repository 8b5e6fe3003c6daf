"""Switching to a user and back (§4.4, T8-030..032), with an audit trail.

Both are POSTs with the CSRF token; Trunk8's GET links show a confirm button instead
(T8-W05). While switched, pages act for the chosen user, but admin powers follow the
signed-in account (T8-W23): admin pages, all links, deleting users. Starting and ending
a switch, and every POST in between (`pages.admin_page`), are logged and published as
`audit.action` events naming both accounts.
"""

from __future__ import annotations

from aiohttp import web

from .pages import ACTIVE_USER, Page, admin_page


def _require_admin(page: Page, message: str) -> None:
    if page.user is None or not page.user.is_admin:
        page.flash("error", message)
        page.redirect("/")


@admin_page(login=False)
async def switch_user_confirm(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /auth/switch-user/<u>: a confirm button (switching is a POST)."""
    _require_admin(page, "Admin access required to switch users.")
    username = request.match_info["username"]
    target = await page.admin.accounts.identity(username)
    if target is None:
        page.flash("error", f"User '{username}' not found.")
        page.redirect("/users")
    return page.render(
        "confirm.html",
        title="View as user",
        question=f"Act as {target.display_name} (@{username})? Your actions are recorded.",
        action=request.path,
        button="View as User",
        button_style="primary",
        cancel="/users",
    )


@admin_page(login=False)
async def switch_user(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /auth/switch-user/<u>: act as that user until switching back."""
    _require_admin(page, "Admin access required to switch users.")
    assert page.user is not None
    username = request.match_info["username"]
    target = await page.admin.accounts.identity(username)
    if target is None:
        page.flash("error", f"User '{username}' not found.")
        page.redirect("/users")
    previous = page.effective.username if page.switched and page.effective else ""
    page.session[ACTIVE_USER] = username
    page.audited = True
    await page.admin.audit.record(
        page.user.username,
        "switch-user",
        client=page.client,
        user=username,
        target=username,
        detail=previous,
    )
    page.flash("info", f"Switched to user '{target.display_name}'")
    page.redirect("/")


@admin_page(login=False)
async def switch_back_confirm(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /auth/switch-back: a confirm button (switching back is a POST)."""
    _require_admin(page, "Admin access required.")
    return page.render(
        "confirm.html",
        title="Switch back",
        question="Switch back to your own admin view?",
        action="/auth/switch-back",
        button="Switch Back to Admin",
        button_style="primary",
        cancel="/",
    )


@admin_page(login=False)
async def switch_back(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /auth/switch-back: end the switch (T8-031)."""
    _require_admin(page, "Admin access required.")
    assert page.user is not None
    if page.switched and page.effective is not None:
        await page.admin.audit.record(
            page.user.username, "switch-back", client=page.client, user=page.effective.username
        )
    page.audited = True
    page.session.pop(ACTIVE_USER, None)
    page.flash("info", "Switched back to admin view")
    page.redirect("/")
