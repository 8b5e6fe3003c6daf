"""The admin behind a trusted reverse proxy: whose address the sign-in throttle counts.

The walk itself is checked case by case; then, over real sockets, what a hostile client
can do with `X-Forwarded-For`: forge it from an untrusted peer, prepend a fake left-most
address, or send garbage. (Through nginx itself: `test_deploy_nginx.py`.)
"""

from __future__ import annotations

import itertools
import logging

import pytest
from conftest import RunningSystem, StartSystem
from test_admin_support import Browser, admin_env, admin_system, browser

from trunk8_admin.proxies import TrustedProxies, parse_networks
from trunk8_admin.settings import admin_settings_from
from trunk8_shared.settings import SettingsError

# Fixtures used by name in test arguments.
__all__ = ["admin_env", "admin_system", "browser"]

USERNAMES = (f"nobody-{n}" for n in itertools.count())
PROXIES = TrustedProxies(parse_networks("127.0.0.1, 10.0.0.0/8, ::1"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", [], "127.0.0.1"),  # a trusted peer sending no header is the client
        ("192.0.2.1", ["198.51.100.1"], "192.0.2.1"),  # an untrusted peer names nobody
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # forged left-most entry
        ("127.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # headers in order
        ("127.0.0.1", ["198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # past a trusted hop
        ("127.0.0.1", ["10.0.0.5,10.0.0.6"], "10.0.0.5"),  # all trusted: the left-most
        ("127.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),  # left of the client
        ("127.0.0.1", ["198.51.100.1, garbage"], "127.0.0.1"),  # garbled where it matters
        ("127.0.0.1", ["198.51.100.1:8080"], "127.0.0.1"),
        ("127.0.0.1", [""], "127.0.0.1"),
        ("127.0.0.1", [" , "], "127.0.0.1"),
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        ("127.0.0.1", ["1.2.3.4, " * 1000 + "198.51.100.1"], "127.0.0.1"),  # oversized
        ("127.0.0.1", ["[2001:db8::1]"], "2001:db8::1"),
        ("::1", [" 2001:db8::2 "], "2001:db8::2"),
        ("::ffff:127.0.0.1", ["198.51.100.1"], "198.51.100.1"),  # dual-stack socket
        ("not-an-address", ["198.51.100.1"], "not-an-address"),
        (None, ["198.51.100.1"], None),
    ],
)
def test_client_is_the_right_most_untrusted_entry(
    peer: str | None, forwarded: list[str], client: str | None
) -> None:
    assert PROXIES.client(peer, forwarded) == client


def test_nobody_is_trusted_by_default() -> None:
    assert admin_settings_from({}).trusted_proxies == ""
    nobody = TrustedProxies(parse_networks(""))
    assert nobody.client("127.0.0.1", ["198.51.100.1"]) == "127.0.0.1"


def test_a_bad_trusted_proxies_setting_fails_at_start() -> None:
    assert len(parse_networks(" 10.0.0.1 ,192.168.0.0/16,, fd00::/8 ")) == 3
    with pytest.raises(SettingsError, match="'nginx' is not an address"):
        admin_settings_from({"TRUNK8_TRUSTED_PROXIES": "10.0.0.1, nginx"})


@pytest.fixture
def throttle_env(admin_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sign-in attempts per client and per username a minute: quick to exhaust."""
    monkeypatch.setenv("TRUNK8_LOGIN_ATTEMPTS", "2")
    monkeypatch.delenv("TRUNK8_TRUSTED_PROXIES", raising=False)


async def _attempts(browser: Browser, forwarded: list[str | None]) -> list[int]:
    """One failed sign-in per entry (each with its own username, so only the client
    key can throttle), sent with that X-Forwarded-For; the statuses."""
    statuses = []
    for value in forwarded:
        headers = {} if value is None else {"X-Forwarded-For": value}
        status, _, body = await browser.post(
            "/auth/login",
            {"username": next(USERNAMES), "password": "wrong"},
            headers=headers,
        )
        assert status in (200, 429), body
        statuses.append(status)
    return statuses


async def test_untrusted_peer_cannot_pick_its_address(
    throttle_env: None, admin_system: RunningSystem, browser: Browser
) -> None:
    forged = ["198.51.100.1", "198.51.100.2", "198.51.100.3, 198.51.100.4"]
    assert await _attempts(browser, forged) == [200, 200, 429]


@pytest.fixture
async def behind_proxy(
    throttle_env: None, monkeypatch: pytest.MonkeyPatch, start_system: StartSystem
) -> RunningSystem:
    """The all-in-one system trusting 127.0.0.1 (the test's own address) as its proxy."""
    monkeypatch.setenv("TRUNK8_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    return await start_system()


@pytest.fixture
async def proxied(behind_proxy: RunningSystem) -> Browser:
    client = Browser(behind_proxy)
    yield client  # type: ignore[misc]
    await client.close()


async def test_forwarded_clients_are_throttled_apart(
    proxied: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trunk8.admin")
    assert await _attempts(proxied, ["198.51.100.1"] * 3) == [200, 200, 429]
    assert await _attempts(proxied, ["198.51.100.2", "198.51.100.2, 10.0.0.7"]) == [200, 200]
    assert await _attempts(proxied, [None]) == [200]  # the proxy's own requests
    failed = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert any(m.endswith("from 198.51.100.2") for m in failed), failed


async def test_forged_left_most_entry_does_not_escape_the_throttle(proxied: Browser) -> None:
    forged = [f"203.0.113.{n}, 198.51.100.1" for n in range(3)]
    assert await _attempts(proxied, forged) == [200, 200, 429]
    # Another hop of the trusted chain in between changes nothing either.
    assert await _attempts(proxied, ["203.0.113.9, 198.51.100.1, 10.0.0.2"]) == [429]


async def test_malformed_forwarded_for_counts_the_peer(proxied: Browser) -> None:
    malformed = ["not-an-ip", "198.51.100.1, garbage", " , ", "x" * 5000, "198.51.100.1:80"]
    assert await _attempts(proxied, malformed) == [200, 200, 429, 429, 429]
    assert await _attempts(proxied, [None]) == [429]  # all of them were the peer's
    assert await _attempts(proxied, ["garbage, 198.51.100.1"]) == [200]


async def test_forwarded_proto_gives_the_scheme_of_shown_links(proxied: Browser) -> None:
    headers = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}
    assert await proxied.login() == 302
    status, _, body = await proxied.get("/links", headers=headers)
    assert status == 200
    assert f"https://{proxied.base.removeprefix('http://')}/" in body
    status, _, body = await proxied.get("/links")
    assert status == 200 and "https://" + proxied.base.removeprefix("http://") not in body
