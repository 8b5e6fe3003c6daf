"""Short codes and usernames: their validation rules, the reserved words, and NATS KV keys.

The reserved words are kept here and only here: Trunk8's own list plus the first path
segments that belong to services other than the redirector (docs/architecture.md, "One
route table").
A KV key that `kv_key` would never produce (written by another tool, or damaged) is
foreign: `code_of_key` answers None for it instead of raising.
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


def username_problem(name: str) -> str | None:
    """Why `name` cannot be an account's folder name (Trunk8's character rule), or None.

    Letters, digits, `-` and `_` only, so a name can never leave users/ (`..`, `/`).
    Trunk8's 3-character minimum applies to registration only: shorter accounts written
    by hand keep working.
    """
    if not name:
        return "Username is required."
    letters = name.replace("-", "").replace("_", "")
    if not letters or not letters.isalnum():
        return "Username can only contain letters, numbers, hyphens, and underscores."
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


def code_of_key(key: str) -> str | None:
    """Invert `kv_key`; None for a foreign key (one `kv_key` never makes), never an error."""
    if not key.startswith(_ENCODED_PREFIX):
        return key if _PLAIN_KEY.fullmatch(key) else None
    body = key[len(_ENCODED_PREFIX) :]
    try:
        code = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    except ValueError:  # bad base64 (binascii.Error) or bytes that are not UTF-8
        return None
    # b64decode skips stray characters: only the one spelling kv_key makes is ours.
    return code if code and kv_key(code) == key else None


def from_kv_key(key: str) -> str:
    """Invert `kv_key`; raises ValueError for a foreign key (see `code_of_key`)."""
    code = code_of_key(key)
    if code is None:
        raise ValueError(f"{key!r} is not a key Trunk8 writes")
    return code
