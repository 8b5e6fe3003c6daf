"""End to end in a real headless Chromium: sign in, create a link of each type (one by
upload, with the progress bar), list them, open them, edit one, delete one, sign out.

Needs Debian's `chromium` package and the `playwright` Python package (driving that
browser, no browser download); the test is skipped where either is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningSystem, wait_until
from test_admin_support import ADMIN_PASSWORD, admin_env, admin_system

# Fixtures used by name in test arguments.
__all__ = ["admin_env", "admin_system"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")

UPLOAD_BYTES = 8 * 1024 * 1024
# Records, in sessionStorage (it survives the page being replaced), that the upload
# progress bar was shown and how far it got.
WATCH_PROGRESS = """() => {
  const box = document.querySelector('.upload-progress');
  const bar = box.querySelector('.progress-bar');
  new MutationObserver(() => {
    if (!box.hidden) sessionStorage.setItem('progressShown', 'yes');
    sessionStorage.setItem('progressText', bar.textContent);
  }).observe(box, {attributes: true, subtree: true, childList: true, characterData: true});
}"""

# True once the page's Bootstrap Icons font and Trunk8 logo are loaded.
ICONS_AND_LOGO_LOADED = """async () => {
  await document.fonts.ready;
  const font = [...document.fonts].some(
    (f) => f.family.replaceAll('"', '') === 'bootstrap-icons' && f.status === 'loaded');
  const logo = document.querySelector('.navbar-brand img');
  return font && logo.complete && logo.naturalWidth > 0;
}"""


@pytest.fixture
def short_upload_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads that stall (a cancelled one may leave its connection open) end quickly."""
    monkeypatch.setenv("TRUNK8_UPLOAD_IDLE_SECONDS", "2")


@pytest.fixture
async def page(short_upload_idle: None, admin_system: RunningSystem) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = await browser.new_context(base_url=admin_system.base)
            tab = await context.new_page()
            # Generous for a loaded machine; a page that never comes still fails.
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            await browser.close()


async def create(page: Any, link_type: str, code: str, fill: dict[str, str]) -> None:
    await page.goto("/add")
    await page.check(f"#type-{link_type}")
    for selector, value in fill.items():
        if selector.startswith("radio:"):
            await page.check(selector[len("radio:") :])
        else:
            await page.fill(selector, value)
    await page.fill("#short_code", code)
    await page.click("#link-form button[type=submit]")
    await page.wait_for_selector("text=Link Created Successfully!")
    assert await page.input_value("#short-url") == f"{page.url.split('/add')[0]}/{code}"


async def test_a_links_whole_life_in_chromium(page: Any, admin_system: RunningSystem) -> None:
    base = admin_system.base
    # Every request of every page stays on this host: nothing from a CDN (works offline).
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(base) else elsewhere.append(r.url))
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    # Sign in, administrator mode (password only).
    await page.goto("/auth/login")
    await page.check("#adminMode")
    await page.fill("#password", ADMIN_PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("text=Welcome to Trunk8, Administrator!")

    # One link of each type; the file goes up through the progress bar.
    await create(page, "redirect", "e2e-redirect", {"#url": f"{base}/-/healthz"})
    await page.goto("/add")
    await page.check("#type-file")
    await page.evaluate(WATCH_PROGRESS)
    await page.set_input_files(
        "#file",
        {"name": "report.pdf", "mimeType": "application/pdf", "buffer": b"%" * UPLOAD_BYTES},
    )
    await page.fill("#short_code", "e2e-file")
    posts.clear()
    await page.click("#link-form button[type=submit]")
    await page.wait_for_selector("text=Link Created Successfully!")
    # Sent once: a second copy lost the code to the first, and its "already exists" page
    # could replace the result (the flaky full-suite run).
    assert posts == [f"{base}/add"]
    assert await page.evaluate("sessionStorage.getItem('progressShown')") == "yes"
    # At 100% the bar says the server is saving.
    assert await page.evaluate("sessionStorage.getItem('progressText')") == "Saving…"
    # A slow upload can be cancelled: nothing is created, nothing is left on disk.
    network = await page.context.new_cdp_session(page)
    await network.send("Network.enable")
    await network.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 512_000},
    )
    await page.goto("/add")
    await page.check("#type-file")
    await page.set_input_files(
        "#file", {"name": "slow.zip", "mimeType": "application/zip", "buffer": b"z" * UPLOAD_BYTES}
    )
    await page.fill("#short_code", "e2e-cancelled")
    await page.click("#link-form button[type=submit]")
    await page.wait_for_selector(".upload-progress:not([hidden])")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("[data-cancel-upload]")
    await page.wait_for_selector(".upload-progress", state="hidden")
    await network.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    assert (await page.request.get("/e2e-cancelled", max_redirects=0)).status == 404
    assets = Path(admin_system.settings.data_dir) / "users" / "admin" / "assets"

    async def no_temp_files() -> bool:
        return not any(p.name.startswith(".upload-") for p in assets.iterdir())

    await wait_until(no_temp_files, timeout=10)

    await create(
        page,
        "markdown",
        "e2e-markdown",
        {"radio:#markdown-input-text": "", "#markdown_text_content": "# Hello from Chromium"},
    )
    await create(
        page,
        "html",
        "e2e-html",
        {"radio:#html-input-text": "", "#html_text_content": "<p>Hello HTML</p>"},
    )

    # All four are listed.
    await page.goto("/links?q=e2e-")
    for code in ("e2e-redirect", "e2e-file", "e2e-markdown", "e2e-html"):
        assert await page.locator(f'tr[data-code="{code}"]').count() == 1
    # The logo and the icon font load; the copy button's icon turns into a check.
    assert await page.evaluate(ICONS_AND_LOGO_LOADED)
    copy = page.locator('tr[data-code="e2e-file"] [data-copy]')
    await copy.click()
    await page.wait_for_selector('tr[data-code="e2e-file"] [data-copy] .bi-clipboard-check')
    assert await copy.locator("[data-copy-label]").text_content() == "Copied!"

    # Each short URL answers.
    await page.goto("/e2e-redirect")
    assert page.url == f"{base}/-/healthz"
    for code in ("e2e-file", "e2e-markdown", "e2e-html"):
        response = await page.request.get(f"/{code}", max_redirects=0)
        assert response.status == 200, code
    assert len(await (await page.request.get("/e2e-file")).body()) == UPLOAD_BYTES

    # Edit one.
    await page.goto("/edit_link/e2e-redirect")
    await page.fill("#url", f"{base}/-/ready")
    await page.click("#link-form button[type=submit]")
    await page.wait_for_selector("text=Link updated successfully")
    await page.goto("/e2e-redirect")
    assert page.url == f"{base}/-/ready"

    # Delete one, accepting the browser's confirm.
    await page.goto("/links?q=e2e-html")
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click('tr[data-code="e2e-html"] button:has-text("Delete")')
    await page.wait_for_selector("text=Link 'e2e-html' deleted successfully.")
    assert (await page.request.get("/e2e-html", max_redirects=0)).status == 404

    # Sign out through the user menu.
    await page.click("a.dropdown-toggle:has-text('Administrator')")
    await page.click("button.dropdown-item:has-text('Logout')")
    await page.wait_for_selector("text=Successfully logged out!")
    await page.goto("/links")
    assert page.url.endswith("/auth/login")
    assert elsewhere == []


async def register_in_browser(page: Any, username: str, password: str) -> None:
    await page.goto("/auth/register")
    await page.fill("#username", username)
    await page.fill("#display_name", "Erin E2E")
    await page.fill("#password", password)
    await page.fill("#confirm_password", password)
    await page.click("form[action='/auth/register'] button[type=submit]")
    await page.wait_for_selector(f"text=User '{username}' created successfully!")


async def test_a_users_whole_life_in_chromium(
    page: Any, admin_system: RunningSystem, tmp_path: Path
) -> None:
    base = admin_system.base
    data = Path(admin_system.settings.data_dir)
    await page.goto("/auth/login")
    await page.check("#adminMode")
    await page.fill("#password", ADMIN_PASSWORD)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("text=Welcome to Trunk8, Administrator!")

    # Register a user, then act as them from their card.
    await register_in_browser(page, "erin", "erin-pass")
    await page.click('[data-user="erin"] button:has-text("View as User")')
    await page.wait_for_selector("text=Switched to user 'Erin E2E'")
    assert await page.locator("#impersonation-banner").count() == 1
    await create(page, "redirect", "erin-link", {"#url": f"{base}/-/healthz"})
    assert "erin-link" in (data / "users" / "erin" / "links.toml").read_text()
    await page.click("#impersonation-banner button:has-text('Switch Back to Admin')")
    await page.wait_for_selector("text=Switched back to admin view")
    assert await page.locator("#impersonation-banner").count() == 0

    # Back up erin: the browser downloads the zip.
    await page.goto("/backup/create")
    await page.select_option("#target_user", "erin")
    async with page.expect_download() as download_info:
        await page.click("form[action='/backup/create'] button[type=submit]")
    download = await download_info.value
    assert download.suggested_filename.startswith("trunk8_backup_erin_")
    backup = tmp_path / "erin.zip"
    await download.save_as(backup)

    # Delete erin after the preview: the link stops at once.
    await page.goto("/users/erin/delete")
    assert await page.inner_text('[data-preview="links"]') == "1"
    await page.click("button:has-text('Delete User')")
    await page.wait_for_selector("text=User 'erin' deleted successfully.")
    assert (await page.request.get("/erin-link", max_redirects=0)).status == 404
    assert not (data / "users" / "erin").exists()

    # Register erin again and restore the backup, through the progress bar.
    await register_in_browser(page, "erin", "erin-pass")
    await page.goto("/backup/restore")
    await page.evaluate(WATCH_PROGRESS)
    await page.select_option("#target_user", "erin")
    await page.set_input_files("#backup_file", str(backup))
    await page.check("#mode-replace")
    await page.click("form[action='/backup/restore'] button[type=submit]")
    await page.wait_for_selector("text=Backup restored successfully! Restored 1 links and 0 files")
    assert await page.evaluate("sessionStorage.getItem('progressShown')") == "yes"
    assert await page.evaluate("sessionStorage.getItem('progressText')") == "Restoring…"
    response = await page.request.get("/erin-link", max_redirects=0)
    assert (response.status, response.headers["location"]) == (302, f"{base}/-/healthz")
