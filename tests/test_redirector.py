"""`GET`/`HEAD /<code>` against the running system: hits, misses, expiry, odd paths."""

from __future__ import annotations

import datetime as dt
import string
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient
from conftest import RunningSystem, StartSystem, wait_until, write
from hypothesis import given
from hypothesis import strategies as st

from trunk8_redirector import create_app
from trunk8_redirector.app import REDIRECTOR
from trunk8_shared.settings import Settings


async def test_redirect_answers_302_with_location(system: RunningSystem) -> None:
    status, headers, body = await system.get("/docs")
    assert status == 302
    assert headers["Location"] == "https://example.com/docs"
    assert "Cache-Control" not in headers  # Trunk8 sends no cache headers on redirects
    assert 'href="https://example.com/docs"' in body
    assert "Date" in headers


async def test_inline_table_links_of_admin_are_served(system: RunningSystem) -> None:
    assert await system.location("/ex_redirect") == "https://example.com/admin"


async def test_head_has_the_headers_and_no_body(system: RunningSystem) -> None:
    status, headers, body = await system.get("/docs", method="HEAD")
    _, get_headers, get_body = await system.get("/docs")
    assert status == 302
    assert headers["Location"] == "https://example.com/docs"
    assert headers["Content-Length"] == get_headers["Content-Length"] == str(len(get_body))
    assert body == ""


async def test_unknown_code_answers_404_page(system: RunningSystem) -> None:
    status, headers, body = await system.get("/no-such-code")
    assert status == 404
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Link Not Found" in body and "Go Home" in body


async def test_file_links_are_not_redirects_yet(system: RunningSystem) -> None:
    status, _, body = await system.get("/report")
    assert status == 404 and "Link Not Found" in body


async def test_query_string_is_ignored_and_other_paths_are_404(system: RunningSystem) -> None:
    assert await system.location("/docs?utm=x") == "https://example.com/docs"
    for path in ("/docs/extra", "/a%2Fb"):  # "/" is the admin service's
        status, _, body = await system.get(path)
        assert status == 404, path
        assert "Link Not Found" in body


async def test_post_is_not_allowed(system: RunningSystem) -> None:
    status, headers, _ = await system.get("/docs", method="POST")
    assert status == 405
    assert "GET" in headers["Allow"]


async def test_unicode_codes_and_non_ascii_targets(system: RunningSystem, data_dir: Path) -> None:
    links = data_dir / "users" / "carol" / "links.toml"
    write(
        links,
        links.read_text() + '\n[links."ünï"]\ntype = "redirect"\nurl = "https://example.com/ä b"\n',
    )

    async def served() -> bool:
        return await system.location("/%C3%BCn%C3%AF") == "https://example.com/%C3%A4%20b"

    await wait_until(served)


def _expiry(seconds_from_now: float) -> str:
    return (dt.datetime.now() + dt.timedelta(seconds=seconds_from_now)).isoformat()


async def test_expired_link_answers_404(start_system: StartSystem, data_dir: Path) -> None:
    write(
        data_dir / "users" / "carol" / "links.toml",
        '[links.old]\ntype = "redirect"\nurl = "https://x.example"\n'
        f'expiration_date = "{_expiry(-60)}"\n'
        '[links.aware]\ntype = "redirect"\nurl = "https://y.example"\n'
        'expiration_date = "2001-01-01T00:00:00Z"\n'
        '[links.later]\ntype = "redirect"\nurl = "https://z.example"\n'
        'expiration_date = "2999-01-01T00:00"\n',
    )
    system = await start_system()
    for code in ("old", "aware"):
        status, _, body = await system.get(f"/{code}")
        assert status == 404 and "Link Not Found" in body
    assert await system.location("/later") == "https://z.example"


class ShiftedClock:
    """`time.time()` moved by `offset` seconds: expiry tested without waiting for it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


def _use_clock(app: web.Application, clock: ShiftedClock) -> None:
    app[REDIRECTOR].table.clock = clock.time  # the link table's injectable clock


async def test_link_becomes_expired_while_running(
    start_system: StartSystem, data_dir: Path
) -> None:
    clock = ShiftedClock()
    expires = dt.datetime.now() + dt.timedelta(hours=1)
    write(
        data_dir / "users" / "carol" / "links.toml",
        f'[links.soon]\ntype = "redirect"\nurl = "https://soon.example"\n'
        f'expiration_date = "{expires.isoformat()}"\n',
    )
    system = await start_system(setup=lambda app: _use_clock(app, clock))
    clock.offset = 3600 - 5  # five seconds before it expires
    assert await system.location("/soon") == "https://soon.example"
    clock.offset = 3600 + 1
    status, _, body = await system.get("/soon")
    assert status == 404 and "Link Not Found" in body
    assert (await system.get("/soon", method="HEAD"))[0] == 404


async def test_aiohttp_route_gives_the_same_answers(
    aiohttp_client: type[TestClient], nats_server, data_dir: Path, system: RunningSystem
) -> None:
    """The redirector's own factory, served by aiohttp alone (no fast path), agrees."""
    settings = Settings(data_dir=str(data_dir), nats_url=nats_server.url)
    client = await aiohttp_client(create_app(settings))  # type: ignore[operator]

    async def ready() -> bool:
        return (await client.get("/-/ready")).status == 200

    await wait_until(ready)
    for path in ("/docs", "/no-such-code", "/a%2Fb"):
        direct = await client.get(path, allow_redirects=False)
        fast = await system.get(path)
        assert direct.status == fast[0], path
        assert direct.headers.get("Location") == fast[1].get("Location")
        assert await direct.text() == fast[2]


def test_location_header_encoding() -> None:
    from trunk8_redirector.table import location_header

    assert location_header("https://example.com/ä b") == "https://example.com/%C3%A4%20b"
    assert location_header("https://MÜNCHEN.de/x") == "https://xn--mnchen-3ya.de/x"
    assert (
        location_header("https://u:p@bücher.example:8443/?q=1#f")
        == "https://u:p@xn--bcher-kva.example:8443/?q=1#f"
    )
    assert location_header("https://x.example/a%20b") == "https://x.example/a%20b"
    assert "\r" not in location_header("https://x.example/\r\nSet-Cookie: a=b")


@given(st.text(max_size=60) | st.text(alphabet=string.printable, max_size=60))
def test_the_location_fast_path_agrees_with_the_long_way(url: str) -> None:
    from trunk8_shared.location import encoded_location, location_header

    assert location_header(url) == encoded_location(url)
    assert location_header("https://x.example" + url) == encoded_location("https://x.example" + url)
