"""Following the files: the filesystem watch, and the periodic full reconcile behind it.

The watch reloads the files it reports. Once it is proven live (its first wake-up, which
comes after the watches are in place) it re-reads everything once, so an edit made between
the first load and that moment is not missed. A full reconcile every `reconcile_interval`
seconds catches what a watch can miss (dropped inotify events, network filesystems, files
reached through symbolic links); unchanged files cost only a hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import watchfiles

from trunk8_shared.background import Backoff

from .publisher import PUBLISH_ERRORS
from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")

# Milliseconds the watch thread waits before reporting "nothing happened": the first such
# report proves the watch live, later ones cost a thread wake-up each.
WATCH_TICK_MS = 1000


async def reload_quietly(watcher: ConfigWatcher, paths: set[Path] | None) -> None:
    """Reload; NATS being away is only logged (the sync loop publishes once it is back)."""
    try:
        await watcher.reload(paths)
    except PUBLISH_ERRORS as err:
        count = "all files" if paths is None else f"{len(paths)} file(s)"
        log.warning("reload of %s not published yet (%s); will resync", count, err)


def _watched(watcher: ConfigWatcher, path: str) -> bool:
    """TOML files, and users' folders (a folder moved in or out changes its links)."""
    return path.endswith(".toml") or Path(path).parent == watcher.data.users_dir


async def watch_files(watcher: ConfigWatcher) -> None:
    """Reload changed files as the filesystem reports them; re-watch after watch errors."""
    backoff = Backoff(first=0.5)
    while True:
        # A missing config/ (unused so far) must not stop the watch of users/.
        folders = [watcher.data.users_dir]
        if watcher.data.config_dir.is_dir():
            folders.append(watcher.data.config_dir)
        batches = watchfiles.awatch(
            *folders,
            watch_filter=lambda _change, path: _watched(watcher, path),
            debounce=500,
            step=30,
            rust_timeout=WATCH_TICK_MS,
            yield_on_timeout=True,
            force_polling=watcher.settings.force_polling,
            poll_delay_ms=200,
        )
        live = False
        async with contextlib.aclosing(batches):
            while True:
                try:
                    changes = await anext(batches)
                except StopAsyncIteration:
                    break
                except (OSError, RuntimeError) as err:  # a folder gone, inotify limits...
                    log.warning(
                        "file watch failed (%s: %s); watching again", type(err).__name__, err
                    )
                    break
                if not live:
                    live = True
                    backoff.reset()
                    # Watches are in place: one full pass covers edits made before them.
                    await reload_quietly(watcher, None)
                elif changes:
                    await reload_quietly(watcher, {Path(path) for _change, path in changes})
        await backoff.wait()


async def reconcile_periodically(watcher: ConfigWatcher) -> None:
    """Re-read every file each `reconcile_interval` seconds, once the first sync is done."""
    await watcher.ready.wait()
    while True:
        await asyncio.sleep(watcher.settings.reconcile_interval)
        await reload_quietly(watcher, None)
