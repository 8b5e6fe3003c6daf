"""The pages of a link's life (§4.5 to §4.9): dashboard, add, list, edit, delete.

Lists and uniqueness checks read the link index (the mirrored bucket), never the files.
Saves follow `saving.py` and then wait until the change is served, so the page that
answers a save already reflects it, and so does `/<code>`.
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from typing import Any

import segno
from aiohttp import web

from trunk8_shared.datafiles import LinkEntry, display_name
from trunk8_shared.records import LinkRecord

from .datawrites import DataWriteError
from .forms import UploadForm, read_upload_form
from .linkrules import Draft, Problem, code_problem, draft_link, form_expiry, random_code
from .linkstore import CodeTaken, LinkMissing
from .listing import LinkQuery, list_links, type_counts
from .pages import Page, admin_page
from .publish import Outcome, Published
from .saving import delete_link, save_link, taken_codes

log = logging.getLogger("trunk8.admin")


def _owner_of(page: Page, code: str) -> LinkRecord:
    """The link behind an edit/delete URL, if this session may change it (T8-060)."""
    record = page.admin.index.get(code)
    if record is None:
        page.flash("error", f"Link '{code}' not found.")
        page.redirect("/links")
    assert page.user is not None and page.effective is not None
    if not page.user.is_admin and record.owner != page.effective.username:
        verb = "edit" if page.request.path.startswith("/edit_link/") else "delete"
        page.flash("error", f"You don't have permission to {verb} this link.")
        page.redirect("/links")
    return record


def _published_flash(page: Page, published: Published) -> None:
    if published.outcome is Outcome.PENDING:
        page.flash(
            "warning",
            "Saved. The link service is not reachable right now: the change goes live "
            "as soon as it is back.",
        )
    elif published.outcome is Outcome.REJECTED:
        page.flash("error", f"Saved, but the links file is not served: {published.reason}")


@admin_page()
async def dashboard(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /: welcome, own link count; admin totals (T8-067)."""
    admin = page.admin
    assert page.effective is not None and page.user is not None
    own = admin.index.count(page.effective.username)
    totals = None
    if page.user.is_admin and not page.switched:
        totals = {"users": len(await admin.accounts.all()), "links": len(admin.index)}
    return page.render("dashboard.html", own_links=own, totals=totals)


def _file_limits(page: Page) -> dict[str, int]:
    cap = page.admin.startup_config.max_file_bytes
    return {"file": cap, "markdown_file": cap, "html_file": cap}


async def _read_link_form(page: Page, owner: str) -> UploadForm:
    admin = page.admin
    if page.form is not None:  # sent urlencoded (a script): fields only, checked already
        return UploadForm(fields={k: v for k, v in page.form.items() if isinstance(v, str)})
    return await read_upload_form(
        page.request,
        page.csrf_token,
        admin.data.assets_dir(owner),
        admin.startup_config.max_file_bytes,
        _file_limits(page),
        admin.admin_settings.upload_idle_timeout,
    )


def _add_form(
    page: Page, form: UploadForm | None = None, problem: Problem | None = None
) -> web.Response:
    if problem is not None:
        page.flash("error", problem.message)
    values = dict(form.fields) if form is not None else {}
    return page.render(
        "link_form.html",
        editing=False,
        values=values,
        error_field=problem.field if problem else "",
        error_message=problem.message if problem else "",
        max_mb=page.admin.startup_config.max_file_size_mb,
    )


@admin_page()
async def add_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /add: the form of §4.5."""
    return _add_form(page)


@admin_page()
async def add(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /add: check everything, write asset then TOML, answer once it is served."""
    admin = page.admin
    assert page.effective is not None
    owner = page.effective.username
    form = await _read_link_form(page, owner)
    try:
        # One spelling per code: "é" typed as e + accent becomes the single character.
        code = unicodedata.normalize("NFC", form.get("short_code").strip())
        taken = await taken_codes(admin)
        if not code:
            code = random_code(taken)
        if not form.get("link_type").strip():
            raise Problem("Link type is required.", "link_type")
        if problem := code_problem(code, taken):
            raise problem
        site = await admin.themes.site.get()  # the per-file cap is read live (T8-085)
        draft = draft_link(form, code, site.max_file_bytes)
        published, _ = await save_link(admin, owner, code, draft, new=True)
        form.discard()  # uploads the link did not use
    except Problem as problem:
        form.discard()
        return _add_form(page, form, problem)
    except CodeTaken:
        form.discard()
        return _add_form(page, form, Problem(f"Short code '{code}' already exists.", "short_code"))
    except (DataWriteError, OSError) as err:
        form.discard()
        log.warning("saving link %r of %s failed: %s", code, owner, err)
        return _add_form(page, form, Problem(f"Error saving link. ({err})"))
    _published_flash(page, published)
    page.audit_detail = f"created {code}"
    if not code.isascii():
        page.flash(
            "warning",
            "This code has non-ASCII characters, some of which look like others (a Cyrillic "
            "and a Latin 'a', say): share it as a link or QR code rather than by typing it.",
        )
    short_url = page.base_url() + code
    qr = segno.make(short_url, error="m").svg_inline(scale=4, border=2, dark="#000", light="#fff")
    return page.render("created.html", code=code, short_url=short_url, qr_svg=qr, draft=draft)


@admin_page()
async def links(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /links: search, filter, sort and page through links (T8-057..059)."""
    admin = page.admin
    assert page.user is not None and page.effective is not None
    everyone = page.user.is_admin and not page.switched
    accounts = await admin.accounts.all()
    query = LinkQuery.from_request(request, admin.admin_settings.page_size)
    index = admin.index
    owners = index.owners() if everyone else [page.effective.username]
    order = {name: position for position, name in enumerate(accounts)}
    result = list_links(index, owners, query, order)
    return page.render(
        "links.html",
        everyone=everyone,
        query=query,
        result=result,
        counts=type_counts(index.type_counts(None if everyone else page.effective.username)),
        owners=list(accounts) if everyone else [],
        base_url=page.base_url(),
        target_of=_target,
        expiry_of=_expiry,
        pages=max(1, math.ceil(result.total / query.page_size)),
    )


def _target(record: LinkRecord) -> dict[str, Any]:
    """What the target column shows: a safe link for web URLs, text otherwise (T8-W06)."""
    if record.type == "redirect":
        url = record.url or ""
        live = url.lower().startswith(("http://", "https://"))
        return {"text": url, "href": url if live else None}
    entry = LinkEntry(
        type=record.type, path=record.path, original_filename=record.original_filename
    )
    return {"text": display_name(entry), "href": None}


def _expiry(record: LinkRecord) -> dict[str, Any]:
    if not record.expiration_date:
        return {"text": "Never", "expired": False}
    expired = record.expires_at is not None and record.expires_at < time.time()
    return {"text": record.expiration_date[:10], "expired": expired}


def _edit_page(
    page: Page, record: LinkRecord, values: dict[str, str] | None = None
) -> web.Response:
    problem_field, problem_message = page.take_field_error()
    if values is None:
        values = {"link_type": record.type, "url": record.url or ""}
        expiry = form_expiry(record.expiration_date)
        if expiry:
            values.update(enable_expiration="on", expiration_date=expiry)
    entry = LinkEntry(
        type=record.type, path=record.path, original_filename=record.original_filename
    )
    return page.render(
        "link_form.html",
        editing=True,
        record=record,
        current_file=display_name(entry) if record.path else "",
        values=values,
        error_field=problem_field,
        error_message=problem_message,
        max_mb=page.admin.startup_config.max_file_size_mb,
    )


@admin_page()
async def edit_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /edit_link/<code>: the form pre-filled (T8-061)."""
    record = _owner_of(page, request.match_info["code"])
    return _edit_page(page, record)


@admin_page()
async def edit(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /edit_link/<code>: rebuild the link; the code never changes (T8-062..065)."""
    admin = page.admin
    code = request.match_info["code"]
    record = _owner_of(page, code)
    form = await _read_link_form(page, record.owner)
    draft: Draft | None = None
    try:
        site = await admin.themes.site.get()
        draft = draft_link(form, code, site.max_file_bytes, current=record)
        published, warning = await save_link(admin, record.owner, code, draft, new=False)
        form.discard()  # uploads the link did not use
    except Problem as problem:
        form.discard()
        page.field_error(problem.field, problem.message)
        page.redirect(f"/edit_link/{_quoted(code)}")
    except LinkMissing:
        form.discard()
        page.flash("error", f"Link '{code}' not found.")
        page.redirect("/links")
    except (DataWriteError, OSError) as err:
        form.discard()
        log.warning("saving link %r of %s failed: %s", code, record.owner, err)
        page.flash("error", f"Error saving changes ({err})")
        return _edit_page(page, record, dict(form.fields))
    if warning:
        page.flash("warning", f"Error deleting old file: {warning}")
    page.flash("success", "Link updated successfully")
    _published_flash(page, published)
    page.redirect("/links")


def _quoted(code: str) -> str:
    from urllib.parse import quote

    return quote(code, safe="")


@admin_page()
async def delete_confirm(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /delete_link/<code>: a confirm button (deleting is a POST with a CSRF token)."""
    code = request.match_info["code"]
    _owner_of(page, code)
    return page.render(
        "confirm.html",
        title="Delete link",
        question=f"Delete the link '{code}'? This cannot be undone.",
        action=f"/delete_link/{_quoted(code)}",
        button="Delete",
        button_style="danger",
        cancel="/links",
    )


@admin_page()
async def delete(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /delete_link/<code> and /delete/<code>: remove the link and its asset (T8-066)."""
    code = request.match_info["code"]
    record = _owner_of(page, code)
    try:
        published, warning = await delete_link(page.admin, record.owner, code)
    except LinkMissing:
        page.flash("error", f"Link '{code}' not found.")
        page.redirect("/links")
    except (DataWriteError, OSError) as err:
        log.warning("deleting link %r of %s failed: %s", code, record.owner, err)
        page.flash("error", "Error deleting link.")
        page.redirect("/links")
    if warning:
        page.flash("warning", f"Error deleting file: {warning}")
    page.flash("success", f"Link '{code}' deleted successfully.")
    _published_flash(page, published)
    page.redirect("/links")
