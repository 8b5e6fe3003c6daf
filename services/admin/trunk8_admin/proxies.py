"""The client behind a trusted reverse proxy: `X-Forwarded-For` read the safe way.

Behind nginx every connection comes from nginx, so the sign-in throttle and the logs would
see one client. When the peer is one of `TRUNK8_TRUSTED_PROXIES` (addresses or networks),
the client is the right-most `X-Forwarded-For` entry that is not itself a trusted proxy:
entries to its left were written by the client and prove nothing, so a forged left-most
address changes nothing. A peer that is not trusted is the client, whatever it sends. A
header that does not parse where it matters gives the peer: never an error.

Not aiohttp-remotes: its middlewares run for every route (the redirect hot path too) and
its strict mode wants one trusted set per hop; this walk needs one set and runs only for
admin pages (`pages.admin_page`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from trunk8_shared.settings import SettingsError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A header longer than this is not from a proxy chain we could trust: the peer it is.
MAX_FORWARDED_CHARS = 4096
FORWARDED_SCHEMES = frozenset({"http", "https"})


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.1, 192.168.0.0/16, ::1` as networks; a bad entry is a settings error."""
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as err:
            raise SettingsError(
                f"TRUNK8_TRUSTED_PROXIES: {entry!r} is not an address or network"
            ) from err
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """One address as proxies write it (`[v6]` allowed); None when it is not one."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


class TrustedProxies:
    """Which peers may name the client; finds the client address of a request."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def trusts(self, address: str | None) -> bool:
        """True when `address` is one of the trusted proxies."""
        parsed = parse_address(address) if address is not None and self.networks else None
        return parsed is not None and any(parsed in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client address: the peer, or what trusted proxies say in X-Forwarded-For."""
        if not self.trusts(peer):
            return peer
        return self._forwarded_client(forwarded_for) or peer

    def _forwarded_client(self, forwarded_for: Iterable[str]) -> str | None:
        """The right-most untrusted entry (None: no header, or garbled where it matters)."""
        header = ",".join(forwarded_for)
        if not header or len(header) > MAX_FORWARDED_CHARS:
            return None
        client = None
        for entry in reversed(header.split(",")):
            client = parse_address(entry)
            if client is None:
                return None  # nothing at or left of a garbled entry can be believed
            if not any(client in network for network in self.networks):
                break
        # Every entry trusted: the left-most one is as far as the chain goes.
        return str(client)

    def resolve(self, request: web.Request) -> web.Request:
        """`request` as the client sent it: its address and scheme seen past trusted proxies."""
        peer = request.remote
        if peer is None or not self.trusts(peer):
            return request
        client = self._forwarded_client(request.headers.getall("X-Forwarded-For", ())) or peer
        scheme = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if scheme not in FORWARDED_SCHEMES:
            scheme = request.scheme
        return request.clone(remote=client, scheme=scheme)
