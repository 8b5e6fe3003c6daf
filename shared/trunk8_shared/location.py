"""A redirect target as a header-safe `Location`: IDNA host, percent-encoded UTF-8 elsewhere.

Shared by the redirector (for changes it receives one by one) and the config-watcher (which
writes normalised targets into the link-table snapshot, so a joining redirector prepares
nothing per link). Most targets are plain ASCII URLs that need no change: one regular
expression recognises them before any `urlsplit` or `quote`.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

# Characters kept as they are in a Location; everything else (spaces, non-ASCII, controls)
# is percent-encoded as UTF-8, as Trunk8 does (T8-035). `%` is kept: existing escapes stay.
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~"
# What `quote(url, safe=_LOCATION_SAFE)` leaves unchanged (its always-safe set plus ours).
_ALREADY_SAFE = re.compile(r"[A-Za-z0-9_.\-~!#$%&'()*+,/:;=?@\[\]]*+")


def location_header(url: str) -> str:
    """The URL as a header-safe Location: IDNA host, percent-encoded UTF-8 elsewhere."""
    url = url.strip()
    if _ALREADY_SAFE.fullmatch(url):
        return url  # ASCII host, nothing to encode: the common case, ~10x cheaper
    return encoded_location(url)


def encoded_location(url: str) -> str:
    """`location_header` the long way (what its fast path must agree with)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        host, colon, port = hostport.partition(":")
        if not host.isascii():
            ascii_host = host.encode("idna").decode("ascii")
            url = urlunsplit(parts._replace(netloc=userinfo + at + ascii_host + colon + port))
    except (UnicodeError, ValueError):
        pass
    return quote(url, safe=_LOCATION_SAFE)
