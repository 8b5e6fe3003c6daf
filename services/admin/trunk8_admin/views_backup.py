"""`/backup/create` and `/backup/restore` (§4.14, §4.15): the pages, checks and answers.

A backup streams to the client as it is made (`backup.py`). A restore upload streams to
a temp file under `<data>/.trunk8/restore/`, capped by its own setting rather than the
upload cap (large backups restore, T8-W15); the page sends it with a progress bar. The
archive is then checked and applied off the event loop (`restore.py`), and the page
answers once the restored links are served.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse

from aiohttp import web

from .backup import BackupAborted, ChunkQueue, backup_filename, write_backup
from .errors import FormError
from .forms import read_upload_form
from .pages import Page, admin_page
from .publish import Outcome
from .restore import MAX_REPORTED, Restored, RestoreError, RestoreLimits, restore_file

log = logging.getLogger("trunk8.admin")


async def _target(page: Page, value: str, verb: str, location: str) -> str:
    """The user a backup or restore is for, after Trunk8's checks (T8-076, T8-078)."""
    assert page.user is not None and page.effective is not None
    target = value.strip() or page.effective.username
    if target != page.effective.username and not page.user.is_admin:
        page.flash("error", f"You don't have permission to {verb}.")
        page.redirect(location)
    if target not in await page.admin.accounts.all():
        page.flash("error", f"User '{target}' not found.")
        page.redirect(location)
    return target


async def _backup_page(page: Page, template: str) -> web.Response:
    assert page.user is not None and page.effective is not None
    accounts = list(await page.admin.accounts.all()) if page.user.is_admin else []
    settings = page.admin.admin_settings
    return page.render(
        template,
        accounts=accounts,
        selected=page.effective.username,
        restore_max_mb=settings.restore_max_mb,
        restore_max_entries=settings.restore_max_entries,
    )


@admin_page()
async def backup_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /backup/create: an admin picks any user, others back up themselves (T8-075)."""
    return await _backup_page(page, "backup_create.html")


@admin_page()
async def backup_create(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /backup/create: the zip of T8-077, streamed while it is made."""
    assert page.form is not None and page.effective is not None
    target = await _target(
        page,
        str(page.form.get("target_user", "")),
        "backup other users' data",
        "/backup/create",
    )
    filename = backup_filename(target)
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_")
    disposition = (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename)}"
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": disposition,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    page.audit_detail = f"backup of {target}"
    await page.save_session(response)  # the cookie goes with the headers
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sink = ChunkQueue(loop)

    created_by = page.effective.username

    def build() -> int:
        try:
            return write_backup(page.admin.data, target, created_by, sink)
        finally:
            sink.finish()

    worker = loop.run_in_executor(None, build)
    try:
        while (chunk := await sink.queue.get()) is not None:
            await response.write(chunk)
    except ConnectionError:
        log.info("backup of %s: the client went away", target)
        page.admin.metrics.backups.labels("aborted").inc()
        await _stop(sink, worker)
        return response
    except BaseException:
        await _stop(sink, worker)
        raise
    try:
        files = await worker
    except BackupAborted:
        raise
    except OSError as err:
        # Headers are out: the only honest answer is a cut connection (no valid zip end).
        log.warning("backup of %s failed mid-way: %s", target, err)
        page.admin.metrics.backups.labels("failed").inc()
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    page.admin.metrics.backups.labels("sent").inc()
    log.info("backup of %s (%d files) sent", target, files)
    return response


async def _stop(sink: ChunkQueue, worker: asyncio.Future[int]) -> None:
    """Let the worker run into `BackupAborted` at its next write, and wait for it."""
    await asyncio.shield(asyncio.gather(sink.drain(), worker, return_exceptions=True))


@admin_page()
async def restore_form(request: web.Request, page: Page) -> web.StreamResponse:
    """GET /backup/restore: file, target user and mode (T8-078)."""
    return await _backup_page(page, "backup_restore.html")


def _restored_flashes(page: Page, restored: Restored) -> None:
    message = (
        f"Backup restored successfully! Restored {restored.links} links and {restored.files} files"
    )
    if restored.created_at:
        message += f" (created: {restored.created_at[:10]})"
    page.flash("success", message)
    if restored.refused:
        shown = list(restored.refused.items())[:MAX_REPORTED]
        details = "; ".join(f"'{code}': {why}" for code, why in shown)
        more = len(restored.refused) - len(shown)
        page.flash(
            "warning",
            f"Skipped {len(restored.refused)} links: {details}"
            + (f" and {more} more" if more else ""),
        )
    if restored.ignored:
        shown_names = ", ".join(restored.ignored[:MAX_REPORTED])
        page.flash("warning", f"Ignored entries that are not part of a backup: {shown_names}")
    if restored.removed_assets:
        page.flash("info", f"Removed {restored.removed_assets} files no restored link uses.")


def _mode(replace: bool) -> str:
    return "replace" if replace else "merge"


@admin_page()
async def restore(request: web.Request, page: Page) -> web.StreamResponse:
    """POST /backup/restore: check the whole archive, then apply it all or nothing."""
    admin = page.admin
    settings = admin.admin_settings
    cap = settings.restore_max_mb * 1024 * 1024
    upload_dir = admin.data.state_dir / "restore"
    try:
        form = await read_upload_form(
            request, page.csrf_token, upload_dir, cap, {}, settings.upload_idle_timeout
        )
    except FormError as err:
        page.flash("error", f"Error restoring backup: {err}")
        page.redirect("/backup/restore")
    try:
        upload = form.file("backup_file")
        if upload is None:
            page.flash("error", "No backup file selected.")
            page.redirect("/backup/restore")
        target = await _target(
            page, form.get("target_user"), "restore to other users", "/backup/restore"
        )
        replace = form.get("restore_mode") == "replace"
        limits = RestoreLimits(
            max_entries=settings.restore_max_entries,
            max_unpacked_bytes=settings.restore_max_unpacked_mb * 1024 * 1024,
            max_links_bytes=int(admin.settings.max_data_file_mb * 1024 * 1024),
        )
        owners = admin.index.code_owners()
        loop = asyncio.get_running_loop()
        try:
            restored = await loop.run_in_executor(
                None, restore_file, admin.data, target, upload.temp_path, limits, owners, replace
            )
        except RestoreError as err:
            admin.metrics.restores.labels(_mode(replace), "refused").inc()
            page.flash("error", str(err))
            page.redirect("/backup/restore")
        except OSError as err:
            log.warning("restoring a backup into %s failed: %s", target, err)
            admin.metrics.restores.labels(_mode(replace), "failed").inc()
            page.flash("error", f"Error restoring backup: {err}")
            page.redirect("/backup/restore")
    finally:
        form.discard()
    admin.metrics.restores.labels(_mode(replace), "restored").inc()
    published = await admin.publisher.publish(admin.data.links_file(target))
    page.audit_detail = f"{_mode(replace)} into {target}"
    _restored_flashes(page, restored)
    if published.outcome is Outcome.REJECTED:
        page.flash("error", f"Restored, but the links file is not served: {published.reason}")
    elif published.outcome is Outcome.PENDING:
        page.flash("warning", "Restored. The links go live as soon as the link service is back.")
    page.redirect("/links")
