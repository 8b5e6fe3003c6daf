"""A NATS seed list (`--nats a,b,c`): services reach whichever server is up, and move on.

Two real nats-servers (not clustered: each has its own store, and its own buckets made
as a config-watcher would), one of them down at first, then the one in use killed: the
connection follows to the other, and logs never show a token of any of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from conftest import StartSystem, wait_until
from nginxkit import free_port

from trunk8 import deploy
from trunk8.deploy import provision_buckets
from trunk8.embedded_nats import EmbeddedNats
from trunk8_shared.buckets import create_buckets
from trunk8_shared.bus import BUS, SeedCredentials, redact, seed_credentials, server_list


async def _create_buckets(server: EmbeddedNats) -> None:
    client = await nats.connect(server.url)
    try:
        await create_buckets(client.jetstream(), replicas=1)
    finally:
        await client.close()


def test_seed_lists_are_split_and_every_url_redacted() -> None:
    urls = " nats://t0k@a:4222, nats://u:pw@b:4222 ,,c:4222 "
    assert server_list(urls) == ["nats://t0k@a:4222", "nats://u:pw@b:4222", "c:4222"]
    assert redact(urls) == "nats://***@a:4222,nats://***@b:4222,c:4222"
    assert redact("nats://only@host:1") == "nats://***@host:1"


def test_one_credential_of_the_seed_list_goes_to_discovered_servers_too() -> None:
    cluster = "nats://t0k@a:4222,nats://t0k@b:4222,c:4222"
    assert seed_credentials(cluster) == SeedCredentials(token="t0k")
    assert seed_credentials("nats://u:pw@a:1,nats://u:pw@b:1") == SeedCredentials("u", "pw")
    # Servers with credentials of their own keep them in their URLs alone.
    assert seed_credentials("nats://one@a:1,nats://two@b:1") == SeedCredentials()
    assert seed_credentials("nats://a:1,b:2") == SeedCredentials()


async def test_a_seed_list_with_a_server_down_connects_and_fails_over(
    start_system: StartSystem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down_port = free_port()
    second = EmbeddedNats(tmp_path / "second-nats", port=down_port, token="second-token")
    first = EmbeddedNats(tmp_path / "first-nats", token="first-token")
    await first.start()
    try:
        await _create_buckets(first)
        seeds = f"nats://second-token@127.0.0.1:{down_port},{first.url}"
        system = await start_system("redirector", nats_url=seeds, wait_ready=False)
        bus = system.app[BUS]
        await wait_until(system.ready, timeout=15)  # through the one server that is up
        assert bus.nc.connected_url is not None and bus.nc.connected_url.port == first.port
        values = await system.metrics()
        assert (values["trunk8_nats_connected"], values["trunk8_nats_disconnects_total"]) == (1, 0)

        await second.start()
        await _create_buckets(second)
        await first.stop()  # the server in use goes away: the client moves to the other

        async def on_second() -> bool:
            url = bus.nc.connected_url
            return bus.is_connected and url is not None and url.port == down_port

        await wait_until(on_second, timeout=15)
        await wait_until(system.ready, timeout=15)  # and the redirector loads from it
        values = await system.metrics()
        assert values["trunk8_nats_connected"] == 1 and values["trunk8_nats_disconnects_total"] >= 1
        assert f"NATS nats://***@127.0.0.1:{down_port},nats://***@127.0.0.1:" in caplog.text
        assert "first-token" not in caplog.text and "second-token" not in caplog.text
    finally:
        await first.stop()
        await second.stop()


async def test_provisioning_creates_the_buckets_and_refuses_impossible_replicas(
    nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        assert await provision_buckets(js, 1, lease_ttl=5.0) == []
        streams = ("KV_trunk8_links", "KV_trunk8_users", "OBJ_trunk8_snapshots", "KV_trunk8_lease")
        for stream in streams:
            assert (await js.stream_info(stream)).config.num_replicas == 1
        assert (await js.stream_info("KV_trunk8_lease")).config.max_age == 5.0
    finally:
        await client.close()
    # One server cannot hold 3 copies: a one-line error, nothing changed.
    status = await asyncio.to_thread(
        deploy.main, ["buckets", "--nats", nats_server.url, "--replicas", "3"]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "cannot set 3 replicas" in err and nats_server.token not in err
    # Nobody there: one line, no traceback per attempt, no token.
    status = await asyncio.to_thread(
        deploy.main, ["buckets", "--nats", f"nats://hidden@127.0.0.1:{free_port()}"]
    )
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "hidden" not in err
    assert err.startswith("trunk8: cannot connect to NATS at nats://***@127.0.0.1:")
