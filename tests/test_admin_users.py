"""Accounts, switching users, profile and settings, through real HTTP, NATS and files."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import nats
from conftest import RunningSystem, wait_until
from test_admin_support import (
    ADMIN_PASSWORD,
    Browser,
    admin_browser,
    admin_env,
    admin_system,
    browser,
    field_errors,
    flashes,
)

# Fixtures used by name in test arguments.
__all__ = ["admin_browser", "admin_env", "admin_system", "browser"]


def users_toml(data_dir: Path) -> dict:
    return tomllib.loads((data_dir / "users" / "users.toml").read_text(encoding="utf-8"))


async def register(browser: Browser, username: str, password: str = "pw-1234", **extra: str):
    await browser.get("/auth/register")
    fields = {
        "username": username,
        "display_name": "",
        "password": password,
        "confirm_password": password,
        **extra,
    }
    return await browser.post("/auth/register", fields)


async def signed_in(system: RunningSystem, username: str, password: str) -> Browser:
    other = Browser(system)
    assert await other.login(username, password) == 302
    return other


async def test_register_needs_an_admin(browser: Browser) -> None:
    status, headers, _ = await browser.get("/auth/register")
    assert (status, headers["Location"]) == (302, "/auth/login")
    _, _, body = await browser.get("/auth/login")
    assert ("error", "Admin access required to register new users.") in flashes(body)


async def test_register_checks_in_trunk8_order(admin_browser: Browser, data_dir: Path) -> None:
    before = (data_dir / "users" / "users.toml").read_bytes()
    cases = [
        ({"username": ""}, "username", "Username is required."),
        ({"password": "", "confirm_password": ""}, "password", "Password is required."),
        ({"confirm_password": "other"}, "confirm_password", "Passwords do not match."),
        ({"username": "ab"}, "username", "Username must be at least 3 characters."),
        (
            {"password": "abc", "confirm_password": "abc"},
            "password",
            "Password must be at least 4 characters.",
        ),
        (
            {"username": "bad name"},
            "username",
            "Username can only contain letters, numbers, hyphens, and underscores.",
        ),
        (
            {"username": "../etc"},
            "username",
            "Username can only contain letters, numbers, hyphens, and underscores.",
        ),
        ({"username": "bob"}, "username", "Username already exists or registration failed."),
        (
            {"display_name": "x" * 201},
            "display_name",
            "Display name must be at most 200 characters.",
        ),
    ]
    for change, field, message in cases:
        fields = {
            "username": "newbie",
            "display_name": "",
            "password": "pw-1234",
            "confirm_password": "pw-1234",
        }
        fields.update(change)
        status, _, body = await admin_browser.post("/auth/register", fields)
        assert status == 200, change
        assert ("error", message) in flashes(body), change
        assert field_errors(body) == {field: message}, change  # next to the field too
    assert (data_dir / "users" / "users.toml").read_bytes() == before


async def test_register_creates_account_and_files(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    status, headers, _ = await register(admin_browser, "john_doe")
    assert (status, headers["Location"]) == (302, "/users")
    _, _, body = await admin_browser.get("/users")
    assert ("success", "User 'john_doe' created successfully!") in flashes(body)
    assert "@john_doe" in body and "John_Doe" in body  # blank display name: title-cased
    entry = users_toml(data_dir)["users"]["john_doe"]
    assert entry["password_hash"].startswith("pbkdf2$600000$")
    assert entry["is_admin"] is False and entry["display_name"] == "John_Doe"
    folder = data_dir / "users" / "john_doe"
    assert (folder / "links.toml").read_text() == "[links]\n"
    assert (folder / "config.toml").read_text() == "[app]\n"
    assert (folder / "assets").is_dir()
    assert list(users_toml(data_dir)["users"])[-1] == "john_doe"  # appended, order kept
    john = await signed_in(admin_system, "john_doe", "pw-1234")
    try:
        _, _, body = await john.get("/")
        assert "Welcome to Trunk8, John_Doe!" in body
        status, headers, _ = await john.get("/users")  # not an admin
        assert (status, headers["Location"]) == (302, "/")
    finally:
        await john.close()


async def test_users_list_and_details(admin_browser: Browser) -> None:
    status, _, body = await admin_browser.get("/users")
    assert status == 200
    assert "User Management" in body
    for name in ("@admin", "@bob", "@carol"):
        assert name in body
    assert "3 users (1 admins, 2 regular users), 5 links" in body
    status, _, body = await admin_browser.get("/users/bob")
    assert status == 200 and "User Details" in body and "@bob" in body
    assert '<span id="detail-link-count">2</span> links (1 file links)' in body
    status, headers, _ = await admin_browser.get("/users/ghost")
    assert (status, headers["Location"]) == (302, "/users")
    _, _, body = await admin_browser.get("/users")
    assert ("error", "User 'ghost' not found.") in flashes(body)


async def test_delete_user_preview_then_everything_goes(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    await register(admin_browser, "dora", "dora-pass")
    (data_dir / "users" / "dora" / "links.toml").write_text(
        '[links.dora1]\ntype = "file"\npath = "a.txt"\n'
        '[links.dora2]\ntype = "redirect"\nurl = "https://example.com/d"\n'
    )
    (data_dir / "users" / "dora" / "assets" / "a.txt").write_bytes(b"x" * 2048)
    await wait_until(lambda: _status_is(admin_system, "/dora2", 302))
    dora = await signed_in(admin_system, "dora", "dora-pass")
    try:
        assert (await dora.get("/"))[0] == 200
        status, _, body = await admin_browser.get("/users/dora/delete")
        assert status == 200
        assert '<strong data-preview="links">2</strong>' in body
        assert '<strong data-preview="files">1</strong> files (2.0 KB)' in body
        status, headers, _ = await admin_browser.post("/users/dora/delete", {})
        assert (status, headers["Location"]) == (302, "/users")
        # The page answered once the serving side dropped the links: no waiting here.
        assert (await admin_system.get("/dora2"))[0] == 404
        assert (await admin_system.get("/dora1"))[0] == 404
        assert not (data_dir / "users" / "dora").exists()
        assert "dora" not in users_toml(data_dir)["users"]
        status, headers, _ = await dora.get("/")  # signed out at once (T8-W12)
        assert (status, headers["Location"]) == (302, "/auth/login")
        assert not (data_dir / "users" / "dora").exists()  # and nothing re-created
        _, _, body = await admin_browser.get("/users")
        assert ("success", "User 'dora' deleted successfully.") in flashes(body)
    finally:
        await dora.close()


async def _status_is(system: RunningSystem, path: str, wanted: int) -> bool:
    return (await system.get(path))[0] == wanted


async def test_admin_cannot_be_deleted(admin_browser: Browser, data_dir: Path) -> None:
    before = (data_dir / "users" / "users.toml").read_bytes()
    status, headers, _ = await admin_browser.post("/users/admin/delete", {})
    assert (status, headers["Location"]) == (302, "/users")
    _, _, body = await admin_browser.get("/users")
    assert ("error", "Cannot delete the admin user.") in flashes(body)
    status, _, _ = await admin_browser.post("/users/bob/delete", {}, csrf=False)
    assert status == 403
    assert (data_dir / "users" / "users.toml").read_bytes() == before


async def test_switch_user_acts_as_them_with_an_audit_trail(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    events: asyncio.Queue[dict] = asyncio.Queue()

    async def received(msg: nats.aio.msg.Msg) -> None:
        await events.put(json.loads(msg.data))

    await bus_client.subscribe("trunk8.events.audit.>", cb=received)
    await bus_client.flush()
    # The GET form only confirms; nothing changes until the POST.
    status, _, body = await admin_browser.get("/auth/switch-user/bob")
    assert status == 200 and 'action="/auth/switch-user/bob"' in body
    status, headers, _ = await admin_browser.post("/auth/switch-user/bob", {})
    assert (status, headers["Location"]) == (302, "/")
    _, _, body = await admin_browser.get("/")
    assert ("info", "Switched to user 'Bob'") in flashes(body)
    assert "Viewing Bob's Dashboard" in body and 'id="impersonation-banner"' in body
    event = await asyncio.wait_for(events.get(), 5)
    assert (event["type"], event["admin"], event["user"]) == ("audit.action", "admin", "bob")
    assert (event["action"], event["client"]) == ("switch-user", "127.0.0.1")
    # A link made while switched belongs to bob, and the trail names both.
    _, _, body = await admin_browser.post_multipart(
        "/add",
        {"link_type": "redirect", "url": "https://example.com/as-bob", "short_code": "asbob"},
    )
    assert "Link Created Successfully!" in body
    bob_links = tomllib.loads((data_dir / "users" / "bob" / "links.toml").read_text())
    assert bob_links["links"]["asbob"]["url"] == "https://example.com/as-bob"
    event = await asyncio.wait_for(events.get(), 5)
    assert (event["admin"], event["user"], event["action"]) == ("admin", "bob", "POST /add")
    assert event["detail"] == "created asbob"
    # Admin powers follow the signed-in account (T8-W23).
    assert (await admin_browser.get("/users"))[0] == 200
    status, _, body = await admin_browser.get("/edit_link/carol1")  # anyone's link
    assert status == 200 and "Edit Link" in body
    _, _, body = await admin_browser.get("/links")  # the list is bob's: viewing as bob
    assert "asbob" in body and "carol1" not in body
    status, headers, _ = await admin_browser.post("/auth/switch-back", {})
    assert (status, headers["Location"]) == (302, "/")
    _, _, body = await admin_browser.get("/")
    assert ("info", "Switched back to admin view") in flashes(body)
    assert "Welcome to Trunk8, Administrator!" in body
    event = await asyncio.wait_for(events.get(), 5)
    assert (event["action"], event["user"]) == ("switch-back", "bob")


async def test_switching_needs_an_admin_and_a_known_user(
    admin_browser: Browser, admin_system: RunningSystem
) -> None:
    status, headers, _ = await admin_browser.post("/auth/switch-user/ghost", {})
    assert (status, headers["Location"]) == (302, "/users")
    _, _, body = await admin_browser.get("/users")
    assert ("error", "User 'ghost' not found.") in flashes(body)
    await register(admin_browser, "plain", "plain-pass")
    plain = await signed_in(admin_system, "plain", "plain-pass")
    try:
        await plain.get("/")
        status, headers, _ = await plain.post("/auth/switch-user/bob", {})
        assert (status, headers["Location"]) == (302, "/")
        _, _, body = await plain.get("/")
        assert ("error", "Admin access required to switch users.") in flashes(body)
        status, headers, _ = await plain.post("/auth/switch-back", {})
        _, _, body = await plain.get("/")
        assert ("error", "Admin access required.") in flashes(body)
    finally:
        await plain.close()


async def test_profile_password_change_then_login(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    await register(admin_browser, "pat", "old-pass")
    pat = await signed_in(admin_system, "pat", "old-pass")
    try:
        status, _, body = await pat.get("/profile")
        assert status == 200 and "Change Password" in body
        attempts = [
            ({"current_password": "wrong"}, "current_password", "Current password is incorrect."),
            (
                {"new_password": "", "confirm_password": ""},
                "new_password",
                "New password is required.",
            ),
            ({"confirm_password": "other"}, "confirm_password", "New passwords do not match."),
            (
                {"new_password": "abc", "confirm_password": "abc"},
                "new_password",
                "Password must be at least 4 characters.",
            ),
        ]
        for change, field, message in attempts:
            fields = {
                "action": "change_password",
                "current_password": "old-pass",
                "new_password": "new-pass",
                "confirm_password": "new-pass",
                **change,
            }
            status, headers, _ = await pat.post("/profile", fields)
            assert (status, headers["Location"]) == (302, "/profile")
            _, _, body = await pat.get("/profile")
            assert ("error", message) in flashes(body), change
            assert field_errors(body) == {field: message}, change  # next to the field too
        _, _, body = await pat.get("/profile")
        assert field_errors(body) == {}  # shown once
        await pat.post("/profile", {"action": "update_profile", "display_name": " "})
        _, _, body = await pat.get("/profile")
        assert field_errors(body) == {"display_name": "Display name is required."}
        await pat.post(
            "/profile",
            {
                "action": "change_password",
                "current_password": " old-pass ",
                "new_password": "new-pass",
                "confirm_password": "new-pass",
            },
        )
        _, _, body = await pat.get("/profile")
        assert ("success", "Password changed successfully.") in flashes(body)
    finally:
        await pat.close()
    fresh = Browser(admin_system)
    try:
        assert await fresh.login("pat", "old-pass") == 200
        assert await fresh.login("pat", "new-pass") == 302
    finally:
        await fresh.close()


async def test_admin_password_is_env_only(admin_browser: Browser, data_dir: Path) -> None:
    _, _, body = await admin_browser.get("/profile")
    assert "TRUNK8_ADMIN_PASSWORD" in body and 'name="new_password"' not in body
    before = (data_dir / "users" / "users.toml").read_bytes()
    await admin_browser.post(
        "/profile",
        {
            "action": "change_password",
            "current_password": ADMIN_PASSWORD,
            "new_password": "x-new-pass",
            "confirm_password": "x-new-pass",
        },
    )
    _, _, body = await admin_browser.get("/profile")
    assert any("TRUNK8_ADMIN_PASSWORD" in text for kind, text in flashes(body) if kind == "error")
    assert (data_dir / "users" / "users.toml").read_bytes() == before  # no hash (T8-W13)


async def test_display_name_change(admin_browser: Browser, data_dir: Path) -> None:
    await admin_browser.post("/auth/switch-user/carol", {})
    await admin_browser.post("/profile", {"action": "update_profile", "display_name": "Caroline"})
    assert users_toml(data_dir)["users"]["carol"]["display_name"] == "Caroline"
    _, _, body = await admin_browser.get("/profile")
    assert 'id="profile-display-name">Caroline<' in body


async def test_settings_validated_and_written_to_the_right_file(
    admin_browser: Browser, data_dir: Path
) -> None:
    config = data_dir / "config" / "config.toml"
    config.write_text('# kept\n[app]\ntheme = "cerulean"\nmax_file_size_mb = 100\n')
    status, _, body = await admin_browser.get("/settings")
    assert status == 200
    for marker in ("User Interface Theme", "Markdown Theme", "Current"):
        assert marker in body
    for fields, message in (
        ({"theme": "nope", "markdown_theme": "flatly"}, "Invalid theme selected."),
        ({"theme": "flatly", "markdown_theme": "../x"}, "Invalid markdown theme selected."),
    ):
        status, headers, _ = await admin_browser.post("/settings", fields)
        assert (status, headers["Location"]) == (302, "/settings")
        _, _, body = await admin_browser.get("/settings")
        assert ("error", message) in flashes(body)
    await admin_browser.post("/settings", {"theme": "darkly", "markdown_theme": "journal"})
    _, _, body = await admin_browser.get("/settings")
    assert ("success", "Theme settings updated successfully!") in flashes(body)
    assert "/static/bootswatch/darkly/bootstrap.min.css" in body  # the next page
    text = config.read_text()
    assert text.startswith("# kept\n") and "max_file_size_mb = 100" in text
    assert tomllib.loads(text)["app"] == {
        "theme": "darkly",
        "max_file_size_mb": 100,
        "markdown_theme": "journal",
    }
    assert not (data_dir / "users" / "admin" / "config.toml").exists()  # T8-005
    # A user's choice goes to their own file, and only their pages change.
    await admin_browser.post("/auth/switch-user/carol", {})
    await admin_browser.post("/settings", {"theme": "minty", "markdown_theme": "flatly"})
    own = tomllib.loads((data_dir / "users" / "carol" / "config.toml").read_text())
    assert own["app"] == {"theme": "minty", "markdown_theme": "flatly"}
    _, _, body = await admin_browser.get("/")
    assert "/static/bootswatch/minty/bootstrap.min.css" in body
    assert tomllib.loads(config.read_text())["app"]["theme"] == "darkly"


async def test_broken_files_keep_the_last_good_state_and_say_so(
    admin_browser: Browser, data_dir: Path
) -> None:
    _, _, body = await admin_browser.get("/users")
    assert "@carol" in body
    (data_dir / "users" / "users.toml").write_text(
        (data_dir / "users" / "users.toml").read_text() + "\n[users.broken\n"
    )
    (data_dir / "config" / "themes.toml").write_text(
        '[themes]\nflatly = "Flatly"\ncosmo = 3\n[[oops'
    )
    status, _, body = await admin_browser.get("/users")
    assert status == 200
    assert "@carol" in body and "@bob" in body  # the list is not emptied (T8-W17)
    assert 'data-broken-file="users/users.toml"' in body
    status, _, body = await admin_browser.get("/settings")
    assert status == 200 and 'data-broken-file="config/themes.toml"' in body
    assert 'value="zephyr"' in body  # last good catalogue
    # A themes file with plain-string values parses and is used (Trunk8 crashed on it).
    (data_dir / "config" / "themes.toml").write_text('[themes]\nflatly = "Flat One"\ncosmo = 3\n')
    status, _, body = await admin_browser.get("/settings")
    assert status == 200 and "Flat One" in body and "Cosmo" in body
    assert 'data-broken-file="config/themes.toml"' not in body
    # Account changes wait for a users.toml that parses; nothing is half-written.
    broken = (data_dir / "users" / "users.toml").read_bytes()
    status, _, body = await register(admin_browser, "later", "later-pass")
    assert status == 200
    assert any("registration failed" in text for kind, text in flashes(body) if kind == "error")
    await admin_browser.post("/users/carol/delete", {})
    assert (data_dir / "users" / "users.toml").read_bytes() == broken
    assert (data_dir / "users" / "carol" / "links.toml").exists()
    # A broken config.toml is named too, and pages keep their last good theme.
    (data_dir / "config" / "config.toml").write_text("[app\n")
    status, _, body = await admin_browser.get("/")
    assert status == 200 and 'data-broken-file="config/config.toml"' in body


async def test_markdown_pages_follow_the_viewers_theme(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    (data_dir / "users" / "carol" / "assets").mkdir(parents=True, exist_ok=True)
    (data_dir / "users" / "carol" / "assets" / "n.md").write_text("# Notes\n")
    with (data_dir / "users" / "carol" / "links.toml").open("a") as links:
        links.write('\n[links.notes]\ntype = "markdown"\npath = "n.md"\n')

    async def theme_seen(client: Browser | None, theme: str) -> bool:
        if client is None:
            _, _, body = await admin_system.get("/notes")
        else:
            _, _, body = await client.get("/notes")
        return f'data-markdown-theme="{theme}"' in body

    await wait_until(lambda: theme_seen(None, "cerulean"))
    # The admin's choice is the global one: every viewer sees it (anonymous included).
    await admin_browser.post("/settings", {"theme": "cosmo", "markdown_theme": "journal"})
    await wait_until(lambda: theme_seen(None, "journal"))
    # Carol's own choice applies to pages she (or an admin acting as her) views.
    await admin_browser.post("/auth/switch-user/carol", {})
    await admin_browser.post("/settings", {"theme": "minty", "markdown_theme": "sketchy"})
    assert await theme_seen(admin_browser, "sketchy")  # at once: read on the request
    assert await theme_seen(None, "journal")
    await admin_browser.post("/auth/switch-back", {})
    assert await theme_seen(admin_browser, "journal")
    # A forged or stale cookie is only a visitor.
    stranger = Browser(admin_system)
    try:
        stranger.http.cookie_jar.update_cookies({"trunk8_session": "not-a-token"})
        assert await theme_seen(stranger, "journal")
    finally:
        await stranger.close()


async def test_accounts_named_to_escape_are_not_accounts(
    admin_browser: Browser, data_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    users = data_dir / "users" / "users.toml"
    users.write_text(users.read_text() + '\n[users."../../victim"]\nis_admin = false\n')
    _, _, body = await admin_browser.get("/users")
    assert "victim" not in body and "@bob" in body
    await admin_browser.post("/users/..%2F..%2Fvictim/delete", {})
    status, _, _ = await admin_browser.post("/auth/switch-user/..%2F..%2Fvictim", {})
    assert status == 302
    assert (victim / "keep.txt").read_text() == "keep"
    assert '"../../victim"' in users.read_text()  # the file itself is left alone


async def test_a_switched_admin_still_deletes_users(
    admin_browser: Browser, data_dir: Path, bus_client: nats.NATS
) -> None:
    events: asyncio.Queue[dict] = asyncio.Queue()

    async def received(msg: nats.aio.msg.Msg) -> None:
        await events.put(json.loads(msg.data))

    await bus_client.subscribe("trunk8.events.audit.action", cb=received)
    await bus_client.flush()
    await admin_browser.post("/auth/switch-user/bob", {})
    assert (await asyncio.wait_for(events.get(), 5))["action"] == "switch-user"
    status, headers, _ = await admin_browser.post("/users/carol/delete", {})
    assert (status, headers["Location"]) == (302, "/users")
    assert "carol" not in users_toml(data_dir)["users"]  # T8-W23: Trunk8 refused this
    event = await asyncio.wait_for(events.get(), 5)
    assert (event["admin"], event["user"], event["action"], event["target"]) == (
        "admin",
        "bob",
        "user.delete",
        "carol",
    )
    await admin_browser.post("/auth/switch-back", {})
    # Recorded once: the next event is the switch back, not the generic POST trail.
    assert (await asyncio.wait_for(events.get(), 5))["action"] == "switch-back"
