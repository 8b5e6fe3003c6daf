"""What the config-watcher refuses right now: whole files and single entries, with reasons.

A file that cannot be read or parsed is rejected whole and its last good state stays
served; an invalid link or account is refused alone while the rest of its file is served.
Each new or changed rejection is logged once and becomes an event. The current set is
what `/-/rejected` answers, so an operator sees at once what to fix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from trunk8_shared.records import ConfigError, Event, LinkRejected, UserRejected

log = logging.getLogger("trunk8.config_watcher")

EntryEvent = Callable[[str, str, str], Event]

# New refusals of one file logged one by one, and published as events, per reload.
LOGGED_PER_FILE = 5
EVENTS_PER_FILE = 100
# Entries listed by `/-/rejected` (the gauge counts them all).
VIEW_LIMIT = 1000
# Characters of a refused entry's name kept (a hostile name may be megabytes long).
MAX_SHOWN_NAME = 200


def _link_rejected(file: str, code: str, reason: str) -> Event:
    return LinkRejected(file=file, code=code, reason=reason)


def _user_rejected(file: str, username: str, reason: str) -> Event:
    return UserRejected(file=file, username=username, reason=reason)


def _shown(entry: str) -> str:
    """An entry's name cut to a length any log line and event can carry."""
    return entry if len(entry) <= MAX_SHOWN_NAME else entry[:MAX_SHOWN_NAME] + "…"


class Rejections:
    """Rejected files (file -> reason) and refused entries (file -> entry -> reason)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.entries: dict[str, dict[str, str]] = {}

    def reject_file(self, file: str, reason: str) -> ConfigError:
        """Record a whole-file rejection; the event is returned every time, logged once."""
        if self.files.get(file) != reason:
            log.warning("rejected %s: %s (keeping its last good state)", file, reason)
        self.files[file] = reason
        return ConfigError(file=file, reason=reason)

    def accept_file(self, file: str) -> None:
        """The file reads and parses again."""
        if self.files.pop(file, None) is not None:
            log.info("%s is valid again", file)

    def forget(self, file: str) -> None:
        """The file no longer matters (its account left users.toml, or it was removed)."""
        self.accept_file(file)
        self.entries.pop(file, None)

    def refuse_links(self, file: str, refused: dict[str, str]) -> list[Event]:
        """Set the links refused in a links file; events for the new or changed ones."""
        return self._refuse(file, refused, "link", _link_rejected)

    def refuse_users(self, file: str, refused: dict[str, str]) -> list[Event]:
        """Set the accounts refused in users.toml; events for the new or changed ones."""
        return self._refuse(file, refused, "account", _user_rejected)

    def _refuse(
        self, file: str, refused: dict[str, str], noun: str, event: EntryEvent
    ) -> list[Event]:
        refused = {_shown(entry): reason for entry, reason in refused.items()}
        before = self.entries.get(file, {})
        fresh = [
            (entry, reason) for entry, reason in refused.items() if before.get(entry) != reason
        ]
        # A file of a million bad entries must not flood the log or the bus.
        for entry, reason in fresh[:LOGGED_PER_FILE]:
            log.warning("%s: refused %s %r: %s", file, noun, entry, reason)
        if len(fresh) > LOGGED_PER_FILE:
            log.warning(
                "%s: refused %d more %ss (see /-/rejected)",
                file,
                len(fresh) - LOGGED_PER_FILE,
                noun,
            )
        events = [event(file, entry, reason) for entry, reason in fresh[:EVENTS_PER_FILE]]
        if refused:
            self.entries[file] = dict(refused)
        else:
            self.entries.pop(file, None)
        return events

    def is_rejected(self, file: str) -> bool:
        """Whether the whole file is currently rejected."""
        return file in self.files

    @property
    def entry_count(self) -> int:
        """Entries refused across all files."""
        return sum(len(entries) for entries in self.entries.values())

    def summary(self, files: Iterable[str] | None = None) -> str | None:
        """The current rejection of the given files (all when None), as one line."""
        names = self.files if files is None else files
        return "; ".join(f"{f}: {self.files[f]}" for f in names if f in self.files) or None

    def refused_in(self, files: Iterable[str]) -> dict[str, str]:
        """The entries refused in the given files (at most `EVENTS_PER_FILE` of them)."""
        pairs = (pair for f in files for pair in self.entries.get(f, {}).items())
        return dict(itertools.islice(pairs, EVENTS_PER_FILE))

    def view(self) -> dict[str, Any]:
        """The JSON answered at `/-/rejected`."""
        entries = (
            {"file": f, "entry": entry, "reason": reason}
            for f, entries in sorted(self.entries.items())
            for entry, reason in entries.items()
        )
        return {
            "files": [{"file": f, "reason": r} for f, r in sorted(self.files.items())],
            "entries": list(itertools.islice(entries, VIEW_LIMIT)),
            "entries_total": self.entry_count,
        }


REJECTIONS = web.AppKey("trunk8.config_watcher.rejections", Rejections)


async def rejected_view(request: web.Request) -> web.Response:
    """`/-/rejected`: the files rejected whole and the entries refused, with reasons."""
    return web.json_response(request.app[REJECTIONS].view())
