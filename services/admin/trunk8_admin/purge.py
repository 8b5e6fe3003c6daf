"""Expired links purged on a timer, for every user, off the request path (T8-W18).

Trunk8 removed a user's expired links (and their assets) only when that user next loaded
a page. Here a background task looks for expired records in the link index every
`purge_interval` seconds and removes them from their owners' files through the same
locked, checked writes as the pages; each entry's expiry is re-read from the file first,
so a link whose expiry was just extended by hand stays. One admin instance purges at a
time: the round runs under a non-blocking lock on `<data>/.trunk8/purge.lock`, and an
instance that finds it taken skips that round. The serving side refuses expired links
the moment they expire; the purge only frees their codes and disk space. Each purged link
is announced as a `link.expired` event once the file change is published (so after its
`link.deleted`); events that find NATS away wait for a later round (at most 10,000).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tomlkit.toml_document import TOMLDocument

from trunk8_shared.bus import Bus
from trunk8_shared.datadir import DataDir
from trunk8_shared.expiry import expiry_timestamp
from trunk8_shared.records import LinkExpired, event_subject, json_encoder

from .datawrites import DataWriteError, edit_toml
from .saving import remove_asset
from .state import Admin

log = logging.getLogger("trunk8.admin")

LOCK_FILE = "purge.lock"
# `link.expired` events kept while NATS is away; beyond this the oldest are dropped.
MAX_PENDING_EVENTS = 10_000


@dataclass(frozen=True)
class ExpiredLink:
    """A link the purge removed: its code, its expiry as written and when it expired."""

    code: str
    expiration_date: str
    expires_at: float
    asset: dict[str, str] = field(default_factory=dict)


@contextmanager
def purge_turn(data: DataDir) -> Iterator[bool]:
    """True while this process holds the purge lock; False when another instance has it."""
    data.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def purge_owner(data: DataDir, owner: str, codes: set[str], now: float) -> list[ExpiredLink]:
    """Remove the given codes from the owner's file if still expired, then their assets."""

    def edit(document: TOMLDocument) -> list[ExpiredLink]:
        removed: list[ExpiredLink] = []
        links = document.get("links")
        if not isinstance(links, dict):
            return removed
        for code in codes:
            entry = links.get(code)
            if not isinstance(entry, dict):
                continue
            expiry = entry.get("expiration_date")
            if expiry is not None and not isinstance(expiry, str):
                expiry = expiry.isoformat()  # an unquoted TOML date-time (T8-W16)
            stamp = expiry_timestamp(expiry)
            if expiry is not None and stamp is not None and stamp < now:
                asset = {key: str(entry[key]) for key in ("type", "path") if key in entry}
                removed.append(ExpiredLink(code, str(expiry), stamp, asset))
                del links[code]
        return removed

    removed = edit_toml(data.links_file(owner), edit)
    for link in removed:
        remove_asset(data.assets_dir(owner), link.asset)
    return removed


class ExpiryAnnouncer:
    """Publishes `link.expired` events, keeping those NATS could not take for later."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pending: deque[LinkExpired] = deque(maxlen=MAX_PENDING_EVENTS)

    async def announce(self, owner: str, links: list[ExpiredLink]) -> None:
        """Queue one event per purged link and publish every queued event NATS takes."""
        for link in links:
            if len(self.pending) == self.pending.maxlen:
                log.warning("link.expired event for %s dropped: too many waiting", link.code)
            self.pending.append(
                LinkExpired(
                    code=link.code,
                    owner=owner,
                    expiration_date=link.expiration_date,
                    expires_at=link.expires_at,
                )
            )
        await self.flush()

    async def flush(self) -> None:
        """Publish the waiting events in order while NATS is connected."""
        while self.pending and self.bus.is_connected:
            event = self.pending[0]
            try:
                await self.bus.nc.publish(event_subject(event), json_encoder.encode(event))
            except Exception as err:  # kept for the next round; a purge must not fail on it
                log.warning("link.expired events wait for NATS (%s)", err)
                return
            self.pending.popleft()


async def purge_once(admin: Admin, announcer: ExpiryAnnouncer) -> int:
    """One round: remove every expired link the index knows of; how many were removed."""
    await announcer.flush()
    now = time.time()
    expired = admin.index.expired(now)
    if not expired:
        return 0
    loop = asyncio.get_running_loop()
    removed = 0
    with purge_turn(admin.data) as mine:
        if not mine:
            return 0
        for owner, codes in expired.items():
            try:
                gone = await loop.run_in_executor(None, purge_owner, admin.data, owner, codes, now)
            except (DataWriteError, OSError) as err:
                log.warning("cannot purge expired links of %s yet: %s", owner, err)
                continue
            if gone:
                removed += len(gone)
                log.info("purged %d expired link(s) of %s", len(gone), owner)
                await admin.publisher.publish(admin.data.links_file(owner))
                await announcer.announce(owner, gone)
    return removed


async def purge_forever(admin: Admin) -> None:
    """Purge expired links every `purge_interval` seconds until cancelled."""
    interval = admin.admin_settings.purge_interval
    announcer = ExpiryAnnouncer(admin.publisher.bus)
    await admin.index_ready.wait()
    while True:
        try:
            await purge_once(admin, announcer)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bad round must not end the timer
            log.warning("expiry purge failed (%s: %s); retrying", type(err).__name__, err)
        await asyncio.sleep(interval)
