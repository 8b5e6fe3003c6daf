"""Progress of long steps (a first import, publishing it): counts and a rate, every few seconds.

A first import of a million links takes most of a minute; an operator watching the log
sees files and links done and the rate instead of silence. A step that ends before the
first interval logs only its summary line.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("trunk8.config_watcher")

# Seconds between two progress lines of one step.
PROGRESS_INTERVAL = 2.0


class Progress:
    """Counts one step's work and logs it at most every `interval` seconds."""

    def __init__(self, what: str, total: int, unit: str, interval: float = PROGRESS_INTERVAL):
        self.what = what
        self.total = total
        self.unit = unit
        self.interval = interval
        self.done = 0
        self.links = 0
        self.started = time.monotonic()
        self._next = self.started + interval

    def advance(self, done: int = 1, links: int = 0) -> None:
        """Count `done` more units holding `links` links; log if the interval has passed."""
        self.done += done
        self.links += links
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._log(now, "")

    def finish(self) -> None:
        """Log the step's summary line."""
        self._log(time.monotonic(), "done: ")

    @property
    def rate(self) -> float:
        """Links per second so far."""
        return self.links / max(time.monotonic() - self.started, 1e-9)

    def _log(self, now: float, prefix: str) -> None:
        took = max(now - self.started, 1e-9)
        log.info(
            "%s: %s%d/%d %s, %d links in %.1f s (%d links/s)",
            self.what, prefix, self.done, self.total, self.unit, self.links, took,
            self.links / took,
        )  # fmt: skip
