"""Login throttling: a sliding window of attempts per key (client address, username).

Kept in memory per process and bounded: old timestamps are dropped as the window moves,
and the table forgets keys that have been quiet for a whole window, so a flood of
distinct usernames cannot grow it without limit (T8-W14).
"""

from __future__ import annotations

import time
from collections import deque

# Keys beyond this many are pruned of quiet ones before a new key is added.
PRUNE_ABOVE = 10_000


class LoginThrottle:
    """At most `limit` attempts per key within `window` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._attempts: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again; 0 when all may try now."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            attempts = self._recent(key, now)
            if attempts is not None and len(attempts) >= self.limit:
                wait = max(wait, attempts[0] + self.window - now)
        return wait

    def record(self, *keys: str) -> None:
        """Count one attempt against each key."""
        now = time.monotonic()
        if len(self._attempts) > PRUNE_ABOVE:
            self._prune(now)
        for key in keys:
            attempts = self._recent(key, now)
            if attempts is None:
                attempts = self._attempts[key] = deque(maxlen=self.limit)
            attempts.append(now)

    def forget(self, key: str) -> None:
        """Clear a key's attempts (after a successful login for that username)."""
        self._attempts.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        attempts = self._attempts.get(key)
        if attempts is None:
            return None
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        return attempts

    def _prune(self, now: float) -> None:
        quiet = [k for k, a in self._attempts.items() if not a or a[-1] <= now - self.window]
        for key in quiet:
            del self._attempts[key]
