"""The records snapshot laid out per owner, and the files and admin mirrors joining from it.

Unit: what the encoder lays out (codes in file order, the bucket's bytes joined, one digest
and one decode per owner) for several owners and odd codes. With a real nats-server: the
files and admin mirrors join from it with changes made before, during and after it (none
lost, deletes respected), and an older-format or corrupt records object is refused and
the bucket read instead.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import msgspec
import nats
import pytest
from conftest import RunningSystem, StartSystem, running_mirror, wait_until, write
from test_snapshot import reload, snapshot_at

from trunk8.embedded_nats import EmbeddedNats
from trunk8_admin import ADMIN
from trunk8_config_watcher.app import CONFIG_WATCHER
from trunk8_config_watcher.catalog import LinkCatalog
from trunk8_config_watcher.parsememo import records_digest
from trunk8_config_watcher.snapshots import encode_snapshots
from trunk8_files.app import FILES
from trunk8_files.links import FileLinks
from trunk8_shared.codes import kv_key
from trunk8_shared.kvmirror import RecordsStage, read_bucket
from trunk8_shared.records import LINKS_BUCKET, LinkRecord, UserRecord, json_encoder
from trunk8_shared.snapshot import (
    RECORDS_OBJECT,
    OwnerRecords,
    RecordsSnapshot,
    RecordsView,
    SnapshotError,
    decode_records,
    decode_table,
    encode_snapshot,
    put_snapshot,
    records_entries,
)

ODD_CODES = ["plain", "ünïcode", "日本", "dot.ted", "sp ace", "=x", "-_-"]


def _redirect(code: str, owner: str, url: str, expires_at: float | None = None) -> LinkRecord:
    return LinkRecord(code=code, owner=owner, type="redirect", url=url, expires_at=expires_at)


def _file(code: str, owner: str) -> LinkRecord:
    return LinkRecord(code=code, owner=owner, type="file", path=f"{code}.bin")


def test_the_records_are_laid_out_per_owner_in_file_order() -> None:
    catalog = LinkCatalog()
    catalog.set_users(
        {
            name: UserRecord(username=name, display_name=name, position=position)
            for position, name in enumerate(["zoe", "adam", "empty"])
        }
    )
    zoe = {
        code: _redirect(code, "zoe", f"https://zoe.example/{i}") for i, code in enumerate(ODD_CODES)
    }
    zoe["zfile"] = _file("zfile", "zoe")
    zoe["soon"] = _redirect("soon", "zoe", "https://zoe.example/soon", expires_at=4e9)
    adam = {
        "b": _redirect("b", "adam", "https://adam.example/b"),
        "plain": _redirect("plain", "adam", "https://adam.example/shadowed"),
        "a": _file("a", "adam"),
        "unknown": _redirect("unknown", "adam", "https://adam.example/u"),
    }
    catalog.set_links("zoe", zoe)
    catalog.set_links("adam", adam)
    catalog.set_links("empty", {})
    catalog.resolve()
    assert catalog.served["plain"].owner == "zoe"  # first in users.toml: adam's is shadowed
    known = {kv_key(c): json_encoder.encode(r) for c, r in catalog.served.items() if c != "unknown"}

    table, payload = encode_snapshots(catalog.served, catalog.links_by_user, known, 41, "created")
    records = decode_records(payload)
    assert (records.revision, records.bucket_created) == (41, "created")
    assert list(records.owners) == ["zoe", "adam", "empty"]
    # File order; the shadowed code and the one the bucket does not hold are left out.
    assert records.owners["zoe"].codes == list(zoe)
    assert records.owners["adam"].codes == ["b", "a"]
    assert records.owners["empty"].codes == [] and records.owners["empty"].records == b""
    for owner, links in records.owners.items():
        expected = [known[kv_key(code)] for code in links.codes]
        assert links.records == b",".join(expected)  # the bucket's bytes, exactly
        decoded = msgspec.json.decode(b"[" + links.records + b"]", type=list[LinkRecord])
        assert decoded == [catalog.links_by_user[owner][code] for code in links.codes]
    # Every link of zoe's file is served from it: one digest equals the parse memo's.
    zoe_records = records.owners["zoe"].records
    assert hashlib.sha256(zoe_records).hexdigest() == records_digest(
        map(json_encoder.encode, zoe.values())
    )
    assert records.others == {"zfile": known["zfile"], "a": known["a"]}
    assert records.expiring == {"soon": 4e9}
    assert len(records) == len(known)
    assert records_entries(records) == known
    assert set(decode_table(table).codes) == {
        c for c, r in catalog.served.items() if r.type == "redirect"
    }

    stage = RecordsStage(records)  # later changes beside the snapshot, which stays as it is
    stage.apply(kv_key("日本"), None)
    stage.apply(kv_key("new"), b'{"code":"new"}')
    stage.apply(kv_key("new"), b'{"code":"new","v":2}')
    entries = stage.entries()
    assert kv_key("日本") not in entries and entries[kv_key("new")] == b'{"code":"new","v":2}'
    assert records_entries(records) == known


@pytest.mark.parametrize(
    "blob",
    [pytest.param(b"{not json}", id="not-json"), pytest.param(b"[1]", id="not-objects")],
)
def test_records_that_do_not_split_are_refused(blob: bytes) -> None:
    snapshot = RecordsSnapshot(
        revision=1,
        bucket_created="c",
        owners={"x": OwnerRecords(["a", "b"], blob)},
        others={},
        expiring={},
    )
    with pytest.raises(SnapshotError):
        records_entries(decode_records(encode_snapshot(snapshot)))


def _links_toml(redirects: dict[str, str], files: list[str]) -> str:
    text = "".join(f'[links.{c}]\ntype = "redirect"\nurl = "{u}"\n' for c, u in redirects.items())
    return text + "".join(f'[links.{c}]\ntype = "file"\npath = "{c}.txt"\n' for c in files)


class Joined:
    """A files service and an admin joining together (one loop: they share the read)."""

    def __init__(self, files: RunningSystem, admin: RunningSystem) -> None:
        self.files = files.app[FILES]
        self.index = admin.app[ADMIN].index

    @classmethod
    async def start(cls, start_system: StartSystem, wait_ready: bool = True) -> Joined:
        files = await start_system("files", wait_ready=wait_ready)
        return cls(files, await start_system("admin", wait_ready=wait_ready))

    async def hold(self, main: RunningSystem) -> bool:
        """Both mirrors hold exactly what the watcher serves."""
        served = main.app[CONFIG_WATCHER].catalog.served
        files = {c: r for c, r in served.items() if r.type != "redirect"}
        index = self.index
        return (
            self.files.links.records == files
            and len(index) == len(served)
            and all(index.get(code) == record for code, record in served.items())
        )


async def test_files_and_admin_join_from_the_records_with_changes_around_them(
    start_system: StartSystem, data_dir: Path, bus_client: nats.NATS
) -> None:
    carol = data_dir / "users" / "carol" / "links.toml"
    redirects = {f"r{i}": f"https://before.example/{i}" for i in range(20)}
    files = ["f1", "f2", "f3", "f4", "f5"]
    write(carol, _links_toml(redirects, files))
    main = await start_system()
    at = await snapshot_at(main, bus_client)

    # After the snapshot: a file link gone, one turned into a redirect, a redirect into a
    # file link, one redirect deleted (below the republish bar).
    redirects["f2"] = "https://after.example/was-a-file"
    del redirects["r1"]
    redirects.pop("r2")
    files = ["f3", "f4", "f5", "r2", "new"]
    write(carol, _links_toml(redirects, files))
    await reload(bus_client, "users/carol/links.toml")

    # During: a change sent while the mirrors join, not awaited before they start.
    redirects["r3"] = "https://during.example/3"
    files.remove("f5")
    write(carol, _links_toml(redirects, files))
    pending = asyncio.ensure_future(reload(bus_client, "users/carol/links.toml"))
    joined = await Joined.start(start_system, wait_ready=False)
    await pending
    await wait_until(lambda: joined.hold(main))
    mirror = joined.files.mirror
    assert (mirror.snapshot_loads, mirror.snapshot_fallbacks) == (1, 0)
    assert main.app[CONFIG_WATCHER].publisher.links.revision > at
    index, links = joined.index, joined.files.links
    for gone in ("f1", "r1", "f5"):
        assert gone not in index and links.live(gone) is None
    turned = index.get("f2")
    assert turned is not None and turned.type == "redirect"
    assert links.link_type("r2") == "file"

    # And after joining: changes arrive one by one.
    files.append("late")
    del redirects["r4"]
    write(carol, _links_toml(redirects, files))
    await reload(bus_client, "users/carol/links.toml")
    await wait_until(lambda: joined.hold(main))
    assert "r4" not in index and links.link_type("late") == "file"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("older", id="older-format"),
        pytest.param(b"\x93garbage", id="corrupt"),
    ],
)
async def test_an_unusable_records_snapshot_falls_back_to_the_bucket(
    start_system: StartSystem, bus_client: nats.NATS, payload: bytes | str
) -> None:
    main = await start_system("config-watcher")
    at = await snapshot_at(main, bus_client)
    js = bus_client.jetstream()
    writer = main.app[CONFIG_WATCHER].publisher.links
    bucket = await read_bucket(js, LINKS_BUCKET, timeout=10)
    if payload == "older":  # format 1: one map of every key to its value
        payload = msgspec.msgpack.encode(
            {"v": 1, "revision": at, "bucket_created": str(writer.created), "entries": bucket}
        )
    assert isinstance(payload, bytes)
    await put_snapshot(js, RECORDS_OBJECT, payload, at, str(writer.created))
    assert await read_bucket(js, LINKS_BUCKET, timeout=10, from_snapshot=True) == bucket
    joined = await Joined.start(start_system)
    mirror = joined.files.mirror
    assert (mirror.snapshot_loads, mirror.snapshot_fallbacks) == (0, 1)
    assert await joined.hold(main)


class FailingOnce(FileLinks):
    """A records sink whose first snapshot load fails (a damaged snapshot, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_loads = 0

    def replace_records(self, records: RecordsView) -> None:
        self.snapshot_loads += 1
        if self.snapshot_loads == 1:
            raise ValueError("damaged")
        super().replace_records(records)


@pytest.mark.allow_logged_errors("applying an update failed")
async def test_after_a_failed_load_a_mirror_reads_the_bucket(
    start_system: StartSystem, bus_client: nats.NATS, nats_server: EmbeddedNats
) -> None:
    """The snapshot may be what failed: the next load must not take it again."""
    main = await start_system("config-watcher")
    await snapshot_at(main, bus_client)
    sink = FailingOnce()
    async with running_mirror(nats_server.url, sink) as mirror:
        served = main.app[CONFIG_WATCHER].catalog.served
        assert sink.records == {c: r for c, r in served.items() if r.type != "redirect"}
        assert (sink.snapshot_loads, mirror.snapshot_loads, mirror.resyncs) == (1, 1, 1)
