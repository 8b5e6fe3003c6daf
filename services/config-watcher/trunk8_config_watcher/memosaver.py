"""Saving the parse memo: at once after the first load, then at most once every
`MEMO_SAVE_INTERVAL` seconds while files change, and once more when the watcher stops.

Saving digests the records of every file parsed since (about 0.1 s per 100,000 links)
and writes the whole memo (a few MB at a million links), so a burst of hand edits pays
for one save rather than one each. The memo is a cache: a save lost to a crash only
means the files edited since are parsed again at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")

MEMO_SAVE_INTERVAL = 30.0


async def keep_memo_saved(watcher: ConfigWatcher) -> None:
    """Save the memo whenever it changed, no more often than every `MEMO_SAVE_INTERVAL`."""
    while True:
        await watcher.memo_due.wait()
        await watcher.ready.wait()  # only the active watcher's memo matches what it published
        watcher.memo_due.clear()
        try:
            await watcher.save_memo()
        except OSError as err:  # a full or read-only disk: the memo is only a cache
            log.warning("saving the parse memo failed (%s); retrying later", err)
            watcher.memo_due.set()
        await asyncio.sleep(MEMO_SAVE_INTERVAL)


def memo_saved_on_stop_ctx(
    watcher: ConfigWatcher,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context saving the memo on stop, once the tasks that change it stopped."""

    async def memo_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if watcher.ready.is_set():
            try:
                await watcher.save_memo()
            except OSError as err:
                log.warning("saving the parse memo on stop failed (%s)", err)

    return memo_ctx
