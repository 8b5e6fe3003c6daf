"""Backup and restore through real HTTP: Trunk8's layout, round trips, hostile zips."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tomllib
import zipfile
from pathlib import Path

import aiohttp
import pytest
from conftest import RunningSystem, StartSystem, wait_until
from test_admin_support import (
    FIXTURE,
    Browser,
    admin_browser,
    admin_env,
    admin_system,
    browser,
    fixture_copy,
    flashes,
)

# Fixtures used by name in test arguments.
__all__ = ["admin_browser", "admin_env", "admin_system", "browser"]

BACKUPS = FIXTURE / "backups"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


async def download_backup(browser: Browser, target: str = "") -> tuple[dict[str, str], bytes]:
    await browser.get("/backup/create")
    fields = {"csrf_token": browser.csrf, "target_user": target}
    async with browser.http.post(
        browser.base + "/backup/create", data=fields, allow_redirects=False
    ) as response:
        assert response.status == 200, await response.text()
        return dict(response.headers), await response.read()


async def upload_backup(
    browser: Browser, content: bytes, mode: str = "merge", target: str = "", name: str = "b.zip"
) -> tuple[int, dict[str, str], str]:
    await browser.get("/backup/restore")
    return await browser.post_multipart(
        "/backup/restore",
        {"target_user": target, "restore_mode": mode},
        {"backup_file": (name, content)},
    )


async def restore_flashes(
    browser: Browser, content: bytes, mode: str = "merge", target: str = ""
) -> list[tuple[str, str]]:
    status, headers, _ = await upload_backup(browser, content, mode, target)
    assert status == 302, status
    _, _, body = await browser.get(headers["Location"])
    return flashes(body)


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return out.getvalue()


async def test_backup_has_trunk8_layout(admin_browser: Browser, data_dir: Path) -> None:
    assets = data_dir / "users" / "bob" / "assets"
    (assets / "sub").mkdir(parents=True)
    (assets / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf").write_bytes(b"%PDF" + b"x" * 300_000)
    (assets / "sub" / "nested.txt").write_bytes(b"nested")
    (assets / "link-out").symlink_to("/etc/passwd")
    headers, content = await download_backup(admin_browser, "bob")
    assert headers["Content-Type"] == "application/zip"
    assert headers["Content-Disposition"].startswith('attachment; filename="trunk8_backup_bob_')
    archive = zipfile.ZipFile(io.BytesIO(content))
    names = archive.namelist()
    assert names == [
        "links.toml",
        "config.toml",
        "assets/3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf",
        "assets/sub/nested.txt",
        "backup_metadata.toml",
    ]
    assert archive.read("links.toml") == (data_dir / "users" / "bob" / "links.toml").read_bytes()
    assert archive.read("config.toml") == b"[app]\n"  # none on disk: Trunk8's default
    assert archive.testzip() is None
    info = tomllib.loads(archive.read("backup_metadata.toml").decode())["backup_info"]
    assert (info["created_by"], info["target_user"], info["trunk8_version"]) == (
        "admin",
        "bob",
        "0.7.0",
    )
    _, content = await download_backup(admin_browser, "admin")
    assert "config.toml" not in zipfile.ZipFile(io.BytesIO(content)).namelist()


async def test_backup_permissions(admin_browser: Browser, admin_system: RunningSystem) -> None:
    status, headers, _ = await admin_browser.post("/backup/create", {"target_user": "ghost"})
    assert (status, headers["Location"]) == (302, "/backup/create")
    _, _, body = await admin_browser.get("/backup/create")
    assert ("error", "User 'ghost' not found.") in flashes(body)
    assert "Create Backup" in body and "Backup Contents" in body
    assert '<option value="carol"' in body  # an admin chooses any user
    await admin_browser.get("/auth/register")
    await admin_browser.post(
        "/auth/register",
        {"username": "eve", "password": "eve-pass", "confirm_password": "eve-pass"},
    )
    eve = Browser(admin_system)
    try:
        assert await eve.login("eve", "eve-pass") == 302
        _, _, body = await eve.get("/backup/create")
        assert '<option value="carol"' not in body and 'value="eve"' in body
        status, headers, _ = await eve.post("/backup/create", {"target_user": "bob"})
        assert (status, headers["Location"]) == (302, "/backup/create")
        _, _, body = await eve.get("/backup/create")
        assert ("error", "You don't have permission to backup other users' data.") in flashes(body)
        status, _, _ = await upload_backup(
            eve, make_zip({"links.toml": b"[links]\n"}), target="bob"
        )
        _, _, body = await eve.get("/backup/restore")
        assert ("error", "You don't have permission to restore to other users.") in flashes(body)
    finally:
        await eve.close()


async def test_round_trip_is_byte_exact(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    bob = data_dir / "users" / "bob"
    (bob / "assets").mkdir(exist_ok=True)
    (bob / "assets" / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf").write_bytes(
        bytes(range(256)) * 999
    )
    (bob / "config.toml").write_text('[app]\ntheme = "darkly"\n')
    before = tree(bob)
    _, content = await download_backup(admin_browser, "bob")
    shutil.rmtree(bob / "assets")
    (bob / "links.toml").write_text("[links]\n")
    (bob / "config.toml").write_text("[app]\n")
    found = await restore_flashes(admin_browser, content, "replace", "bob")
    assert any(
        kind == "success"
        and text.startswith("Backup restored successfully! Restored 2 links and 1 files (created: ")
        for kind, text in found
    ), found
    assert tree(bob) == before
    assert await admin_system.location("/docs") == "https://example.com/docs"
    _, _, text = await admin_system.get("/-/metrics")
    assert 'trunk8_admin_backups_total{outcome="sent"} 1.0' in text
    assert 'trunk8_admin_restores_total{mode="replace",outcome="restored"} 1.0' in text


async def test_trunk8_backups_restore_like_trunk8(
    admin_env: None, start_system: StartSystem, tmp_path: Path
) -> None:
    data = fixture_copy(tmp_path, "t8")
    system = await start_system(data_dir=str(data))
    client = Browser(system)
    try:
        assert await client.login("", "test-admin-pw") == 302
        alice = data / "users" / "alice"
        alice_before = tree(alice)
        # Replace alice with her own backup: same links, settings and files (Trunk8's result).
        found = await restore_flashes(
            client, (BACKUPS / "trunk8_backup_alice.zip").read_bytes(), "replace", "alice"
        )
        assert (
            "success",
            "Backup restored successfully! Restored 3 links and 1 files (created: 2026-12-03)",
        ) in found
        assert tree(alice) == alice_before
        # Merge dave's backup into a changed dave: backup links win, others stay.
        dave = data / "users" / "dave"
        (dave / "links.toml").write_text(
            '[links.dave-old]\ntype = "redirect"\nurl = "https://changed.example/"\n'
            '[links.dave-new]\ntype = "redirect"\nurl = "https://dave.example/new"\n'
        )
        (dave / "assets" / "3f2a9c_notes from dave.txt").unlink()
        found = await restore_flashes(
            client, (BACKUPS / "trunk8_backup_dave.zip").read_bytes(), "merge", "dave"
        )
        assert any(
            text.startswith("Backup restored successfully! Restored 2 links and 1 files")
            for _, text in found
        )
        links = tomllib.loads((dave / "links.toml").read_text())["links"]
        assert links["dave-old"]["url"] == "https://dave.example/old"
        assert links["dave-new"]["url"] == "https://dave.example/new"
        assert links["dave-legacy-file"]["path"] == "3f2a9c_notes from dave.txt"
        assert (dave / "assets" / "3f2a9c_notes from dave.txt").exists()
        assert await system.location("/dave-new") == "https://dave.example/new"
        status, headers, _ = await system.get("/dave-legacy-file")
        assert status == 200 and 'filename="notes from dave.txt"' in headers["Content-Disposition"]
        # Admin's backup replaces a changed admin: everything is back, byte for byte, and
        # no config.toml is made for admin (T8-005).
        admin = data / "users" / "admin"
        admin_before = tree(admin)
        links_file = admin / "links.toml"
        links_file.write_text('[links.stray]\ntype = "markdown"\npath = "stray.md"\n')
        (admin / "assets" / "stray.md").write_text("# only the stray link uses me")
        (admin / "assets" / "example.png").unlink()
        found = await restore_flashes(
            client, (BACKUPS / "trunk8_backup_admin.zip").read_bytes(), "replace", "admin"
        )
        assert (
            "success",
            "Backup restored successfully! Restored 13 links and 10 files (created: 2026-12-03)",
        ) in found, found
        assert tree(admin) == admin_before
        assert (await system.get("/stray"))[0] == 404
        assert (await system.get("/fx-md-text"))[0] == 200
    finally:
        await client.close()


async def test_our_backup_restores_in_trunk8s_way(admin_browser: Browser) -> None:
    """What Trunk8 0.7.0's restore does with our zip: every member it reads is there."""
    _, content = await download_backup(admin_browser, "bob")
    archive = zipfile.ZipFile(io.BytesIO(content))
    assert archive.testzip() is None  # Trunk8 extracts with zipfile
    tomllib.loads(archive.read("links.toml").decode())
    tomllib.loads(archive.read("config.toml").decode())
    meta = tomllib.loads(archive.read("backup_metadata.toml").decode())["backup_info"]
    assert len(meta["created_at"]) >= 19 and "+" not in meta["created_at"]  # local, naive


@pytest.mark.parametrize(
    ("entries", "symlinks", "message"),
    [
        ({"x.toml": b""}, None, "Invalid backup file. Missing links.toml."),
        (
            {"links.toml": b"[links]\n", "assets/../../users.toml": b"x"},
            None,
            "Invalid backup file: contains unsafe paths.",
        ),
        (
            {"links.toml": b"[links]\n", "/etc/cron.d/x": b"x"},
            None,
            "Invalid backup file: contains unsafe paths.",
        ),
        (
            {"links.toml": b"[links]\n", "assets\\..\\..\\x": b"x"},
            None,
            "Invalid backup file: contains unsafe paths.",
        ),
        (
            {"links.toml": b"[links]\n"},
            {"assets/evil": "/etc/passwd"},
            "Invalid backup file: contains unsafe paths.",
        ),
        ({"links.toml": b"[links\n"}, None, "Error restoring backup: links.toml cannot be read"),
    ],
)
async def test_hostile_zips_change_nothing(
    admin_browser: Browser,
    data_dir: Path,
    entries: dict[str, bytes],
    symlinks: dict[str, str] | None,
    message: str,
) -> None:
    before = tree(data_dir)
    found = await restore_flashes(admin_browser, make_zip(entries, symlinks), "replace", "bob")
    assert any(kind == "error" and text.startswith(message) for kind, text in found), found
    assert tree(data_dir) == before


async def test_not_a_zip_and_no_file(admin_browser: Browser, data_dir: Path) -> None:
    before = tree(data_dir)
    found = await restore_flashes(admin_browser, b"PK\x03\x04 not really", "merge", "bob")
    assert ("error", "Invalid backup file. Please upload a valid zip file.") in found
    status, headers, _ = await admin_browser.post_multipart(
        "/backup/restore", {"restore_mode": "merge"}, {"backup_file": ("", b"")}
    )
    assert status == 302
    _, _, body = await admin_browser.get(headers["Location"])
    assert ("error", "No backup file selected.") in flashes(body)
    assert tree(data_dir) == before
    assert not list((data_dir / ".trunk8" / "restore").iterdir())  # temp uploads gone


async def test_zip_bombs_are_refused_by_size_and_count(
    admin_env: None, start_system: StartSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRUNK8_RESTORE_MAX_UNPACKED_MB", "5")
    monkeypatch.setenv("TRUNK8_RESTORE_MAX_ENTRIES", "20")
    system = await start_system()
    client = Browser(system)
    try:
        assert await client.login() == 302
        before = tree(data_dir)
        bomb = make_zip({"links.toml": b"[links]\n", "assets/zeros": b"\0" * (6 * 1024 * 1024)})
        assert len(bomb) < 64 * 1024  # small on the wire, large unpacked
        found = await restore_flashes(client, bomb, "merge", "bob")
        assert ("error", "Invalid backup file: it unpacks to more than 5 MB.") in found
        many = make_zip({"links.toml": b"[links]\n", **{f"assets/f{i}": b"x" for i in range(25)}})
        found = await restore_flashes(client, many, "merge", "bob")
        assert ("error", "Invalid backup file: it has 26 entries (at most 20).") in found
        # A member whose header lies about its size is caught while unpacking.
        liar = bytearray(
            make_zip({"links.toml": b"[links]\n", "assets/big": b"\0" * (6 * 1024 * 1024)})
        )
        central = liar.rindex(b"PK\x01\x02")
        liar[central + 24 : central + 28] = (100).to_bytes(4, "little")  # claims 100 bytes
        found = await restore_flashes(client, bytes(liar), "merge", "bob")
        assert any(kind == "error" for kind, _ in found), found
        assert tree(data_dir) == before
    finally:
        await client.close()


async def test_foreign_codes_and_escaping_paths_are_skipped(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    links = (
        b'[links.carol1]\ntype = "redirect"\nurl = "https://evil.example/"\n'
        b'[links.leak]\ntype = "markdown"\npath = "../../users.toml"\n'
        b'[links.fresh]\ntype = "redirect"\nurl = "https://example.com/fresh"\n'
    )
    found = await restore_flashes(
        admin_browser, make_zip({"links.toml": links, "users.toml": b"[users]"}), "merge", "bob"
    )
    assert any(t.startswith("Backup restored successfully! Restored 1 links") for _, t in found), (
        found
    )
    warnings = [text for kind, text in found if kind == "warning"]
    assert any("'carol1': the code belongs to carol" in w and "'leak'" in w for w in warnings), (
        warnings
    )
    assert any("users.toml" in w for w in warnings)
    bob = tomllib.loads((data_dir / "users" / "bob" / "links.toml").read_text())["links"]
    assert "fresh" in bob and "carol1" not in bob and "leak" not in bob
    assert await admin_system.location("/carol1") == "https://example.org/carol"
    assert await admin_system.location("/fresh") == "https://example.com/fresh"
    assert "[users]" not in (data_dir / "users" / "users.toml").read_text()


async def test_replace_removes_assets_only_removed_links_used(
    admin_browser: Browser, data_dir: Path
) -> None:
    bob = data_dir / "users" / "bob"
    (bob / "assets").mkdir(exist_ok=True)
    report = bob / "assets" / "3f0c2a9e-7b1d-4c52-9e61-0d8a4b7c2e10.pdf"
    report.write_bytes(b"%PDF report")
    stray = bob / "assets" / "not-linked.txt"
    stray.write_bytes(b"kept: no link of the old file used it")
    backup = make_zip(
        {
            "links.toml": b'[links.only]\ntype = "file"\npath = "new.txt"\n',
            "assets/new.txt": b"new",
        }
    )
    found = await restore_flashes(admin_browser, backup, "replace", "bob")
    assert ("info", "Removed 1 files no restored link uses.") in found
    assert not report.exists() and stray.exists()
    assert (bob / "assets" / "new.txt").read_bytes() == b"new"
    assert (bob / "links.toml").read_bytes() == b'[links.only]\ntype = "file"\npath = "new.txt"\n'


async def test_a_failure_half_way_changes_nothing(admin_browser: Browser, data_dir: Path) -> None:
    bob = data_dir / "users" / "bob"
    (bob / "assets").mkdir(exist_ok=True)
    (bob / "assets" / "a.txt").write_bytes(b"old a")
    (bob / "assets" / "blocker").mkdir()  # a folder where the backup has a file
    before = tree(data_dir)
    backup = make_zip(
        {
            "links.toml": b'[links.x]\ntype = "redirect"\nurl = "https://example.com/x"\n',
            "assets/a.txt": b"new a",
            "assets/blocker": b"a file",
        }
    )
    found = await restore_flashes(admin_browser, backup, "replace", "bob")
    assert any(kind == "error" for kind, _ in found), found
    assert tree(data_dir) == before
    assert [p.name for p in bob.iterdir() if p.name.startswith(".restore")] == []


async def test_restore_cap_is_its_own_setting(
    admin_env: None, start_system: StartSystem, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / "config").mkdir(exist_ok=True)
    (data_dir / "config" / "config.toml").write_text("[app]\nmax_file_size_mb = 1\n")
    monkeypatch.setenv("TRUNK8_RESTORE_MAX_MB", "3")
    system = await start_system()
    client = Browser(system)
    try:
        assert await client.login() == 302
        payload = bytes(range(256)) * (8 * 1024)  # 2 MiB, incompressible enough to stay big
        big = io.BytesIO()
        with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("links.toml", b"[links]\n")
            archive.writestr("assets/big.bin", payload)
        found = await restore_flashes(client, big.getvalue(), "merge", "bob")
        assert any(kind == "success" for kind, _ in found), found  # over the 1 MB upload cap
        assert (data_dir / "users" / "bob" / "assets" / "big.bin").read_bytes() == payload
        huge = make_zip({"links.toml": b"[links]\n"}) + b"\0" * (4 * 1024 * 1024)
        try:
            status, _, _ = await upload_backup(client, huge, "merge", "bob")
            assert status in (302, 413)
        except aiohttp.ClientError:
            pass  # the server may close the connection on the refused rest of the body
    finally:
        await client.close()


def _open_fds_to(path: Path) -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if Path(fd.readlink()) == path:
                count += 1
        except OSError:
            continue
    return count


async def test_backup_streams_without_holding_the_archive(
    admin_browser: Browser, data_dir: Path
) -> None:
    import tracemalloc

    big = data_dir / "users" / "bob" / "assets" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as out:  # 32 MiB that do not compress
        for _ in range(32):
            out.write(os.urandom(1024 * 1024))
    await admin_browser.get("/backup/create")
    tracemalloc.start()
    try:
        received = 0
        async with admin_browser.http.post(
            admin_browser.base + "/backup/create",
            data={"csrf_token": admin_browser.csrf, "target_user": "bob"},
        ) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(64 * 1024):
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > 32 * 1024 * 1024  # all of it came
    assert peak < 8 * 1024 * 1024, peak  # chunks in flight, never the archive


async def test_a_client_leaving_mid_backup_stops_it(admin_browser: Browser, data_dir: Path) -> None:
    big = data_dir / "users" / "bob" / "assets" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as out:
        for _ in range(64):
            out.write(os.urandom(1024 * 1024))
    await admin_browser.get("/backup/create")
    async with admin_browser.http.post(
        admin_browser.base + "/backup/create",
        data={"csrf_token": admin_browser.csrf, "target_user": "bob"},
    ) as response:
        await response.content.read(1024)
        response.close()  # gone mid-way

    async def released() -> bool:
        return _open_fds_to(big) == 0

    await wait_until(released, timeout=10)
    assert (await admin_browser.get("/backup/create"))[0] == 200


async def test_restore_never_writes_through_links_in_assets(
    admin_browser: Browser, data_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    assets = data_dir / "users" / "bob" / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "sub").symlink_to(outside)
    before = tree(data_dir)
    backup = make_zip({"links.toml": b"[links]\n", "assets/sub/planted.txt": b"x"})
    found = await restore_flashes(admin_browser, backup, "merge", "bob")
    assert any(kind == "error" and "outside assets/" in text for kind, text in found), found
    assert list(outside.iterdir()) == []
    assert tree(data_dir) == before
    # A backup never follows them either.
    (outside / "secret.txt").write_text("not bob's")
    _, content = await download_backup(admin_browser, "bob")
    assert not any("secret" in name for name in zipfile.ZipFile(io.BytesIO(content)).namelist())


async def test_merge_into_a_file_of_inline_tables(
    admin_browser: Browser, admin_system: RunningSystem, data_dir: Path
) -> None:
    backup = make_zip(
        {
            "links.toml": b'[links.ex_redirect]\ntype = "redirect"\nurl = "https://example.com/new"\n'
            b'[links.added]\ntype = "redirect"\nurl = "https://example.com/added"\n'
            b"expiration_date = 2031-06-30T18:00:00\n"
        }
    )
    found = await restore_flashes(admin_browser, backup, "merge", "admin")
    assert any(t.startswith("Backup restored successfully! Restored 2 links") for _, t in found)
    text = (data_dir / "users" / "admin" / "links.toml").read_text()
    links = tomllib.loads(text)["links"]
    assert links["ex_redirect"]["url"] == "https://example.com/new"  # the backup wins
    assert links["ex_text"] == {"type": "file", "path": "example.txt"}  # the rest stays
    assert str(links["added"]["expiration_date"]) == "2031-06-30 18:00:00"
    assert await admin_system.location("/ex_redirect") == "https://example.com/new"
    assert await admin_system.location("/added") == "https://example.com/added"
