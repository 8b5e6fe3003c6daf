"""The files service in the all-in-one system: downloads, markdown pages, HTML pages.

Real assets in the temporary data directory, links written to `links.toml` and published
by the config-watcher over a real nats-server, requests over real sockets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write
from multidict import CIMultiDict

from trunk8_files import rendercache, sendfile
from trunk8_files.names import content_disposition, content_type
from trunk8_shared.static import STATIC_DIR

ASSET_LINKS = """
[links.empty]
type = "file"
path = "0c9a4c1e-0000-4000-8000-000000000001.bin"
original_filename = "empty.bin"

[links.small]
type = "file"
path = "0c9a4c1e-0000-4000-8000-000000000002.txt"
original_filename = "notes.txt"

[links.big]
type = "file"
path = "0c9a4c1e-0000-4000-8000-000000000003.bin"
original_filename = "big.bin"

[links.accents]
type = "file"
path = "0c9a4c1e-0000-4000-8000-000000000004.pdf"
original_filename = "Résumé 日本 \\"q\\".pdf"

[links.legacy_hex]
type = "file"
path = "9f8e7d6c_Quarterly Report.csv"

[links.missing]
type = "file"
path = "0c9a4c1e-0000-4000-8000-00000000dead.pdf"
original_filename = "gone.pdf"

[links.page]
type = "markdown"
path = "0c9a4c1e-0000-4000-8000-000000000005.md"
original_filename = "page.md"

[links.fragment]
type = "html"
path = "0c9a4c1e-0000-4000-8000-000000000006.html"
original_filename = "fragment.html"

[links.document]
type = "html"
path = "0c9a4c1e-0000-4000-8000-000000000007.html"
original_filename = "document.html"
"""

MARKDOWN = """# Project *notes*

## Tables

| left | right |
|:-----|------:|
| a    | 1     |

~~obsolete~~ text

- [x] done
- [ ] todo

```python
def greet():
    return "<b>hi</b>"
```

<script>alert("md")</script>
</textarea><script>alert("break-out")</script>
[bad](javascript:alert(1)) and [good](https://example.com/)
"""

FRAGMENT = '<h1>Hello</h1><script>document.title = "ran"</script>'
DOCUMENT = "<!DOCTYPE html>\n<html><head><title>Mine</title></head><body>own</body></html>\n"


def _uuid_asset(n: int, suffix: str) -> str:
    return f"0c9a4c1e-0000-4000-8000-{n:012d}.{suffix}"


@pytest.fixture
def assets(data_dir: Path) -> dict[str, bytes]:
    """Bob's assets and links, added to the sample data directory; code -> bytes."""
    folder = data_dir / "users" / "bob" / "assets"
    folder.mkdir(parents=True)
    contents = {
        "empty": b"",
        "small": "hello, wörld\n".encode(),
        "big": os.urandom(50 * 1024 * 1024),
        "accents": b"%PDF-1.4 accents\n",
        "legacy_hex": b"a,b\n1,2\n",
        "page": MARKDOWN.encode(),
        "fragment": FRAGMENT.encode(),
        "document": DOCUMENT.encode(),
    }
    names = {
        "empty": _uuid_asset(1, "bin"),
        "small": _uuid_asset(2, "txt"),
        "big": _uuid_asset(3, "bin"),
        "accents": _uuid_asset(4, "pdf"),
        "legacy_hex": "9f8e7d6c_Quarterly Report.csv",
        "page": _uuid_asset(5, "md"),
        "fragment": _uuid_asset(6, "html"),
        "document": _uuid_asset(7, "html"),
    }
    for code, data in contents.items():
        (folder / names[code]).write_bytes(data)
    (data_dir / "users" / "admin" / "assets").mkdir(parents=True, exist_ok=True)
    (data_dir / "users" / "admin" / "assets" / "example.txt").write_bytes(b"example\n")
    links = data_dir / "users" / "bob" / "links.toml"
    write(links, links.read_text() + ASSET_LINKS)
    return contents


async def files_in_step(system: RunningSystem) -> bool:
    """Ready, and the files service has applied all the config-watcher published."""
    if not await system.ready():
        return False
    values = await system.metrics()
    published = values.get("trunk8_config_watcher_links_revision", 0)
    return values.get("trunk8_files_links_revision", -1) >= published


@pytest.fixture
async def files_system(start_system: StartSystem, assets: dict[str, bytes]) -> RunningSystem:
    """The all-in-one system with bob's assets, the files service caught up."""
    system = await start_system()
    await wait_until(lambda: files_in_step(system), timeout=15)
    return system


async def fetch(
    system: RunningSystem, path: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request: (status, headers, body bytes)."""
    async with system.http.request(
        method, system.base + path, headers=headers, allow_redirects=False
    ) as response:
        return response.status, response.headers.copy(), await response.read()


# --- downloads -------------------------------------------------------------------------


async def test_downloads_are_byte_exact_with_their_headers(
    files_system: RunningSystem, assets: dict[str, bytes]
) -> None:
    for code in ("empty", "small", "big"):
        status, headers, body = await fetch(files_system, f"/{code}")
        assert status == 200, code
        assert hashlib.sha256(body).digest() == hashlib.sha256(assets[code]).digest(), code
        assert headers["Content-Length"] == str(len(assets[code]))
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["ETag"] and headers["Last-Modified"]
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"] == "sandbox"
        assert "Content-Encoding" not in headers
    _, headers, _ = await fetch(files_system, "/small")
    assert headers["Content-Disposition"] == "attachment; filename=notes.txt"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    _, headers, _ = await fetch(files_system, "/big")
    assert headers["Content-Type"] == "application/octet-stream"
    values = await files_system.metrics()
    assert values["trunk8_files_downloads_in_flight"] == 0
    # Every body byte went through the service's own sendfile path, once.
    sent = 2 * (len(assets["small"]) + len(assets["big"]))
    assert values["trunk8_files_bytes_sent_total"] == sent


async def test_ranges(files_system: RunningSystem, assets: dict[str, bytes]) -> None:
    data = assets["big"]
    size = len(data)
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=-10": (size - 10, size),
        "bytes=1000-1999": (1000, 2000),
        f"bytes={size - 5}-": (size - 5, size),
    }
    for value, (start, stop) in cases.items():
        status, headers, body = await fetch(files_system, "/big", Range=value)
        assert status == 206, value
        assert body == data[start:stop], value
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}", value
    status, headers, body = await fetch(files_system, "/big", Range=f"bytes={size}-")
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{size}"
    assert body == b""


async def test_conditional_requests_answer_304(files_system: RunningSystem) -> None:
    _, headers, _ = await fetch(files_system, "/small")
    status, again, body = await fetch(files_system, "/small", **{"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    assert again["ETag"] == headers["ETag"]
    status, _, body = await fetch(
        files_system, "/small", **{"If-Modified-Since": headers["Last-Modified"]}
    )
    assert status == 304 and body == b""
    status, _, _ = await fetch(files_system, "/small", **{"If-None-Match": '"other"'})
    assert status == 200


async def test_head_has_headers_and_no_body(
    files_system: RunningSystem, assets: dict[str, bytes]
) -> None:
    status, headers, body = await fetch(files_system, "/big", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(len(assets["big"]))
    assert headers["Content-Disposition"] == "attachment; filename=big.bin"


async def test_non_ascii_and_legacy_names(files_system: RunningSystem) -> None:
    _, headers, body = await fetch(files_system, "/accents")
    assert body == b"%PDF-1.4 accents\n"
    assert headers["Content-Disposition"] == (
        'attachment; filename="Resume  \\"q\\".pdf"; filename*=UTF-8\'\''
        "R%C3%A9sum%C3%A9%20%E6%97%A5%E6%9C%AC%20%22q%22.pdf"
    )
    assert headers["Content-Type"] == "application/pdf"
    _, headers, body = await fetch(files_system, "/legacy_hex")
    assert body == b"a,b\n1,2\n"
    assert headers["Content-Disposition"] == 'attachment; filename="Quarterly Report.csv"'
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    _, headers, body = await fetch(files_system, "/ex_text")  # Trunk8's shipped example
    assert body == b"example\n"
    assert headers["Content-Disposition"] == "attachment; filename=example.txt"


async def test_prefixed_forms(files_system: RunningSystem, assets: dict[str, bytes]) -> None:
    for path in ("/f/small", "/f/small/notes.txt", "/f/small/any/name at all"):
        status, _, body = await fetch(files_system, path)
        assert (status, body) == (200, assets["small"]), path
    status, _, body = await fetch(files_system, "/f/page/page.md")
    assert status == 200 and b"<table" in body
    for path in ("/f/nosuch", "/f/nosuch/x.txt", "/f/docs"):  # docs is a redirect link
        status, _, body = await fetch(files_system, path)
        assert status == 404 and b"Link Not Found" in body, path
    status, _, _ = await fetch(files_system, "/f/small", method="POST")
    assert status == 405


async def test_missing_asset_answers_the_not_found_page(files_system: RunningSystem) -> None:
    status, headers, body = await fetch(files_system, "/missing")
    assert status == 404
    assert b"Link Not Found" in body
    assert headers["Content-Type"] == "text/html; charset=utf-8"


async def test_a_gz_sibling_is_never_served_instead(
    files_system: RunningSystem, data_dir: Path, assets: dict[str, bytes]
) -> None:
    folder = data_dir / "users" / "bob" / "assets"
    (folder / (_uuid_asset(2, "txt") + ".gz")).write_bytes(b"another upload entirely")
    (folder / (_uuid_asset(2, "txt") + ".br")).write_bytes(b"and another")
    status, headers, body = await fetch(files_system, "/small", **{"Accept-Encoding": "gzip, br"})
    assert status == 200 and body == assets["small"]
    assert "Content-Encoding" not in headers


async def test_expired_file_link_answers_404_at_the_moment(
    files_system: RunningSystem, data_dir: Path
) -> None:
    expires = dt.datetime.now().replace(microsecond=0) + dt.timedelta(seconds=3)
    links = data_dir / "users" / "bob" / "links.toml"
    write(
        links,
        links.read_text()
        + f'\n[links.soon]\ntype = "file"\npath = "{_uuid_asset(2, "txt")}"\n'
        + f'expiration_date = "{expires.isoformat()}"\n',
    )

    async def served() -> bool:
        return (await fetch(files_system, "/soon"))[0] == 200

    await wait_until(served)
    assert time.time() < expires.timestamp()

    async def expired() -> bool:
        return time.time() > expires.timestamp()

    await wait_until(expired)
    for path in ("/soon", "/f/soon"):
        status, _, body = await fetch(files_system, path)
        assert status == 404 and b"Link Not Found" in body, path


# --- markdown and html ------------------------------------------------------------------


async def test_markdown_page_renders_every_feature_and_no_script(
    files_system: RunningSystem,
) -> None:
    status, headers, raw = await fetch(files_system, "/page")
    body = raw.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert (
        csp.startswith("sandbox ") and "allow-scripts" not in csp and "allow-same-origin" not in csp
    )
    assert "<title>0c9a4c1e-0000-4000-8000-000000000005.md</title>" in body  # T8-037
    assert 'href="/static/bootswatch/cerulean/bootstrap.min.css"' in body
    assert '<h1 id="project-notes">' in body and 'href="#project-notes"' in body
    assert '<table class="table table-sm">' in body and 'style="text-align:right"' in body
    assert "<s>obsolete</s>" in body
    assert 'type="checkbox"' in body and 'checked="checked"' in body
    assert '<code class="language-python"><span class="k">def</span>' in body
    assert "<script" not in body  # raw HTML is shown as text, never as markup
    assert '&lt;script&gt;alert("md")&lt;/script&gt;' in body
    assert "&lt;/textarea&gt;&lt;script&gt;" in body
    assert "javascript:" not in body.split("<main", 1)[1].split('href="', 1)[-1][:20]
    assert 'href="javascript' not in body
    assert 'href="https://example.com/"' in body


async def test_markdown_is_rendered_once_per_content(
    files_system: RunningSystem, data_dir: Path
) -> None:
    before = await files_system.metrics()
    first = (await fetch(files_system, "/page"))[2]
    second = (await fetch(files_system, "/page"))[2]
    assert first == second
    after = await files_system.metrics()
    assert after["trunk8_files_render_cache_misses_total"] == (
        before.get("trunk8_files_render_cache_misses_total", 0) + 1
    )
    assert after["trunk8_files_render_cache_hits_total"] >= (
        before.get("trunk8_files_render_cache_hits_total", 0) + 1
    )
    path = data_dir / "users" / "bob" / "assets" / _uuid_asset(5, "md")
    path.write_text("# Changed\n")
    changed = (await fetch(files_system, "/page"))[2]
    assert b'<h1 id="changed">' in changed


async def test_theme_change_reaches_markdown_pages(
    files_system: RunningSystem, data_dir: Path
) -> None:
    write(
        data_dir / "config" / "config.toml", '[app]\ntheme = "flatly"\nmarkdown_theme = "darkly"\n'
    )

    async def dark() -> bool:
        body = (await fetch(files_system, "/page"))[2]
        return b'href="/static/bootswatch/darkly/bootstrap.min.css"' in body

    await wait_until(dark, timeout=5)
    write(data_dir / "config" / "config.toml", "[app\nbroken")  # last good theme stays
    write(data_dir / "config" / "config.toml", '[app]\nmarkdown_theme = "nosuch"\n')

    async def fallback() -> bool:
        body = (await fetch(files_system, "/page"))[2]
        return b'data-markdown-theme="cerulean"' in body

    await wait_until(fallback, timeout=5)


async def test_large_markdown_is_shown_as_text(files_system: RunningSystem, data_dir: Path) -> None:
    path = data_dir / "users" / "bob" / "assets" / _uuid_asset(5, "md")
    text = ("# big\n" + "<script>x</script> line\n" * 120_000).encode()
    path.write_bytes(text)
    status, headers, body = await fetch(files_system, "/page")
    assert status == 200 and body == text
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Security-Policy"] == "sandbox"


async def test_html_fragment_gets_the_wrapper_and_the_sandbox(files_system: RunningSystem) -> None:
    status, headers, raw = await fetch(files_system, "/fragment")
    body = raw.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == "sandbox allow-scripts allow-forms allow-popups"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "<title>0c9a4c1e-0000-4000-8000-000000000006.html</title>" in body
    assert ".navbar { display: none !important; }" in body
    assert FRAGMENT in body  # served as it is: its script runs, in an opaque origin
    assert headers["Content-Length"] == str(len(raw))
    status, headers, raw = await fetch(files_system, "/fragment", method="HEAD")
    assert status == 200 and raw == b"" and int(headers["Content-Length"]) > len(FRAGMENT)


async def test_whole_html_document_is_sent_as_it_is(files_system: RunningSystem) -> None:
    status, headers, raw = await fetch(files_system, "/document")
    assert status == 200 and raw == DOCUMENT.encode()
    assert headers["Content-Security-Policy"] == "sandbox allow-scripts allow-forms allow-popups"


async def test_metrics_count_responses_by_type_and_status(files_system: RunningSystem) -> None:
    for path in ("/small", "/page", "/fragment", "/missing"):
        await fetch(files_system, path)
    _, _, text = await files_system.get("/-/metrics")
    for line in (
        'trunk8_files_responses_total{status="200",type="file"}',
        'trunk8_files_responses_total{status="200",type="markdown"}',
        'trunk8_files_responses_total{status="200",type="html"}',
        'trunk8_files_responses_total{status="404",type="file"}',
    ):
        assert re.search(re.escape(line) + r" [1-9]", text), line
    assert "trunk8_files_links " in text


# --- memory -----------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_2_gb_download_keeps_memory_flat(
    files_system: RunningSystem, data_dir: Path
) -> None:
    size = 2 * 1024**3
    path = data_dir / "users" / "bob" / "assets" / _uuid_asset(3, "bin")
    os.truncate(path, size)  # a hole: no disk used, read back as zeros
    await fetch(files_system, "/small")  # everything on the path is warm
    before = _rss_bytes()
    received = 0
    peak = before
    timeout = aiohttp.ClientTimeout(total=120)
    async with files_system.http.get(files_system.base + "/big", timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(1024 * 1024):
            received += len(chunk)
            if received % (256 * 1024 * 1024) < len(chunk):
                peak = max(peak, _rss_bytes())
    assert received == size
    growth = max(peak, _rss_bytes()) - before
    assert growth < 64 * 1024 * 1024, f"RSS grew by {growth / 1e6:.0f} MB"


# --- static files -----------------------------------------------------------------------


async def test_vendored_stylesheets_are_served_and_offline(files_system: RunningSystem) -> None:
    status, headers, body = await fetch(files_system, "/static/bootswatch/darkly/bootstrap.min.css")
    assert status == 200 and body.startswith(b'@charset "UTF-8";')
    assert headers["Content-Type"].startswith("text/css")
    assert headers["Cache-Control"] == "public, max-age=86400"
    status, _, _ = await fetch(
        files_system,
        "/static/bootswatch/darkly/bootstrap.min.css",
        **{"If-None-Match": headers["ETag"]},
    )
    assert status == 304
    for path in (
        "/static/bootswatch/nosuch/bootstrap.min.css",
        "/static/bootswatch/../pages.py",
        "/static/bootswatch/%2e%2e/pages.py",
        "/static/bootswatch/%2e%2e%2fpages.py",
        "/static/bootswatch/README.md/x",
        "/static/bootswatch/darkly",
    ):
        status, _, body = await fetch(files_system, path)
        assert status == 404, path
    for css in (STATIC_DIR / "bootswatch").glob("*/bootstrap.min.css"):
        text = css.read_text()
        assert "@import" not in text and "googleapis" not in text, css


# --- names ------------------------------------------------------------------------------


def test_content_disposition_shapes() -> None:
    assert content_disposition("report.pdf") == "attachment; filename=report.pdf"
    assert content_disposition("my report.pdf") == 'attachment; filename="my report.pdf"'
    assert content_disposition('a"b\\c.txt') == 'attachment; filename="a\\"b\\\\c.txt"'
    assert content_disposition("bad\r\nX-Injected: 1.txt") == (
        'attachment; filename="badX-Injected: 1.txt"'
    )
    assert content_disposition("日本.pdf") == (
        "attachment; filename=\".pdf\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.pdf"
    )
    assert content_disposition("\x00\r\n") == "attachment; filename=download"
    assert content_type("x.TXT") == "text/plain; charset=utf-8"
    assert content_type("noextension") == "application/octet-stream"


# --- hostile clients --------------------------------------------------------------------


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_clients_leaving_mid_download_leave_nothing_behind(
    files_system: RunningSystem,
) -> None:
    await fetch(files_system, "/small")
    before = _open_descriptors()
    port = int(files_system.base.rsplit(":", 1)[1])

    async def leave_early() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(256 * 1024)  # headers and the start of the body
        writer.transport.abort()  # a reset, not a polite close

    await asyncio.gather(*(leave_early() for _ in range(20)))

    async def settled() -> bool:
        values = await files_system.metrics()
        return values["trunk8_files_downloads_in_flight"] == 0 and _open_descriptors() <= before

    await wait_until(settled, timeout=10)
    status, _, body = await fetch(files_system, "/small")  # and the service still serves
    assert status == 200 and body == "hello, wörld\n".encode()


async def test_a_client_that_stops_reading_is_cut_off(
    files_system: RunningSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sendfile, "SEND_TIMEOUT", 0.5)
    before = _open_descriptors()
    port = int(files_system.base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    sock.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # then never reads

    async def cut_off() -> bool:
        values = await files_system.metrics()
        return (
            values["trunk8_files_downloads_in_flight"] == 0
            and values["trunk8_files_bytes_sent_total"] < len(b"x") * 50 * 1024 * 1024
        )

    await wait_until(cut_off, timeout=10)
    sock.close()

    async def released() -> bool:
        return _open_descriptors() <= before

    await wait_until(released, timeout=5)


async def test_a_page_requested_by_many_at_once_is_rendered_once(
    files_system: RunningSystem,
) -> None:
    bodies = await asyncio.gather(*(fetch(files_system, "/page") for _ in range(40)))
    assert {status for status, _, _ in bodies} == {200}
    assert len({body for _, _, body in bodies}) == 1
    values = await files_system.metrics()
    assert values["trunk8_files_render_cache_misses_total"] == 1
    assert values["trunk8_files_render_cache_hits_total"] == 39


async def test_a_slow_page_renders_aside_and_is_kept(
    files_system: RunningSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rendercache, "RENDER_TIMEOUT", 0.05)
    path = data_dir / "users" / "bob" / "assets" / _uuid_asset(5, "md")
    path.write_text("[" * 150_000)  # markdown-it needs about a second for this
    status, headers, body = await fetch(files_system, "/page")
    assert status == 200 and body == b"[" * 150_000  # not rendered in time: shown as text
    assert headers["Content-Type"] == "text/plain; charset=utf-8"

    async def rendered() -> bool:
        _, headers, _ = await fetch(files_system, "/page")
        return headers["Content-Type"] == "text/html; charset=utf-8"

    await wait_until(rendered, timeout=60)  # the rendering went on and was kept
    values = await files_system.metrics()
    assert values["trunk8_files_render_cache_misses_total"] == 1
