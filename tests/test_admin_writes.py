"""Admin writes that lose nothing: uploads, edits, deletes, hand edits and concurrent saves."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write
from test_admin_support import (
    Browser,
    admin_browser,
    admin_env,
    admin_system,
    browser,
    fixture_copy,
    flashes,
)

from trunk8.embedded_nats import EmbeddedNats
from trunk8_admin.datawrites import edit_toml
from trunk8_admin.linkstore import LinkStore
from trunk8_shared.buckets import create_buckets
from trunk8_shared.datadir import DataDir

# Fixtures used by name in test arguments.
__all__ = ["admin_browser", "admin_env", "admin_system", "browser"]

PDF = b"%PDF-1.4 a tiny test file\n"


def links_of(data_dir: Path, user: str) -> dict[str, dict[str, object]]:
    text = (data_dir / "users" / user / "links.toml").read_text()
    links: dict[str, dict[str, object]] = tomllib.loads(text).get("links", {})
    return links


def assets(data_dir: Path, user: str) -> set[str]:
    folder = data_dir / "users" / user / "assets"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


async def test_file_upload_is_stored_like_trunk8(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    status, _, body = await admin_browser.post_multipart(
        "/add",
        {"link_type": "file", "short_code": "report2"},
        {"file": ("My Report (1) é.PDF", PDF)},
    )
    assert status == 200 and "Link Created Successfully!" in body, flashes(body)
    entry = links_of(data_dir, "admin")["report2"]
    assert entry["original_filename"] == "My_Report_1_e.PDF"
    assert entry["file_size"] == len(PDF) and entry["mime_type"] == "application/pdf"
    path = str(entry["path"])
    assert path.endswith(".pdf") and len(path) == 36 + 4
    assert (data_dir / "users" / "admin" / "assets" / path).read_bytes() == PDF
    assert not [n for n in assets(data_dir, "admin") if n.startswith(".")]  # no temp left
    # Browsers also send the empty file inputs of the other sections: nothing is kept.
    status, _, body = await admin_browser.post_multipart(
        "/add",
        {"link_type": "file", "short_code": "report3"},
        {"file": ("b.pdf", PDF), "markdown_file": ("", b""), "html_file": ("", b"")},
    )
    assert "Link Created Successfully!" in body, flashes(body)
    assert not [n for n in assets(data_dir, "admin") if n.startswith(".")]
    _, _, listing = await admin_browser.get("/links?q=report2")
    assert "My_Report_1_e.PDF" in listing


async def test_refused_upload_leaves_nothing(admin_browser: Browser, data_dir: Path) -> None:
    before = assets(data_dir, "admin")
    status, _, body = await admin_browser.post_multipart(
        "/add", {"link_type": "file", "short_code": "exe"}, {"file": ("tool.exe", b"MZ" * 100)}
    )
    assert status == 200
    assert ("error", "File upload error: File type '.exe' not allowed") in flashes(body)
    _, _, body = await admin_browser.post_multipart("/add", {"link_type": "file"})
    assert ("error", "No file uploaded for file link.") in flashes(body)
    assert assets(data_dir, "admin") == before
    assert "exe" not in links_of(data_dir, "admin")


async def test_upload_without_csrf_token_is_refused_before_storing(
    admin_browser: Browser, data_dir: Path
) -> None:
    before = assets(data_dir, "admin")
    status, _, _ = await admin_browser.post_multipart(
        "/add", {"link_type": "file", "short_code": "forged"}, {"file": ("a.pdf", PDF)},
        csrf=False,
    )  # fmt: skip
    assert status == 403
    assert assets(data_dir, "admin") == before


@pytest.fixture
async def small_cap_system(
    admin_env: None, data_dir: Path, start_system: StartSystem
) -> RunningSystem:
    config = data_dir / "config" / "config.toml"
    write(config, "[app]\nmax_file_size_mb = 1\n")
    return await start_system()


async def test_upload_over_the_cap_is_refused_while_streaming(
    small_cap_system: RunningSystem, data_dir: Path
) -> None:
    client = Browser(small_cap_system)
    try:
        assert await client.login() == 302
        before = assets(data_dir, "admin")
        big = b"x" * (3 * 1024 * 1024)
        status, _, body = await client.post_multipart(
            "/add", {"link_type": "file", "short_code": "big"}, {"file": ("big.txt", big)}
        )
        assert status == 413 and "larger than the limit of 1 MB" in body
        assert assets(data_dir, "admin") == before  # the partial upload is gone
        assert "big" not in links_of(data_dir, "admin")
        # Just under the cap is fine.
        client2 = Browser(small_cap_system)
        assert await client2.login() == 302
        ok = b"y" * (1024 * 1024 - 2048)
        status, _, body = await client2.post_multipart(
            "/add", {"link_type": "file", "short_code": "fits"}, {"file": ("fits.txt", ok)}
        )
        await client2.close()
        assert "Link Created Successfully!" in body, flashes(body)
    finally:
        await client.close()


async def test_markdown_and_html_entries(admin_browser: Browser, data_dir: Path) -> None:
    folder = data_dir / "users" / "admin" / "assets"
    _, _, body = await admin_browser.post_multipart(
        "/add",
        {"link_type": "markdown", "markdown_input_type": "text",
         "markdown_text_content": "  # Title\r\ntext  ", "short_code": "md-text"},
    )  # fmt: skip
    assert "Link Created Successfully!" in body, flashes(body)
    entry = links_of(data_dir, "admin")["md-text"]
    assert entry["type"] == "markdown" and entry["original_filename"] == "md-text.md"
    assert str(entry["path"]).endswith(".md")
    assert (folder / str(entry["path"])).read_bytes() == b"\n# Title\r\ntext"

    _, _, body = await admin_browser.post_multipart(
        "/add", {"link_type": "markdown", "short_code": "md-page"},
        {"markdown_file": ("page.HTML", b"<h1>hi</h1>")},
    )  # fmt: skip
    entry = links_of(data_dir, "admin")["md-page"]
    assert entry["type"] == "html" and str(entry["path"]).endswith(".html")
    assert entry["original_filename"] == "page.HTML"

    _, _, body = await admin_browser.post_multipart(
        "/add", {"link_type": "html", "html_input_type": "text",
                 "html_text_content": "<p>x</p>", "short_code": "html-text"},
    )  # fmt: skip
    entry = links_of(data_dir, "admin")["html-text"]
    assert entry["original_filename"] == "html-text.html"
    assert (folder / str(entry["path"])).read_text() == "<p>x</p>"

    _, _, body = await admin_browser.post_multipart(
        "/add", {"link_type": "markdown", "short_code": "latin1"},
        {"markdown_file": ("notes.md", "café".encode("latin-1"))},
    )  # fmt: skip
    assert ("error", "Markdown upload error: the file is not UTF-8 text") in flashes(body)
    _, _, body = await admin_browser.post_multipart(
        "/add", {"link_type": "html", "html_input_type": "text", "html_text_content": "  "},
    )  # fmt: skip
    assert ("error", "No HTML content provided.") in flashes(body)


async def test_script_posting_urlencoded_still_works(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    status, _, body = await admin_browser.post(
        "/add", {"link_type": "redirect", "url": "https://example.com/s", "short_code": "script"}
    )
    assert status == 200 and "Link Created Successfully!" in body
    assert await admin_system.location("/script") == "https://example.com/s"


async def test_edit_redirect_is_served_at_once(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    status, _, body = await admin_browser.get("/edit_link/docs")
    assert status == 200 and "Edit Link" in body and 'value="https://example.com/docs"' in body
    status, headers, _ = await admin_browser.post_multipart(
        "/edit_link/docs",
        {"link_type": "redirect", "url": "https://example.com/v2", "short_code": "ignored",
         "enable_expiration": "on", "expiration_date": "2031-01-02T03:04"},
    )  # fmt: skip
    assert (status, headers["Location"]) == (302, "/links")
    assert await admin_system.location("/docs") == "https://example.com/v2"
    entry = links_of(data_dir, "bob")["docs"]  # the owner's file, not the admin's
    assert entry["url"] == "https://example.com/v2"
    assert entry["created_at"] == "2025-01-02T10:00:00"  # a key the admin does not manage
    _, _, body = await admin_browser.get("/links")
    assert ("success", "Link updated successfully") in flashes(body)
    _, _, body = await admin_browser.get("/edit_link/docs")
    assert 'value="2031-01-02T03:04"' in body and "ignored" not in body


async def test_edit_errors_flash_and_keep_the_link(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    before = (data_dir / "users" / "bob" / "links.toml").read_bytes()
    status, headers, _ = await admin_browser.post_multipart(
        "/edit_link/docs", {"link_type": "redirect", "url": "javascript:alert(1)"}
    )
    assert (status, headers["Location"]) == (302, "/edit_link/docs")
    _, _, body = await admin_browser.get("/edit_link/docs")
    assert any("not allowed" in m for _, m in flashes(body))
    assert 'id="url" name="url"' in body and "is-invalid" in body  # next to the field
    _, _, body = await admin_browser.get("/edit_link/docs")
    assert "is-invalid" not in body  # shown once
    status, headers, _ = await admin_browser.post_multipart(
        "/edit_link/docs", {"link_type": "file"}, {"file": ("x.exe", b"MZ")}
    )
    assert status == 302
    assert (data_dir / "users" / "bob" / "links.toml").read_bytes() == before
    assert await admin_system.location("/docs") == "https://example.com/docs"


async def test_unknown_code_and_foreign_links(browser: Browser, data_dir: Path) -> None:
    from trunk8_admin.passwords import hash_password

    users = data_dir / "users" / "users.toml"
    users.write_text(
        users.read_text().replace(
            "[users.carol]\n", f'[users.carol]\npassword_hash = "{hash_password("pw", 1000)}"\n'
        )
    )
    assert await browser.login("carol", "pw") == 302
    status, headers, _ = await browser.get("/edit_link/nope")
    assert (status, headers["Location"]) == (302, "/links")
    _, _, body = await browser.get("/links")
    assert ("error", "Link 'nope' not found.") in flashes(body)
    status, _, _ = await browser.get("/edit_link/docs")
    _, _, body = await browser.get("/links")
    assert ("error", "You don't have permission to edit this link.") in flashes(body)
    status, _, _ = await browser.post("/delete_link/docs", {})
    assert status == 302
    _, _, body = await browser.get("/links")
    assert ("error", "You don't have permission to delete this link.") in flashes(body)
    assert "docs" in links_of(data_dir, "bob")


async def test_edit_file_link_keeps_or_replaces_its_asset(
    admin_browser: Browser, data_dir: Path
) -> None:
    await admin_browser.post_multipart(
        "/add", {"link_type": "file", "short_code": "doc"}, {"file": ("a.pdf", PDF)}
    )
    first = str(links_of(data_dir, "admin")["doc"]["path"])
    # Only the expiry changes: no new file needed, the asset stays (T8-W10).
    status, _, _ = await admin_browser.post_multipart(
        "/edit_link/doc",
        {"link_type": "file", "enable_expiration": "on", "expiration_date": "2031-01-01T00:00"},
    )
    assert status == 302
    entry = links_of(data_dir, "admin")["doc"]
    assert entry["path"] == first and entry["expiration_date"] == "2031-01-01T00:00"
    assert first in assets(data_dir, "admin")
    # A rejected replacement keeps the current file and link.
    await admin_browser.post_multipart(
        "/edit_link/doc", {"link_type": "file"}, {"file": ("b.exe", b"MZ")}
    )
    assert links_of(data_dir, "admin")["doc"]["path"] == first
    assert first in assets(data_dir, "admin")
    # A new file replaces the old one, which is deleted after the record is saved.
    await admin_browser.post_multipart(
        "/edit_link/doc", {"link_type": "file"}, {"file": ("b.txt", b"new")}
    )
    second = str(links_of(data_dir, "admin")["doc"]["path"])
    assert second != first and second.endswith(".txt")
    assert first not in assets(data_dir, "admin") and second in assets(data_dir, "admin")
    # Switching to a redirect removes the asset instead of orphaning it.
    await admin_browser.post_multipart(
        "/edit_link/doc", {"link_type": "redirect", "url": "https://example.com/r"}
    )
    assert second not in assets(data_dir, "admin")
    assert links_of(data_dir, "admin")["doc"] == {
        "type": "redirect",
        "url": "https://example.com/r",
    }


async def test_failed_toml_write_removes_the_new_asset(
    admin_browser: Browser, data_dir: Path
) -> None:
    await admin_browser.post_multipart(
        "/add", {"link_type": "file", "short_code": "keep"}, {"file": ("a.pdf", PDF)}
    )
    links_file = data_dir / "users" / "admin" / "links.toml"
    old_asset = str(links_of(data_dir, "admin")["keep"]["path"])
    # The link's section breaks (a half-finished hand edit): the edit must change nothing.
    broken = links_file.read_text() + "half = \n"
    links_file.write_text(broken)
    before = assets(data_dir, "admin")
    status, _, body = await admin_browser.post_multipart(
        "/edit_link/keep", {"link_type": "file"}, {"file": ("new.txt", b"new")}
    )
    assert status == 200 and any("Error saving changes" in m for _, m in flashes(body))
    assert links_file.read_text() == broken
    assert assets(data_dir, "admin") == before and old_asset in before


async def test_delete_removes_entry_and_asset(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    await admin_browser.post_multipart(
        "/add", {"link_type": "file", "short_code": "gone"}, {"file": ("a.pdf", PDF)}
    )
    asset = str(links_of(data_dir, "admin")["gone"]["path"])
    status, _, body = await admin_browser.get("/delete_link/gone")
    assert status == 200 and "Delete" in body  # a confirm page, nothing deleted yet
    assert "gone" in links_of(data_dir, "admin")
    status, _, _ = await admin_browser.post("/delete/gone", {}, csrf=False)
    assert status == 403
    status, headers, _ = await admin_browser.post("/delete/gone", {})
    assert (status, headers["Location"]) == (302, "/links")
    assert "gone" not in links_of(data_dir, "admin") and asset not in assets(data_dir, "admin")
    _, _, body = await admin_browser.get("/links")
    assert ("success", "Link 'gone' deleted successfully.") in flashes(body)
    await admin_browser.post("/delete_link/carol1", {})
    assert (await admin_system.get("/carol1"))[0] == 404  # gone at once
    assert links_of(data_dir, "carol") == {}


async def test_hand_written_file_keeps_comments_and_extra_keys(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    links_file = data_dir / "users" / "carol" / "links.toml"
    original = (
        "# Carol's links, edited by hand\n"
        "[links.carol1]  # the first one\n"
        'type = "redirect"\n'
        'url = "https://example.org/carol"\n'
        'note = "keep me"\n'
        "\n"
        "[links.other]\n"
        'type = "redirect"\n'
        'url = "https://example.org/other"\n'
        "created_at = 2025-01-02T10:00:00\n"
        "\n"
        "[extra_table]\n"
        "answer = 42\n"
    )
    links_file.write_text(original)
    await admin_system.get("/-/ready")

    async def published() -> bool:
        return await admin_system.location("/other") == "https://example.org/other"

    await wait_until(published, timeout=10)
    await admin_browser.post_multipart(
        "/edit_link/carol1", {"link_type": "redirect", "url": "https://example.org/new"}
    )
    await admin_browser.post("/delete_link/other", {})
    text = links_file.read_text()
    assert "# Carol's links, edited by hand" in text and "# the first one" in text
    assert 'note = "keep me"' in text and "answer = 42" in text
    document = tomllib.loads(text)
    assert document["links"]["carol1"]["url"] == "https://example.org/new"
    assert "other" not in document["links"] and document["extra_table"] == {"answer": 42}
    assert await admin_system.location("/carol1") == "https://example.org/new"


def test_hand_edit_between_read_and_save_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "links.toml"
    path.write_text('[links.a]\ntype = "redirect"\nurl = "https://a.example"\n')
    calls = 0

    def edit(document: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone saves the file by hand while we hold our copy
            path.write_text(
                path.read_text() + '\n[links.b]\ntype = "redirect"\nurl = "https://b"\n'
            )
        document["links"]["c"] = {"type": "redirect", "url": "https://c"}  # type: ignore[index]

    edit_toml(path, edit)
    assert calls == 2
    assert set(tomllib.loads(path.read_text())["links"]) == {"a", "b", "c"}


def test_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    path = data.links_file("u")
    write(path, "[links]\n")
    path.chmod(0o640)
    LinkStore(data).add("u", "x", {"type": "redirect", "url": "https://x"})
    LinkStore(data).add("u", "ünï", {"type": "redirect", "url": "https://y"})  # parsing path
    assert path.stat().st_mode & 0o777 == 0o640
    assert set(tomllib.loads(path.read_text())["links"]) == {"x", "ünï"}


CONCURRENT_WRITER = """
import sys
from pathlib import Path
from trunk8_admin.linkstore import LinkStore
from trunk8_shared.datadir import DataDir
store = LinkStore(DataDir(Path(sys.argv[1])))
for i in range(int(sys.argv[2])):
    store.add("carol", f"proc{i}", {"type": "redirect", "url": f"https://p.example/{i}"})
"""


async def test_concurrent_saves_from_two_processes_are_all_kept(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    count = 25
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CONCURRENT_WRITER, str(data_dir), str(count)
    )
    # Meanwhile this admin adds links to the same file (as admin, switched nowhere: the
    # edit of carol's link goes to carol's file).
    for i in range(count):
        await admin_browser.post_multipart(
            "/edit_link/carol1", {"link_type": "redirect", "url": f"https://web.example/{i}"}
        )
    assert await asyncio.wait_for(other.wait(), 60) == 0
    links = links_of(data_dir, "carol")
    assert {f"proc{i}" for i in range(count)} <= links.keys()
    assert links["carol1"]["url"] == f"https://web.example/{count - 1}"


async def test_two_admin_instances_saving_at_once(
    admin_env: None, start_system: StartSystem, data_dir: Path
) -> None:
    first = await start_system()
    second = await start_system(target="admin")
    clients = [Browser(first), Browser(second)]
    try:
        for client in clients:
            assert await client.login() == 302

        async def add_many(client: Browser, prefix: str) -> None:
            for i in range(10):
                _, _, body = await client.post_multipart(
                    "/add",
                    {"link_type": "redirect", "url": f"https://x.example/{i}",
                     "short_code": f"{prefix}{i}"},
                )  # fmt: skip
                assert "Link Created Successfully!" in body, flashes(body)

        await asyncio.gather(add_many(clients[0], "one"), add_many(clients[1], "two"))
        links = links_of(data_dir, "admin")
        assert {f"one{i}" for i in range(10)} | {f"two{i}" for i in range(10)} <= links.keys()
        for i in range(10):
            assert await first.location(f"/two{i}") == f"https://x.example/{i}"
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
def trunk8_data(tmp_path: Path) -> Path:
    return fixture_copy(tmp_path, "trunk8-data")


async def test_editing_a_trunk8_file_changes_only_that_link(
    admin_env: None, trunk8_data: Path, nats_server: object, start_system: StartSystem
) -> None:
    system = await start_system(data_dir=str(trunk8_data))
    client = Browser(system)
    try:
        assert await client.login() == 302
        links_file = trunk8_data / "users" / "admin" / "links.toml"
        before = links_file.read_text()
        _, _, listing = await client.get("/links")
        for code in ("ex_pdf", "fx-file", "fx-md-as-html", "alice-data", "WtPS9m84", "dave-old"):
            assert f'data-code="{code}"' in listing
        assert "Quarterly_Report_1_e.pdf" in listing and "notes from dave.txt" in listing
        _, _, body = await client.get("/edit_link/fx-expires")
        assert 'value="2031-06-30T18:00"' in body
        await client.post_multipart(
            "/edit_link/fx-redirect",
            {"link_type": "redirect", "url": "https://example.org/changed"},
        )
        after = links_file.read_text()
        old_block = 'url = "https://example.org/path?x=1&y=ä b"'
        assert after == before.replace(old_block, 'url = "https://example.org/changed"')
        assert await system.location("/fx-redirect") == "https://example.org/changed"
    finally:
        await client.close()


async def test_save_without_a_config_watcher_goes_live_when_it_is_back(
    admin_env: None, start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    await create_buckets(bus_client.jetstream(), replicas=1)  # by a watcher, now stopped
    alone = await start_system(target="admin")
    client = Browser(alone)
    try:
        assert await client.login() == 302
        _, _, body = await client.post_multipart(
            "/add",
            {"link_type": "redirect", "url": "https://later.example/", "short_code": "later"},
        )
        assert "Link Created Successfully!" in body
        assert any("goes live as soon as it is back" in m for _, m in flashes(body))
        assert links_of(data_dir, "admin")["later"]["url"] == "https://later.example/"
        everything = await start_system()  # a config-watcher (and redirector) arrive

        async def served() -> bool:
            return await everything.location("/later") == "https://later.example/"

        await wait_until(served, timeout=10)
    finally:
        await client.close()


async def test_hot_path_never_touches_the_session(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    for path in ("/docs", "/no-such-code", "/-/healthz"):
        _, headers, _ = await admin_browser.get(path)
        assert "Set-Cookie" not in headers, path
    _, _, text = await admin_system.get("/-/metrics")
    assert 'route="/{code}"' not in "".join(
        line for line in text.splitlines() if line.startswith("trunk8_admin_requests")
    )


async def test_admin_static_files_are_fingerprinted_and_cached(admin_browser: Browser) -> None:
    _, _, body = await admin_browser.get("/add")
    urls = re.findall(r'(/static/admin/admin\.[0-9a-f]{12}\.(?:js|css))"', body)
    assert len(urls) == 2
    for url in urls:
        status, headers, text = await admin_browser.get(url)
        assert status == 200 and text
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    status, _, _ = await admin_browser.get("/static/admin/admin.js")
    assert status == 404  # only fingerprinted names are served


async def test_icons_logo_and_favicon_are_served_by_the_product(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    _, _, body = await admin_browser.get("/links")
    # Stylesheets, scripts and images all come from this host (the page works offline).
    assert not re.search(r'<(?:link|script|img)\b[^>]*(?:href|src)="(?:[a-z]+:)?//', body)
    css_url = re.search(r'href="(/static/admin/bootstrap-icons-[\d.]+/[^"]+\.css)"', body)
    assert css_url is not None
    async with admin_browser.http.get(admin_system.base + css_url.group(1)) as response:
        assert response.status == 200 and response.content_type == "text/css"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        css = await response.text()
    assert ".bi-clipboard::before" in css
    fonts = re.findall(r'url\("(fonts/[^"?]+)', css)
    assert sorted(fonts) == ["fonts/bootstrap-icons.woff", "fonts/bootstrap-icons.woff2"]
    folder = css_url.group(1).rsplit("/", 1)[0]
    for font, magic in zip(sorted(fonts), (b"wOFF", b"wOF2"), strict=True):
        async with admin_browser.http.get(f"{admin_system.base}{folder}/{font}") as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert (await response.read())[:4] == magic
    # The logo and favicon the pages name, fingerprinted.
    for name, magic in (("trunk8_logo.png", b"\x89PNG"), ("favicon.ico", b"\x00\x00\x01\x00")):
        stem, ext = name.rsplit(".", 1)
        url = re.search(rf'"(/static/admin/{stem}\.[0-9a-f]{{12}}\.{ext})"', body)
        assert url is not None, name
        async with admin_browser.http.get(admin_system.base + url.group(1)) as response:
            assert response.status == 200 and (await response.read())[:4] == magic
    # Nothing outside the vendored folder is reachable through it.
    for probe in ("..%2F..%2Fapp.py", "%2E%2E/%2E%2E/app.py", "fonts/..%2F..%2F..%2Fapp.py"):
        status, _, text = await admin_system.get(f"{folder}/{probe}")
        assert status == 404 and "setup_admin" not in text, probe


async def test_trunk8_asset_paths_are_served_anonymously(
    admin_env: None, start_system: StartSystem
) -> None:
    """T8-086: Trunk8's own asset paths answer, also before sign-in, with the product's files."""
    system = await start_system()
    expected = {
        "/static/css/style.css": ("text/css", b""),
        "/static/js/main.js": ("javascript", b""),
        "/static/img/trunk8_logo.png": ("image/png", b"\x89PNG"),
        "/static/favicon.ico": ("icon", b"\x00\x00\x01\x00"),
    }
    for path, (content_type, magic) in expected.items():
        async with system.http.get(system.base + path, allow_redirects=False) as response:
            body = await response.read()
            assert response.status == 200, path
            assert content_type in response.headers["Content-Type"], path
            assert response.headers["Cache-Control"] == "no-cache", path
            assert body.startswith(magic) and len(body) > 100, path
        status, _, _ = await system.get(path, method="HEAD")
        assert status == 200, path
    # The folders hold only those files: anything else there is not found.
    for path in ("/static/css/other.css", "/static/img/", "/static/js/../../app.py"):
        assert (await system.get(path))[0] == 404, path


async def test_an_admin_alone_serves_its_icons(
    admin_env: None, start_system: StartSystem, bus_client: nats.NATS
) -> None:
    await create_buckets(bus_client.jetstream(), replicas=1)  # by a config-watcher elsewhere
    system = await start_system("admin")
    status, headers, _ = await system.get(
        "/static/admin/bootstrap-icons-1.13.2/bootstrap-icons.min.css"
    )
    assert status == 200 and headers["Content-Type"].startswith("text/css")


async def test_expired_links_are_purged_on_a_timer(
    admin_env: None, monkeypatch: pytest.MonkeyPatch, data_dir: Path, start_system: StartSystem
) -> None:
    monkeypatch.setenv("TRUNK8_EXPIRY_PURGE_SECONDS", "0.2")
    folder = data_dir / "users" / "carol" / "assets"
    folder.mkdir(parents=True)
    (folder / "old.pdf").write_bytes(PDF)
    write(
        data_dir / "users" / "carol" / "links.toml",
        "# carol's file\n"
        '[links.carol1]\ntype = "redirect"\nurl = "https://example.org/carol"\n\n'
        '[links.old]\ntype = "file"\npath = "old.pdf"\nexpiration_date = "2020-01-01T00:00"\n\n'
        '[links.zulu]\ntype = "redirect"\nurl = "https://z.example"\n'
        "expiration_date = 2020-01-01T00:00:00Z\n\n"
        '[links.odd]\ntype = "redirect"\nurl = "https://o.example"\n'
        'expiration_date = "whenever"\n\n'
        '[links.later]\ntype = "redirect"\nurl = "https://l.example"\n'
        'expiration_date = "2031-01-01"\n',
    )
    await start_system()  # nobody signs in: the timer purges anyway

    def purged() -> bool:
        gone = {"old", "zulu"}.isdisjoint(links_of(data_dir, "carol"))
        return gone and not (folder / "old.pdf").exists()  # the asset goes right after

    async def condition() -> bool:
        return purged()

    await wait_until(condition, timeout=10)
    assert set(links_of(data_dir, "carol")) == {"carol1", "odd", "later"}
    assert not (folder / "old.pdf").exists()
    assert "# carol's file" in (data_dir / "users" / "carol" / "links.toml").read_text()


async def test_purged_links_are_announced_as_expired(
    admin_env: None,
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    start_system: StartSystem,
    bus_client: nats.NATS,
) -> None:
    monkeypatch.setenv("TRUNK8_EXPIRY_PURGE_SECONDS", "0.2")
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def received(msg: nats.aio.msg.Msg) -> None:
        event = json.loads(msg.data)
        if event.get("code") == "gone" or event.get("link", {}).get("code") == "gone":
            await events.put(event)

    await bus_client.subscribe("trunk8.events.link.>", cb=received)
    await bus_client.flush()
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links.gone]\ntype = "redirect"\nurl = "https://g.example"\n'
        "expiration_date = 2020-01-01T00:00:00Z\n\n"
        '[links.stays]\ntype = "redirect"\nurl = "https://s.example"\n',
    )
    await start_system()
    kinds = []
    while not kinds or kinds[-1]["type"] != "link.expired":
        kinds.append(await asyncio.wait_for(events.get(), 10))
    # Published after the bucket lost the code, so a consumer reading it sees it gone.
    assert [e["type"] for e in kinds[-2:]] == ["link.deleted", "link.expired"]
    expired = kinds[-1]
    assert (expired["code"], expired["owner"]) == ("gone", "carol")
    assert expired["expiration_date"] == "2020-01-01T00:00:00+00:00"
    assert expired["expires_at"] == 1577836800.0
    assert set(links_of(data_dir, "carol")) == {"stays"}


async def test_expiry_purged_while_nats_is_away_is_announced_when_it_is_back(
    admin_env: None,
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path,
    start_system: StartSystem,
    nats_server: EmbeddedNats,
) -> None:
    monkeypatch.setenv("TRUNK8_EXPIRY_PURGE_SECONDS", "1")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links.soon]\ntype = "redirect"\nurl = "https://s.example"\n'
        f'expiration_date = "{soon.isoformat(timespec="seconds")}"\n',
    )
    await start_system()
    nats_server.kill()
    await nats_server.process.wait()  # type: ignore[union-attr]

    async def purged() -> bool:
        return "soon" not in links_of(data_dir, "carol")

    await wait_until(purged, timeout=10)  # the file changes with the bus away
    restarted = EmbeddedNats(nats_server.store_dir, port=nats_server.port, token=nats_server.token)
    await restarted.start()
    tap = await nats.connect(restarted.url)
    try:
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def received(msg: nats.aio.msg.Msg) -> None:
            await events.put(json.loads(msg.data))

        # Subscribed before the admin's next round (a second apart) sends what waited.
        await tap.subscribe("trunk8.events.link.expired", cb=received)
        await tap.flush()
        event = await asyncio.wait_for(events.get(), 15)
        assert (event["code"], event["owner"]) == ("soon", "carol")
    finally:
        await tap.close()
        await restarted.stop()


async def test_codes_stay_unique_while_the_bus_is_away(
    admin_env: None, start_system: StartSystem, tmp_path: Path, data_dir: Path
) -> None:
    # An admin pointed at a NATS server that is not there: no index, no watcher.
    alone = await start_system(
        target="admin", wait_ready=False, nats_url="nats://127.0.0.1:9", nats_reconnect_wait=5
    )
    client = Browser(alone)
    try:
        assert await client.login() == 302
        _, _, body = await client.get("/links")
        assert 'id="index-loading"' in body
        _, _, body = await client.post_multipart(
            "/add", {"link_type": "redirect", "url": "https://x.example", "short_code": "docs"}
        )
        assert ("error", "Short code 'docs' already exists.") in flashes(body)  # bob's file
        _, _, body = await client.post_multipart(
            "/add", {"link_type": "redirect", "url": "https://x.example", "short_code": "fresh"}
        )
        assert "Link Created Successfully!" in body
        assert any("goes live as soon as it is back" in m for _, m in flashes(body))
    finally:
        await client.close()


CRASHING_WRITER = """
import sys
from pathlib import Path
from trunk8_admin.linkstore import LinkStore
from trunk8_shared.datadir import DataDir
store = LinkStore(DataDir(Path(sys.argv[1])))
for i in range(100_000):
    store.add("carol", f"k{i}", {"type": "redirect", "url": f"https://k.example/{i}"})
    if i == 0:
        print("started", flush=True)
"""


async def test_a_writer_killed_mid_save_leaves_a_whole_file(data_dir: Path) -> None:
    links_file = data_dir / "users" / "carol" / "links.toml"
    original = "# kept\n" + "".join(
        f'[links.old{i}]\ntype = "redirect"\nurl = "https://old.example/{i}"\n\n'
        for i in range(3000)
    )
    links_file.write_text(original)
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_WRITER, str(data_dir), stdout=asyncio.subprocess.PIPE
    )
    assert writer.stdout is not None
    assert await asyncio.wait_for(writer.stdout.readline(), 30) == b"started\n"
    writer.kill()  # SIGKILL: no cleanup, possibly between temp file and rename
    await asyncio.wait_for(writer.wait(), 30)
    links = tomllib.loads(links_file.read_text())["links"]
    assert {f"old{i}" for i in range(3000)} <= links.keys()
    added = [code for code in links if code.startswith("k")]
    assert added == [f"k{i}" for i in range(len(added))] and added  # whole saves only
    assert links_file.read_text().startswith("# kept\n")
    leftovers = [p.name for p in links_file.parent.iterdir() if p.name != "links.toml"]
    assert all(name.endswith(".tmp") for name in leftovers)  # never read as TOML


async def test_malformed_uploads_get_a_clear_answer(admin_browser: Browser, data_dir: Path) -> None:
    await admin_browser.get("/add")
    token = admin_browser.csrf.encode()
    part = b'--xyz\r\nContent-Disposition: form-data; name="'
    cases = [
        ("multipart/form-data", b"no boundary at all"),
        (
            "multipart/form-data; boundary=xyz",
            part + b'csrf_token"\r\n\r\n' + token + b"\r\n"
            + part + b'file"; filename="a.pdf"\r\n\r\ncut sho',
        ),
    ]  # fmt: skip
    before = assets(data_dir, "admin")
    for content_type, body in cases:
        status, _, text = await admin_browser.request(
            "POST", "/add", data=body, headers={"Content-Type": content_type}
        )
        assert status == 400 and "The upload could not be read" in text, content_type
    assert assets(data_dir, "admin") == before


@pytest.mark.parametrize("client_leaves", [True, False], ids=["disconnects", "stalls"])
async def test_an_abandoned_upload_leaves_no_temp_file(
    client_leaves: bool,
    monkeypatch: pytest.MonkeyPatch,
    admin_env: None,
    start_system: StartSystem,
    data_dir: Path,
) -> None:
    monkeypatch.setenv("TRUNK8_UPLOAD_IDLE_SECONDS", "0.5")
    admin_system = await start_system()
    admin_browser = Browser(admin_system)
    assert await admin_browser.login() == 302
    await admin_browser.get("/add")
    cookie = "; ".join(f"{c.key}={c.value}" for c in admin_browser.http.cookie_jar)
    head = (
        "POST /add HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\nCookie: {cookie}\r\n\r\n"
    ).encode()
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
        + admin_browser.csrf.encode()
        + b'\r\n--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        + b"z" * (2 * 1024 * 1024)
    )
    folder = data_dir / "users" / "admin" / "assets"
    port = int(admin_system.base.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()

    async def receiving() -> bool:
        return any(p.name.endswith(".part") for p in folder.iterdir()) if folder.exists() else False

    await wait_until(receiving, timeout=10)  # the upload is streaming to a temp file
    if client_leaves:
        writer.close()  # the client goes away mid-upload; else it just sends nothing more

    async def cleaned() -> bool:
        return not any(p.name.endswith(".part") for p in folder.iterdir())

    await wait_until(cleaned, timeout=10)
    assert "a.zip" not in str(links_of(data_dir, "admin"))
    writer.close()
    await admin_browser.close()


@pytest.mark.parametrize(
    "text",
    [
        'links = { old = { type = "redirect", url = "https://o.example" } }\n',
        'links.old = { type = "redirect", url = "https://o.example" }\n',
        '# old\n[links]\nold = { type = "redirect", url = "https://o.example" }\n[other]\nx = 1',
        '[links.old]\ntype = "redirect"\nurl = "https://o.example"\n',
    ],
    ids=["inline-table", "dotted-key", "no-final-newline", "sections"],
)
def test_adding_keeps_every_shape_of_links_file_valid(tmp_path: Path, text: str) -> None:
    data = DataDir(tmp_path)
    write(data.links_file("u"), text)
    LinkStore(data).add("u", "new", {"type": "redirect", "url": "https://n.example"})
    document = tomllib.loads(data.links_file("u").read_text())
    assert set(document["links"]) == {"old", "new"}


SECTIONS = """\
# hand-kept file
[links.one]  # first
type = "redirect"
url = "https://one.example"
note = "kept"

# the second one follows
[links."zwei-ü"]
type = "redirect"
url = "https://two.example"

[links.three]
type = "redirect"
url = "https://three.example"
"""


def test_edits_in_place_change_only_their_section(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    path = data.links_file("u")
    write(path, SECTIONS)
    store = LinkStore(data)
    previous = store.update("u", "one", {"type": "redirect", "url": "https://1.example"})
    assert previous == {"type": "redirect", "url": "https://one.example"}
    assert path.read_text() == SECTIONS.replace("https://one.example", "https://1.example")
    removed = store.remove("u", "zwei-ü")
    assert removed == {"type": "redirect", "url": "https://two.example"}
    text = path.read_text()
    assert "# the second one follows" not in text or text.count("[links.") == 2
    assert "zwei" not in text and "# hand-kept file" in text and 'note = "kept"' in text
    assert set(tomllib.loads(text)["links"]) == {"one", "three"}
    store.remove("u", "one")
    store.remove("u", "three")
    assert tomllib.loads(path.read_text()) == {"links": {}}  # an empty [links] stays


@pytest.mark.parametrize(
    "text",
    [
        '[links.one]\ntype = "redirect"\nurl = "https://one.example"\n[links.one.extra]\nx = 1\n',
        '[links.one]\ntype = "markdown"\npath = "a.md"\ncontent = """\n[links.fake]\n"""\n',
        '[links]\none = { type = "redirect", url = "https://one.example" }\n',
    ],
    ids=["sub-table", "multi-line-string", "inline"],
)
def test_unusual_files_are_edited_by_full_parse(tmp_path: Path, text: str) -> None:
    data = DataDir(tmp_path)
    path = data.links_file("u")
    write(path, text)
    store = LinkStore(data)
    store.update("u", "one", {"type": "redirect", "url": "https://1.example"})
    links = tomllib.loads(path.read_text())["links"]
    assert links["one"]["url"] == "https://1.example" and "fake" not in links
    store.remove("u", "one")
    assert "one" not in tomllib.loads(path.read_text())["links"]
