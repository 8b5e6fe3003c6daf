"""Expired links purged on a timer, for every user, off the request path (T8-W18).

Trunk8 removed a user's expired links (and their assets) only when that user next loaded
a page. Here a background task looks for expired records in the link index every
`purge_interval` seconds and removes them from their owners' files through the same
locked, checked writes as the pages; each entry's expiry is re-read from the file first,
so a link whose expiry was just extended by hand stays. One admin instance purges at a
time: the round runs under a non-blocking lock on `<data>/.trunk8/purge.lock`, and an
instance that finds it taken skips that round. The serving side refuses expired links
the moment they expire; the purge only frees their codes and disk space.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tomlkit.toml_document import TOMLDocument

from trunk8_shared.datadir import DataDir
from trunk8_shared.expiry import expiry_timestamp

from .datawrites import DataWriteError, edit_toml
from .saving import remove_asset
from .state import Admin

log = logging.getLogger("trunk8.admin")

LOCK_FILE = "purge.lock"


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


def purge_owner(data: DataDir, owner: str, codes: set[str], now: float) -> list[dict[str, Any]]:
    """Remove the given codes from the owner's file if still expired; their old fields."""

    def edit(document: TOMLDocument) -> list[dict[str, Any]]:
        removed: list[dict[str, Any]] = []
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
            if stamp is not None and stamp < now:
                removed.append({key: entry[key] for key in ("type", "path") if key in entry})
                del links[code]
        return removed

    removed = edit_toml(data.links_file(owner), edit)
    for fields in removed:
        remove_asset(data.assets_dir(owner), {k: str(v) for k, v in fields.items()})
    return removed


async def purge_once(admin: Admin) -> int:
    """One round: remove every expired link the index knows of; how many were removed."""
    now = time.time()
    expired: dict[str, set[str]] = defaultdict(set)
    for record in admin.index.links.values():
        if record.expires_at is not None and record.expires_at < now:
            expired[record.owner].add(record.code)
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
    return removed


async def purge_forever(admin: Admin) -> None:
    """Purge expired links every `purge_interval` seconds until cancelled."""
    interval = admin.admin_settings.purge_interval
    await admin.index_ready.wait()
    while True:
        try:
            await purge_once(admin)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bad round must not end the timer
            log.warning("expiry purge failed (%s: %s); retrying", type(err).__name__, err)
        await asyncio.sleep(interval)
