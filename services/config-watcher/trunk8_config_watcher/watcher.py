"""The config-watcher's state and its two critical sections: reloading files, syncing NATS.

`ConfigWatcher` holds the catalog, what is rejected, the publisher and the events not
published yet. One lock serialises a reload and a full sync, so NATS only ever receives
a whole reload or a whole sync. The loops that call these (file watch, reconcile, sync,
control requests) live in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trunk8_shared.bus import Bus
from trunk8_shared.datadir import DataDir, ensure_layout
from trunk8_shared.records import ReloadReply
from trunk8_shared.settings import Settings

from .adoption import adopt_published
from .catalog import LinkCatalog
from .duplicates import DuplicateReporter
from .lease import Lease, NotActiveError
from .metrics import WatcherMetrics
from .outbox import EventOutbox
from .parsememo import MEMO_FILE, PublishedLinks, load_memo, save_memo
from .publisher import PUBLISH_ERRORS, Publisher
from .rejections import Rejections
from .reloader import Reload, Reloader
from .remembered import codes_to_diff, decode_unpublished

log = logging.getLogger("trunk8.config_watcher")

MEGABYTE = 1_000_000
# Seconds a warm start waits for NATS to read the published state before parsing it all.
WARM_START_WAIT = 5.0
WARM_START_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *PUBLISH_ERRORS)


def _absolute(path: Path) -> Path:
    """A path made absolute without resolving symbolic links (as the reloader compares them)."""
    return Path(os.path.abspath(path))


class ConfigWatcher:
    """Keeps NATS equal to the last good content of the data directory."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.data = DataDir(settings.data_path)
        self.catalog = LinkCatalog()
        self.rejections = Rejections()
        max_bytes = int(settings.max_data_file_mb * MEGABYTE)
        self.reloader = Reloader(self.data, self.catalog, self.rejections, max_bytes)
        self.lease = Lease(bus, settings.lease_ttl, settings.bucket_replicas, settings.lease_holder)
        self.lease.on_change(self._lease_changed)
        self.publisher = Publisher(bus, self.lease, settings.bucket_replicas)
        self.metrics = WatcherMetrics()
        self.outbox = EventOutbox()
        self.duplicates = DuplicateReporter()
        self.ready = asyncio.Event()  # set while active and the full state is published
        self.out_of_sync = asyncio.Event()  # NATS may differ from the catalog: sync again
        self.lock = asyncio.Lock()  # one reload, sync or snapshot encoding at a time
        self.snapshot_due = asyncio.Event()  # the snapshot task checks whether one is due
        self.snapshot_stored = asyncio.Event()  # a snapshot of a published state exists
        self.memo_due = asyncio.Event()  # the parse memo changed since it was last saved
        self.changes_since_snapshot = 0
        # Files whose saver's entries were applied without reading them: read them soon.
        self.saved_files: set[Path] = set()
        self.follow_up_due = asyncio.Event()
        # The links bucket as a warm start read it, while its remembered users are known to
        # match it (until the first full sync).
        self.warm_published: Mapping[str, bytes] | None = None

    def _lease_changed(self, active: bool) -> None:
        """Reconcile fully on becoming active; stop publishing on standing by."""
        if not active:
            self.ready.clear()  # reloads still keep the catalog current, unpublished
        self.out_of_sync.set()

    async def load(self) -> None:
        """Lay out a missing data directory and load it (blocking work off the loop).

        With a parse memo from an earlier run, the published state is read first (NATS
        permitting, within `WARM_START_WAIT`), so unchanged files are not parsed again.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_layout, self.data)
        reloader = self.reloader
        reloader.memo = await loop.run_in_executor(None, load_memo, self.memo_path)
        if reloader.memo.files:
            reloader.published = await self._published_for_warm_start()
        try:
            result = await loop.run_in_executor(None, reloader.load_all)
            if self.catalog.remembered and reloader.published is not None:
                self.warm_published = reloader.published.values
        finally:
            reloader.published = None  # a warm start's only: never reused later
        self._record(result)
        log.info(
            "loaded %d links of %d users from %s (%d files unchanged since the last run)",
            self.catalog.link_count(), len(self.catalog.users), self.data.root,
            reloader.remembered_files,
        )  # fmt: skip

    @property
    def memo_path(self) -> Path:
        """Where the parse memo is kept."""
        return self.data.state_dir / MEMO_FILE

    async def _published_for_warm_start(self) -> PublishedLinks | None:
        """The links bucket as published (records snapshot + later changes), or None."""
        try:
            await asyncio.wait_for(self.bus.wait_connected(), WARM_START_WAIT)
            started = time.monotonic()
            read = await self.publisher.links.read_back(from_snapshot=True)
            values = self.publisher.links.known
            log.info("read %d published links in %.1f s", len(values), time.monotonic() - started)
            owners = read.snapshot.owners if read.snapshot is not None else {}
            return PublishedLinks(values, owners, set(read.changes))
        except WARM_START_ERRORS as err:
            log.info("starting without the published state (%s); parsing every file", err)
            return None

    async def save_memo(self) -> None:
        """Persist the parse memo if it changed (under the lock: reloads mutate it)."""
        if not self.reloader.memo_changed:
            return
        async with self.lock:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._save_memo_now)

    def _save_memo_now(self) -> None:
        started = time.process_time()
        memo = self.reloader.memo_to_save()
        try:
            save_memo(self.memo_path, memo)
        except BaseException:
            self.reloader.memo_changed = True  # still to save
            raise
        log.info(
            "saved the parse memo of %d files (%.2f s of CPU)",
            len(memo.files), time.process_time() - started,
        )  # fmt: skip

    async def reload(
        self, paths: set[Path] | None = None, *, join_saved: bool = True
    ) -> ReloadReply:
        """Re-read files now and publish what changed; the reply carries the links revision.

        Raises one of `PUBLISH_ERRORS` when NATS did not take it; the sync loop catches up.
        Named links files are parsed before the lock is taken, so a save answered from its
        entries (`apply_saved`) meanwhile waits for no parse. With `join_saved`, files
        saved that way and due to be read soon are left to that read (one parse a burst).
        """
        loop = asyncio.get_running_loop()
        files = None if paths is None else [self.data.relative(p) for p in paths]
        if paths is not None and join_saved:
            paths = {_absolute(p) for p in paths} - self.saved_files
        prepared = {} if paths is None else await loop.run_in_executor(
            None, self.reloader.prepare, paths
        )  # fmt: skip
        async with self.lock:
            reloader = self.reloader
            reloader.prepared = prepared
            try:
                result = await loop.run_in_executor(None, reloader.reload, paths)
            finally:
                reloader.prepared = {}
                unsettled, reloader.unsettled = reloader.unsettled, set()
            if unsettled:  # applied from an older read and the saves since: read it again
                self.saved_files |= unsettled
                self.follow_up_due.set()
            return await self._publish(result, files)

    async def apply_saved(
        self, path: Path, links: dict[str, dict[str, Any]], removed: list[str]
    ) -> ReloadReply:
        """Publish the entries a saver changed in one links file, without reading it first.

        The file is read soon after (`take_saved`), off the saver's path, and wins over
        the entries if they differ. A file that cannot take entries this way is reloaded.
        """
        async with self.lock:
            result = self.reloader.apply_entries(path, links, removed)
            if result is not None:
                self.saved_files.add(_absolute(path))
                self.follow_up_due.set()
                return await self._publish(result, [self.data.relative(path)])
        return await self.reload({path}, join_saved=False)

    def take_saved(self) -> set[Path]:
        """The files saved through `apply_saved` since last asked, to read now."""
        saved, self.saved_files = self.saved_files, set()
        self.follow_up_due.clear()
        return saved

    async def _publish(self, result: Reload, files: list[str] | None) -> ReloadReply:
        """Record a reload and publish what it changed (under the lock)."""
        self._record(result)
        error = self.rejections.summary(files)
        refused = self.rejections.refused_in(files or ())
        if not self.ready.is_set():
            # Not published yet: the first full sync carries this change and its events.
            self.out_of_sync.set()
            revision = self.publisher.links.revision
            return ReloadReply(revision=revision, error=error, refused=refused)
        try:
            revision = self.publisher.links.revision
            if result.users_changed:
                await self.publisher.sync_users(self.catalog.users)
            if len(result.links):
                codes = result.links.put.keys() | result.links.removed.keys()
                revision = await self.publisher.sync_links(self.catalog.served, codes)
            await self._flush_events()
        except PUBLISH_ERRORS as err:
            # The catalog moved on but NATS may not have: the sync task catches up.
            if not isinstance(err, NotActiveError):  # standing by is no publishing failure
                self.metrics.publish_errors.inc()
            self.out_of_sync.set()
            raise
        self.metrics.revision.set(revision)
        changed = len(result.links)
        if changed:
            self.changes_since_snapshot += changed
            self.snapshot_due.set()
        return ReloadReply(revision=revision, changed=changed, error=error, refused=refused)

    async def sync_all(self) -> int:
        """Read both buckets back and write every difference from the catalog."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            self.out_of_sync.clear()  # a failure from here on sets it again
            # What a warm start verified the remembered users against: never kept past one
            # attempt, and only good while nothing was written since it was read.
            verified, self.warm_published = self.warm_published, None
            await self.publisher.take_over()
            if not self.publisher.links.fresh:
                verified = None
            await self.publisher.read_back()
            known = self.publisher.links.known
            if self.catalog.remembered and known is not verified:
                await loop.run_in_executor(None, decode_unpublished, self.catalog, known)
            adopt_published(
                self.catalog, self.reloader.owner_rejected, self.publisher.published_links()
            )
            codes = await loop.run_in_executor(None, codes_to_diff, self.catalog, known)
            if codes is None and self.catalog.remembered:
                await loop.run_in_executor(None, self.catalog.decode_all)
            await self.publisher.sync_users(self.catalog.users)
            revision = await self.publisher.sync_links(self.catalog.served, codes)
            await self._flush_events()
            self._record(Reload())
            self.metrics.revision.set(revision)
            self.snapshot_due.set()
        log.info(
            "published %d links of %d users at revision %d",
            self.catalog.link_count(), len(self.catalog.users), revision,
        )  # fmt: skip
        return revision

    async def _flush_events(self) -> None:
        """Publish rejections and duplicates waiting since NATS was last reachable."""
        self.outbox.add(self.duplicates.new_events(self.catalog))
        await self.outbox.flush(self.publisher.emit_one)

    def _record(self, result: Reload) -> None:
        self.metrics.record(result, self.catalog, self.rejections)
        self.outbox.add(result.events)
        if self.reloader.memo_changed:
            self.memo_due.set()
