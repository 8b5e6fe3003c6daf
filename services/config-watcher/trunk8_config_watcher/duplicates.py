"""Reporting codes defined by several users: each clash is logged and published once."""

from __future__ import annotations

import logging

from trunk8_shared.records import DuplicateCode, Event

from .catalog import LinkCatalog

log = logging.getLogger("trunk8.config_watcher")


class DuplicateReporter:
    """Remembers which duplicate codes were reported, so each is reported once."""

    def __init__(self) -> None:
        self._reported: set[str] = set()

    def new_events(self, catalog: LinkCatalog) -> list[Event]:
        """Events for the duplicates of `catalog` not reported yet."""
        current = catalog.duplicates
        fresh = [dup for code, dup in current.items() if code not in self._reported]
        self._reported = set(current)
        for dup in fresh:
            log.warning(
                "short code %r is defined by %s; serving %s's (first in users.toml)",
                dup.code, ", ".join((dup.winner, *dup.shadowed)), dup.winner,
            )  # fmt: skip
        return [
            DuplicateCode(code=d.code, winner=d.winner, shadowed=list(d.shadowed)) for d in fresh
        ]
