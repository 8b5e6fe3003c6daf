"""The files service on its own, and a redirector without it (the split deployment).

Records are put straight into the links bucket here, as a config-watcher elsewhere would,
so that records the watcher itself refuses (paths that leave the assets folder) can
reach the files service too: it must refuse them on its own. The buckets are created
first, as that watcher would (the services only wait for them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import RunningSystem, StartSystem, wait_until, write
from nats.aio.msg import Msg

from trunk8_shared.buckets import create_buckets, ensure_bucket
from trunk8_shared.codes import kv_key
from trunk8_shared.records import LINKS_BUCKET, LinkRecord, json_encoder


async def put_link(client: nats.NATS, **fields: object) -> int:
    """Publish one link record as the config-watcher would; returns its revision."""
    record = msgspec.convert(fields, LinkRecord)
    kv = await ensure_bucket(client.jetstream(), LINKS_BUCKET)
    return await kv.put(kv_key(record.code), json_encoder.encode(record))


async def applied(system: RunningSystem, service: str, revision: int) -> bool:
    """Whether `service` (files or redirector) has applied the bucket up to `revision`."""
    if not await system.ready():
        return False
    values = await system.metrics()
    return values.get(f"trunk8_{service}_links_revision", 0) >= revision


@pytest.fixture(autouse=True)
async def buckets(bus_client: nats.NATS) -> None:
    """Trunk8's buckets, made as the config-watcher elsewhere would."""
    await create_buckets(bus_client.jetstream(), replicas=1)


@pytest.fixture
def bob_assets(data_dir: Path) -> Path:
    """Bob's assets folder with one file, plus a secret outside every assets folder."""
    folder = data_dir / "users" / "bob" / "assets"
    folder.mkdir(parents=True)
    (folder / "ok.txt").write_bytes(b"fine\n")
    write(data_dir / "secret.txt", "password hashes\n")
    return folder


async def test_files_alone_refuses_paths_that_leave_the_assets_folder(
    start_system: StartSystem, bus_client: nats.NATS, bob_assets: Path, data_dir: Path
) -> None:
    system = await start_system("files")
    (bob_assets / "link-out.txt").symlink_to(data_dir / "secret.txt")
    (bob_assets / "dir-link").symlink_to(data_dir / "users")
    (bob_assets / "loop").symlink_to(bob_assets / "loop")
    (bob_assets / "folder").mkdir()
    os.mkfifo(bob_assets / "fifo")
    events: list[dict[str, str]] = []

    async def on_event(msg: Msg) -> None:
        events.append(json.loads(msg.data))

    sub = await bus_client.subscribe("trunk8.events.config.error", cb=on_event)
    refused = {
        "up": "../../secret.txt",
        "absolute": str(data_dir / "secret.txt"),
        "users": "../../users.toml",
        "symlink": "link-out.txt",
        "through_link": "dir-link/users.toml",
    }
    missing = {"folder": "folder", "fifo": "fifo", "loop": "loop", "nofile": "nope.txt"}
    revision = 0
    for code, path in {**refused, **missing}.items():
        revision = await put_link(bus_client, code=code, owner="bob", type="file", path=path)
    revision = await put_link(
        bus_client, code="evil_owner", owner="../..", type="file", path="secret.txt"
    )
    revision = await put_link(bus_client, code="ok", owner="bob", type="file", path="ok.txt")
    await wait_until(lambda: applied(system, "files", revision))

    status, _, body = await system.get("/ok")
    assert (status, body) == (200, "fine\n")
    (bob_assets / "ok.txt").unlink()  # swapped for a link out right after being served
    (bob_assets / "ok.txt").symlink_to(data_dir / "secret.txt")
    status, _, body = await system.get("/ok")
    assert status == 404 and "password" not in body
    (bob_assets / "ok.txt").unlink()
    (bob_assets / "ok.txt").write_bytes(b"fine\n")
    for code in [*refused, *missing, "evil_owner"]:
        for path in (f"/{code}", f"/f/{code}", f"/f/{code}/secret.txt"):
            status, _, body = await system.get(path)
            assert status == 404, path
            assert "Link Not Found" in body and "password" not in body, path
    values = await system.metrics()
    assert values["trunk8_files_assets_refused_total"] == 3 * (len(refused) + 1) + 1

    async def reported() -> bool:
        return {e["reason"].split("'")[1] for e in events} >= {*refused, "evil_owner", "ok"}

    await wait_until(reported)
    assert len(events) == len(refused) + 2  # once per link, not once per request
    assert all(e["file"] == "users/bob/links.toml" for e in events if "evil" not in e["reason"])
    await sub.unsubscribe()


async def test_files_alone_serves_every_type_at_both_paths(
    start_system: StartSystem, bus_client: nats.NATS, bob_assets: Path
) -> None:
    (bob_assets / "p.md").write_text("# Title\n")
    (bob_assets / "p.html").write_text("<p>hi</p>")
    system = await start_system("files")
    await put_link(bus_client, code="md", owner="bob", type="markdown", path="p.md")
    await put_link(bus_client, code="pg", owner="bob", type="html", path="p.html")
    revision = await put_link(bus_client, code="dl", owner="bob", type="file", path="ok.txt")
    await put_link(bus_client, code="red", owner="bob", type="redirect", url="https://e.com/")
    await wait_until(lambda: applied(system, "files", revision))
    for code, marker in (("md", '<h1 id="title">'), ("pg", "<p>hi</p>"), ("dl", "fine")):
        for path in (f"/{code}", f"/f/{code}", f"/f/{code}/name.ext"):
            status, _, body = await system.get(path)
            assert status == 200 and marker in body, path
    status, _, _ = await system.get("/red")  # redirects are not the files service's
    assert status == 404


async def test_redirector_alone_hands_file_links_to_nginx(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    system = await start_system("redirector", files_mode="accel")
    await put_link(bus_client, code="dl", owner="bob", type="file", path="ok.txt")
    await put_link(bus_client, code="ünï", owner="bob", type="markdown", path="p.md")
    revision = await put_link(
        bus_client, code="red", owner="bob", type="redirect", url="https://e.com/"
    )
    await wait_until(lambda: applied(system, "redirector", revision))
    status, headers, body = await system.get("/dl?x=1")
    assert status == 200 and body == ""
    assert headers["X-Accel-Redirect"] == "/_trunk8_files/dl?x=1"
    status, headers, _ = await system.get("/%C3%BCn%C3%AF")
    assert headers["X-Accel-Redirect"] == "/_trunk8_files/%C3%BCn%C3%AF"
    assert "Content-Type" not in headers  # nginx would keep it over the file's own
    status, headers, _ = await system.get("/red")
    assert status == 302 and headers["Location"] == "https://e.com/"
    status, headers, _ = await system.get("/nosuch")
    assert status == 404 and "X-Accel-Redirect" not in headers


async def test_redirector_alone_redirects_file_links_to_the_files_service(
    start_system: StartSystem, bus_client: nats.NATS
) -> None:
    system = await start_system(
        "redirector", files_mode="redirect", files_public_url="https://files.example.org/"
    )
    revision = await put_link(bus_client, code="dl", owner="bob", type="html", path="x.html")
    await wait_until(lambda: applied(system, "redirector", revision))
    status, headers, _ = await system.get("/dl?v=2")
    assert status == 307
    assert headers["Location"] == "https://files.example.org/f/dl?v=2"


async def test_redirector_alone_in_process_mode_answers_404(
    start_system: StartSystem, bus_client: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    system = await start_system("redirector")
    revision = await put_link(bus_client, code="dl", owner="bob", type="file", path="ok.txt")
    await wait_until(lambda: applied(system, "redirector", revision))
    status, _, body = await system.get("/dl")
    assert status == 404 and "Link Not Found" in body
    assert "no files service in this process" in caplog.text


def test_redirect_mode_needs_a_public_url() -> None:
    from trunk8_shared.settings import SettingsError, settings_from

    with pytest.raises(SettingsError, match="files_public_url"):
        settings_from({"TRUNK8_FILES_MODE": "redirect"})
    with pytest.raises(SettingsError):
        settings_from({"TRUNK8_FILES_MODE": "sideways"})
    assert settings_from({"TRUNK8_FILES_MODE": "accel"}).files_accel_prefix == "/_trunk8_files/"
