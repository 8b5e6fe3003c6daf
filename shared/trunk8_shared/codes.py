"""Short codes: the validation rule, the reserved words, and the mapping to NATS KV keys.

The reserved words are kept here and only here: Trunk8's own list plus the first path
segments that belong to services other than the redirector (DESIGN.md, public routes).
"""

from __future__ import annotations

import base64
import re

MAX_CODE_LENGTH = 50

# First path segments answered by a service other than the redirector. A request for
# `/<segment>` with one of these is never a short-code lookup.
ROUTED_SEGMENTS = frozenset(
    {
        "add", "links", "edit_link", "delete_link", "delete", "settings", "users", "profile",
        "auth", "backup", "api", "static", "f", "-",
    }
)  # fmt: skip

# Trunk8 0.7.0's reserved words (checked case-insensitively), plus our routed segments.
RESERVED_WORDS = ROUTED_SEGMENTS | frozenset(
    {
        "settings", "users", "profile", "add", "links", "edit_link", "delete_link", "delete",
        "auth", "login", "logout", "register", "switch-user", "switch-back", "admin", "api",
        "static", "assets", "edit", "new", "create", "update", "remove", "list", "index",
        "home", "dashboard", "config", "configuration", "system", "health", "status",
        "favicon.ico", "robots.txt", "sitemap.xml",
    }
)  # fmt: skip


def short_code_problem(code: str) -> str | None:
    """Why `code` is not an acceptable short code (Trunk8's exact messages), or None."""
    if not code:
        return "Short code cannot be empty"
    if len(code) > MAX_CODE_LENGTH:
        return f"Short code must be {MAX_CODE_LENGTH} characters or less"
    if not all(ch.isalnum() or ch in "-_" for ch in code):
        return "Short code can only contain letters, numbers, hyphens, and underscores"
    if code.lower() in RESERVED_WORDS:
        return f"'{code}' is a reserved word and cannot be used"
    return None


# NATS KV keys allow `[-/_=.a-zA-Z0-9]`; codes may hold any Unicode letter or digit.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENCODED_PREFIX = "="


def kv_key(code: str) -> str:
    """The KV key of a code or username: itself when ASCII-safe, else `=` + base64url."""
    if _PLAIN_KEY.fullmatch(code):
        return code
    encoded = base64.urlsafe_b64encode(code.encode("utf-8")).rstrip(b"=").decode("ascii")
    return _ENCODED_PREFIX + encoded


def from_kv_key(key: str) -> str:
    """Invert `kv_key`."""
    if not key.startswith(_ENCODED_PREFIX):
        return key
    body = key[len(_ENCODED_PREFIX) :]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
