"""Creating and listing links in the admin: rules, messages, and read-your-writes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from conftest import RunningSystem, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_admin_support import (
    Browser,
    admin_browser,
    admin_env,
    admin_system,
    browser,
    flashes,
)

# Fixtures used by name in test arguments.
__all__ = ["admin_browser", "admin_env", "admin_system", "browser"]


def links_of(data_dir: Path, user: str) -> dict[str, dict[str, object]]:
    path = data_dir / "users" / user / "links.toml"
    links: dict[str, dict[str, object]] = tomllib.loads(path.read_text()).get("links", {})
    return links


async def add_redirect(client: Browser, url: str, code: str = "", **extra: str) -> tuple[int, str]:
    status, _, body = await client.post_multipart(
        "/add", {"link_type": "redirect", "url": url, "short_code": code, **extra}
    )
    return status, body


async def test_add_page_has_trunk8_fields(admin_browser: Browser) -> None:
    status, _, body = await admin_browser.get("/add")
    assert status == 200 and "Create New Link" in body and "Add Link" in body
    for name in (
        "link_type", "url", "file", "markdown_input_type", "markdown_file",
        "markdown_text_content", "html_input_type", "html_file", "html_text_content",
        "short_code", "enable_expiration", "expiration_date",
    ):  # fmt: skip
        assert f'name="{name}"' in body, name


async def test_created_link_works_when_the_page_answers(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    status, body = await add_redirect(admin_browser, "https://example.com/new", "fresh-one")
    assert status == 200
    assert "Link Created Successfully!" in body
    assert f"{admin_system.base}/fresh-one" in body
    for marker in ("Copy", "Create Another Link", "Visit Link", "<svg"):
        assert marker in body
    # Read-your-writes: no waiting, the very next request is served.
    assert await admin_system.location("/fresh-one") == "https://example.com/new"
    assert links_of(data_dir, "admin")["fresh-one"] == {
        "type": "redirect",
        "url": "https://example.com/new",
    }
    _, _, listing = await admin_browser.get("/links?q=fresh")
    assert "fresh-one" in listing


async def test_blank_code_gets_a_random_one(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    _, body = await add_redirect(admin_browser, "https://example.com/random")
    found = re.search(r'id="short-url" value="' + re.escape(admin_system.base) + r'/([^"]*)"', body)
    assert found, body
    code = found.group(1)
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", code)
    assert await admin_system.location(f"/{code}") == "https://example.com/random"
    assert code in links_of(data_dir, "admin")


async def test_code_rules_and_messages(admin_browser: Browser, data_dir: Path) -> None:
    before = (data_dir / "users" / "admin" / "links.toml").read_bytes()
    cases = {
        "x" * 51: "Short code must be 50 characters or less",
        "bad code": "Short code can only contain letters, numbers, hyphens, and underscores",
        "LINKS": "'LINKS' is a reserved word and cannot be used",
        "docs": "Short code 'docs' already exists.",  # bob's: unique across users
    }
    for code, message in cases.items():
        status, body = await add_redirect(admin_browser, "https://example.com/", code)
        assert status == 200, code
        assert ("error", message) in flashes(body), code
        assert "Create New Link" in body
    assert (data_dir / "users" / "admin" / "links.toml").read_bytes() == before


async def test_codes_are_case_sensitive(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    _, body = await add_redirect(admin_browser, "https://example.com/upper", "Docs")
    assert "Link Created Successfully!" in body
    assert await admin_system.location("/Docs") == "https://example.com/upper"
    assert await admin_system.location("/docs") == "https://example.com/docs"


async def test_type_and_url_are_required(admin_browser: Browser) -> None:
    _, _, body = await admin_browser.post_multipart("/add", {"url": "https://example.com/"})
    assert ("error", "Link type is required.") in flashes(body)
    _, body = await add_redirect(admin_browser, "", "nourl")
    assert ("error", "URL is required for redirect link.") in flashes(body)
    _, _, body = await admin_browser.post_multipart("/add", {"link_type": "weird"})
    assert ("error", "Unknown link type 'weird'.") in flashes(body)


async def test_dangerous_urls_are_refused(admin_browser: Browser, data_dir: Path) -> None:
    before = (data_dir / "users" / "admin" / "links.toml").read_bytes()
    for url in (
        "javascript:alert(document.cookie)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://example.com/\r\nSet-Cookie: x=1",
        "ftp://example.com/file",
        "https:///no-host",
        "example.com/no-scheme",
    ):
        status, body = await add_redirect(admin_browser, url, "danger")
        assert status == 200, url
        assert [category for category, _ in flashes(body)] == ["error"], url
        message = flashes(body)[0][1]
        assert "http" in message or "line breaks" in message, (url, message)
        assert "is-invalid" in body  # shown next to the URL field too
        assert "Link Created Successfully!" not in body
        assert 'href="javascript' not in body.lower()
    assert (data_dir / "users" / "admin" / "links.toml").read_bytes() == before


async def test_expiry_is_checked_and_stored_verbatim(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    _, body = await add_redirect(
        admin_browser, "https://example.com/x", "bad-date",
        enable_expiration="on", expiration_date="next tuesday",
    )  # fmt: skip
    assert any("Invalid expiration date" in m for _, m in flashes(body))
    for code, value in (
        ("later-local", "2031-06-30T18:00"),
        ("later-zulu", "2031-06-30T18:00:00Z"),
        ("later-offset", "2031-06-30T18:00:00+02:00"),
        ("later-date", "2031-06-30"),
    ):
        _, body = await add_redirect(
            admin_browser, "https://example.com/x", code,
            enable_expiration="on", expiration_date=value,
        )  # fmt: skip
        assert "Link Created Successfully!" in body, (code, flashes(body))
        assert links_of(data_dir, "admin")[code]["expiration_date"] == value
        assert await admin_system.location(f"/{code}") == "https://example.com/x"
    _, body = await add_redirect(
        admin_browser, "https://example.com/x", "past", enable_expiration="on",
        expiration_date="2020-01-01T00:00",
    )  # fmt: skip
    assert "Link Created Successfully!" in body
    status, _, _ = await admin_system.get("/past")
    assert status == 404  # expired at once
    _, _, listing = await admin_browser.get("/links?q=past")
    assert "expired" in listing
    # Unticked: no expiry stored.
    await add_redirect(
        admin_browser, "https://example.com/x", "no-exp", expiration_date="2020-01-01"
    )
    assert "expiration_date" not in links_of(data_dir, "admin")["no-exp"]


async def test_listing_non_admin_sees_own_links_only(browser: Browser, data_dir: Path) -> None:
    # bob's hash in the sample data is unusable; make carol an account with a known one.
    from trunk8_admin.passwords import hash_password

    users = data_dir / "users" / "users.toml"
    users.write_text(
        users.read_text().replace(
            "[users.carol]\n", f'[users.carol]\npassword_hash = "{hash_password("pw", 1000)}"\n'
        )
    )
    assert await browser.login("carol", "pw") == 302
    _, _, body = await browser.get("/links")
    assert "carol1" in body and "docs" not in body and "ex_redirect" not in body
    assert "My Links" in body


async def test_listing_admin_sees_all_with_owner_filter_and_sort(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    _, _, body = await admin_browser.get("/links")
    for code in ("ex_redirect", "ex_text", "docs", "report", "carol1"):
        assert f'data-code="{code}"' in body
    assert "Owner" in body and "You" in body
    assert f"{admin_system.base}/docs" in body  # the full short URL, with a copy button
    assert 'data-copy="' in body
    _, _, body = await admin_browser.get("/links?owner=bob")
    assert 'data-code="docs"' in body and 'data-code="carol1"' not in body
    _, _, body = await admin_browser.get("/links?type=file")
    assert 'data-code="report"' in body and 'data-code="docs"' not in body
    assert "Q4_Report.pdf" in body  # the display name of a file link
    _, _, body = await admin_browser.get("/links?sort=code&dir=desc")
    order = re.findall(r'data-code="([^"]+)"', body)
    assert order == sorted(order, key=str.casefold, reverse=True)
    _, _, body = await admin_browser.get("/links?q=nothing-matches-this")
    assert "No links match this search." in body


async def test_listing_pages(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    lines = ["[links]"] + [
        f'p{i:03d} = {{ type = "redirect", url = "https://example.com/{i}" }}' for i in range(120)
    ]
    (data_dir / "users" / "carol" / "links.toml").write_text("\n".join(lines) + "\n")

    async def listed() -> bool:
        _, _, body = await admin_browser.get("/links?owner=carol")
        return "(120 links)" in body

    await wait_until(listed, timeout=10)
    _, _, body = await admin_browser.get("/links?owner=carol&sort=code&page=3")
    codes = re.findall(r'data-code="([^"]+)"', body)
    assert codes == [f"p{i:03d}" for i in range(100, 120)]
    assert "Page 3 of 3" in body


async def test_javascript_urls_in_files_are_never_live_links(
    admin_browser: Browser, data_dir: Path, admin_system: RunningSystem
) -> None:
    # A hand-written file may hold anything the watcher accepts; the list shows text only.
    _, _, body = await admin_browser.get("/links")
    assert 'href="javascript:' not in body
    assert 'href="https://example.com/docs"' in body  # web URLs stay clickable


async def test_dashboard_counts(admin_browser: Browser) -> None:
    _, _, body = await admin_browser.get("/")
    assert re.search(r'id="own-link-count">2<', body)
    assert re.search(r'id="user-count">3<', body)
    assert re.search(r'id="total-link-count">5<', body)


async def test_new_codes_are_nfc_and_non_ascii_ones_warned_about(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    _, body = await add_redirect(admin_browser, "https://example.com/cafe", "cafe\u0301")
    assert "Link Created Successfully!" in body
    assert any("non-ASCII" in message for _, message in flashes(body))
    assert "caf\u00e9" in links_of(data_dir, "admin")
    assert await admin_system.location("/caf%C3%A9") == "https://example.com/cafe"
    _, body = await add_redirect(admin_browser, "https://example.com/plain", "plain")
    assert not any("non-ASCII" in message for _, message in flashes(body))


async def admin_samples(system: RunningSystem) -> dict[tuple[str, str], float]:
    """The admin's metric samples by (name, labels as text)."""
    _, _, text = await system.get("/-/metrics")
    return {
        (sample.name, str(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("trunk8_admin_")
    }


async def test_metrics_count_pages_logins_saves_and_time_to_served(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    await admin_browser.get("/add")  # the form's CSRF token
    before = await admin_samples(admin_system)
    form = {"link_type": "redirect", "url": "https://example.com/m", "short_code": "metered"}
    status, _, _ = await admin_browser.post("/add", form)
    assert status == 200
    await admin_browser.post("/add", {**form, "url": "javascript:alert(1)", "short_code": "x2"})
    after = await admin_samples(admin_system)

    def grew(name: str, **labels: str) -> float:
        key = (name, str(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert after[("trunk8_admin_logins_total", "[('outcome', 'success')]")] == 1
    assert grew("trunk8_admin_requests_total", route="/add", status="200") == 2
    assert grew("trunk8_admin_request_duration_seconds_count", route="/add") == 2
    assert grew("trunk8_admin_saves_total", action="create", outcome="live") == 1
    # Only the save that went live was timed from write to served.
    assert grew("trunk8_admin_save_to_served_seconds_count") == 1
    assert 0 < grew("trunk8_admin_save_to_served_seconds_sum") < 5
    assert after[("trunk8_admin_links_revision", "[]")] > 0


# Every shape an expiry takes in hand-written files: TOML date-times with and without an
# offset, dates, times of day, and strings Trunk8 never checked.
ODD_EXPIRIES = {
    "e-offset": "2031-06-30T18:00:00+02:00",
    "e-local": "2031-06-30T18:00:00",
    "e-date": "2031-06-30",
    "e-time": "07:32:00",
    "e-frac": "2031-06-30T18:00:00.123456Z",
    "e-past": "2001-01-01T00:00:00Z",
    "e-max": "9999-12-31T23:59:59",
    "e-min": "0001-01-01T00:00:00+14:00",
    "e-quoted-space": '"2031-06-30 18:00"',
    "e-quoted-lower": '"2031-06-30t18:00z"',
    "e-quoted-junk": '"next tuesday"',
    "e-quoted-empty": '""',
    "e-quoted-year5": '"12031-06-30"',
    "e-int": "20310630",
    "e-bool": "true",
    "e-array": '["2031-06-30"]',
}


async def test_expiry_in_any_form_never_crashes_a_page(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    text = "".join(
        f'[links.{code}]\ntype = "redirect"\nurl = "https://example.com/{code}"\n'
        f"expiration_date = {value}\n\n"
        for code, value in ODD_EXPIRIES.items()
    )
    (data_dir / "users" / "bob" / "links.toml").write_text(text)  # the watcher picks it up

    async def listed() -> bool:
        _, _, body = await admin_browser.get("/links?owner=bob")
        return 'data-code="e-offset"' in body

    await wait_until(listed, timeout=10)
    pages = ["/", "/links", "/links?owner=bob", "/users/bob"]
    pages += [f"/links?owner=bob&sort=expiry{d}" for d in ("", "&dir=desc")]
    pages += [f"/edit_link/{code}" for code in ODD_EXPIRIES]
    for path in pages:
        status, _, body = await admin_browser.get(path)
        assert status in (200, 302), (path, status)
        assert "Traceback" not in body
    # Beyond what local time can show, the edit form keeps the value's own wall time.
    _, _, body = await admin_browser.get("/edit_link/e-min")
    assert 'value="0001-01-01T00:00"' in body
    # An edit that keeps the hand-written expiry saves without tripping on it.
    status, _, body = await admin_browser.post_multipart(
        "/edit_link/e-time",
        {"link_type": "redirect", "url": "https://example.com/changed"},
    )
    assert status in (200, 302)
    assert (
        tomllib.loads((data_dir / "users" / "bob" / "links.toml").read_text())["links"]["e-time"][
            "url"
        ]
        == "https://example.com/changed"
    )
