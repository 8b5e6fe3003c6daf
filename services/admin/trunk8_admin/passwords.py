"""Trunk8's password hashes (§1.4): `pbkdf2$<iterations>$<salt>$<hash>` and legacy SHA-256.

Verification never raises on a malformed string (it just fails), compares in constant
time, and uses the iteration count stored in the hash. These functions are CPU-bound
(600,000 PBKDF2 rounds): callers run them in an executor, never on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ITERATIONS = 600_000
SALT_BYTES = 32
KEY_BYTES = 32
PREFIX = "pbkdf2$"
# Verifying against this costs what a real account costs, so unknown users take as long.
_DUMMY_HASH = f"{PREFIX}{ITERATIONS}${'00' * SALT_BYTES}${'00' * KEY_BYTES}"


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """A new hash in Trunk8's current format, with a fresh random salt (T8-009)."""
    salt = secrets.token_hex(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt), iterations)
    return f"{PREFIX}{iterations}${salt}${key.hex()}"


def is_legacy(stored: str) -> bool:
    """Whether `stored` is an unsalted SHA-256 hash to upgrade after a good login (T8-010)."""
    return not stored.startswith(PREFIX)


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`, in either of Trunk8's formats."""
    if is_legacy(stored):
        digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
        return hmac.compare_digest(digest, stored.strip().lower())
    parts = stored.split("$")
    if len(parts) != 4:
        return False
    try:
        iterations = int(parts[1])
        salt = bytes.fromhex(parts[2])
        expected = bytes.fromhex(parts[3])
    except ValueError:
        return False
    if not 0 < iterations <= 10 * ITERATIONS:  # a hand-edited huge count must not hang us
        return False
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations, len(expected))
    return hmac.compare_digest(key, expected)


def spend_like_a_check(password: str) -> None:
    """Cost what checking a real account costs, for unknown users and hashless entries."""
    verify_password(password, _DUMMY_HASH)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two texts (the admin password from the environment)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
