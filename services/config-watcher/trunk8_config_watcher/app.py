"""The config-watcher's factory: first load, then sync, file watch and reload requests.

The data directory is laid out and loaded before the application starts (a users.toml
that cannot be loaded stops start-up with a clear message). Then three tasks, each in its
own cleanup context: one keeps NATS in step with the catalog (a full sync at start, after
reconnects and after failed writes), one watches the files, and one answers
`trunk8.control.reload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles
from aiohttp import web
from nats.aio.msg import Msg

from trunk8_shared.background import Backoff, task_ctx
from trunk8_shared.bus import Bus, setup_bus
from trunk8_shared.datadir import DataDir, ensure_layout
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import (
    RELOAD_SUBJECT,
    ConfigError,
    DuplicateCode,
    Event,
    LinkRecord,
    ReloadReply,
    json_encoder,
    reload_request_decoder,
)
from trunk8_shared.settings import Settings

from .catalog import LinkCatalog
from .metrics import WatcherMetrics
from .publisher import Publisher
from .reloader import ConfigLoadError, Reload, Reloader

log = logging.getLogger("trunk8.config_watcher")

# How long a reload request may wait for the first publication before it is refused.
READY_WAIT = 30.0

__all__ = [
    "CONFIG_WATCHER",
    "ConfigLoadError",
    "ConfigWatcher",
    "create_app",
    "setup_config_watcher",
]


class ConfigWatcher:
    """Keeps NATS equal to the last good content of the data directory."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.data = DataDir(settings.data_path)
        self.catalog = LinkCatalog()
        self.reloader = Reloader(self.data, self.catalog)
        self.publisher = Publisher(bus)
        self.metrics = WatcherMetrics()
        self.ready = asyncio.Event()  # set once the first full state is published
        self._lock = asyncio.Lock()  # one reload or sync at a time
        self._out_of_sync = asyncio.Event()
        self._reported_duplicates: set[str] = set()

    async def load(self) -> None:
        """Lay out a missing data directory and load it (blocking work off the loop)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ensure_layout, self.data)
        result = await loop.run_in_executor(None, self.reloader.load_all)
        self._record(result)
        log.info(
            "loaded %d links of %d users from %s",
            len(self.catalog.served), len(self.catalog.users), self.data.root,
        )  # fmt: skip

    async def reload(self, paths: set[Path] | None = None) -> ReloadReply:
        """Re-read files now and publish what changed; the reply carries the links revision."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, self.reloader.reload, paths)
            self._record(result)
            error = self._rejections(paths)
            if not self.ready.is_set():
                # Not published yet: the first full sync will carry this change too.
                self._out_of_sync.set()
                return ReloadReply(revision=self.publisher.links.revision, error=error)
            try:
                revision = self.publisher.links.revision
                if result.users_changed:
                    await self.publisher.sync_users(self.catalog.users)
                if len(result.links):
                    codes = result.links.put.keys() | result.links.removed.keys()
                    revision = await self.publisher.sync_links(self.catalog.served, codes)
                await self.publisher.emit([*result.errors, *self._new_duplicates()])
            except Exception:
                # The catalog moved on but NATS may not have: the sync task catches up.
                self.metrics.publish_errors.inc()
                self._out_of_sync.set()
                raise
            self.metrics.revision.set(revision)
            return ReloadReply(revision=revision, changed=len(result.links), error=error)

    def _rejections(self, paths: set[Path] | None) -> str | None:
        """The current rejection of the given files (all files when None), as one line."""
        rejected = self.reloader.rejected
        files = rejected if paths is None else [self.data.relative(p) for p in paths]
        return "; ".join(f"{f}: {rejected[f]}" for f in files if f in rejected) or None

    def _record(self, result: Reload) -> None:
        self.metrics.reloads.inc(result.files_applied)
        self.metrics.reload_errors.inc(len(result.errors))
        rejected = len(self.reloader.rejected)
        self.metrics.rejected_files.set(rejected)
        self.metrics.last_reload_successful.set(0 if rejected else 1)
        self.metrics.links.set(len(self.catalog.served))
        self.metrics.users.set(len(self.catalog.users))
        self.metrics.duplicate_codes.set(len(self.catalog.duplicates))

    def _new_duplicates(self) -> list[Event]:
        """Events for duplicate codes not reported yet (each is reported once)."""
        current = self.catalog.duplicates
        fresh = [d for code, d in current.items() if code not in self._reported_duplicates]
        self._reported_duplicates = set(current)
        for dup in fresh:
            log.warning(
                "short code %r is defined by %s; serving %s's (first in users.toml)",
                dup.code, ", ".join((dup.winner, *dup.shadowed)), dup.winner,
            )  # fmt: skip
        return [
            DuplicateCode(code=d.code, winner=d.winner, shadowed=list(d.shadowed)) for d in fresh
        ]

    def _adopt_published(self, published: list[LinkRecord]) -> None:
        """Keep serving what the bucket holds for links files rejected since start.

        Such a file has no last good state in this process; the bucket still has the one a
        previous run published, and that stays served until the file is fixed.
        """
        orphans = {
            owner
            for owner in self.catalog.users
            if owner not in self.catalog.links_by_user
            and self.reloader.is_rejected(self.data.links_file(owner))
        }
        adopted: dict[str, dict[str, LinkRecord]] = {owner: {} for owner in orphans}
        for record in published:
            if record.owner in adopted:
                adopted[record.owner][record.code] = record
        for owner, links in adopted.items():
            log.info(
                "serving the %d published links of %s until its file is fixed", len(links), owner
            )
            self.catalog.resolve(self.catalog.set_links(owner, links))

    async def _sync_all(self) -> int:
        """Read both buckets back and write every difference from the catalog."""
        await self.publisher.read_back()
        self._adopt_published(self.publisher.published_links())
        await self.publisher.sync_users(self.catalog.users)
        revision = await self.publisher.sync_links(self.catalog.served)
        log.info(
            "published %d links of %d users at revision %d",
            len(self.catalog.served), len(self.catalog.users), revision,
        )  # fmt: skip
        return revision

    async def keep_in_sync(self) -> None:
        """Sync NATS with the catalog at start, after reconnects and after failures."""
        unregister = self.bus.on_reconnect(self._out_of_sync.set)
        backoff = Backoff()
        first = True
        try:
            while True:
                await self.bus.wait_connected()
                try:
                    async with self._lock:
                        self._out_of_sync.clear()  # a failure from here on sets it again
                        revision = await self._sync_all()
                        rejections = self._rejection_events() if first else []
                        await self.publisher.emit([*rejections, *self._new_duplicates()])
                    self._record(Reload())
                    self.metrics.revision.set(revision)
                    first = False
                    backoff.reset()
                    self.ready.set()
                    await self._out_of_sync.wait()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self.metrics.publish_errors.inc()
                    log.warning(
                        "publishing to NATS failed (%s: %s); retrying", type(err).__name__, err
                    )
                    await backoff.wait()
        finally:
            unregister()

    def _rejection_events(self) -> list[Event]:
        return [ConfigError(file=f, reason=r) for f, r in self.reloader.rejected.items()]

    def _watched(self, path: str) -> bool:
        """TOML files, and users' folders (a folder moved in or out changes its links)."""
        return path.endswith(".toml") or Path(path).parent == self.data.users_dir

    async def watch_files(self) -> None:
        """Reload changed files as the filesystem reports them; re-watch after errors."""
        backoff = Backoff(first=0.5)
        while True:
            try:
                async for changes in watchfiles.awatch(
                    self.data.users_dir,
                    self.data.config_dir,
                    watch_filter=lambda _change, path: self._watched(path),
                    debounce=500,
                    step=30,
                    force_polling=self.settings.force_polling,
                    poll_delay_ms=200,
                ):
                    backoff.reset()
                    await self._reload_quietly({Path(path) for _change, path in changes})
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("file watch failed (%s: %s); watching again", type(err).__name__, err)
            await backoff.wait()
            await self._reload_quietly(None)  # catch up on changes the watch may have missed

    async def _reload_quietly(self, paths: set[Path] | None) -> None:
        try:
            await self.reload(paths)
        except Exception as err:
            count = "all files" if paths is None else f"{len(paths)} file(s)"
            log.warning("reload of %s not published yet (%s); will resync", count, err)

    async def answer_reload(self, msg: Msg) -> None:
        """`trunk8.control.reload`: reload a file (or everything) and reply with the revision."""
        try:
            await asyncio.wait_for(self.ready.wait(), READY_WAIT)
            request = reload_request_decoder.decode(msg.data) if msg.data else None
            paths = None
            if request is not None and request.path:
                paths = {self.data.root / request.path}
            reply = await self.reload(paths)
        except TimeoutError:
            reply = ReloadReply(revision=0, error="not ready: nothing is published yet")
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            reply = ReloadReply(revision=self.publisher.links.revision, error=error)
        if msg.reply:
            await msg.respond(json_encoder.encode(reply))

    async def serve_reload_requests(self) -> None:
        """Answer reload requests until cancelled (one responder per queue group)."""
        await self.bus.wait_connected()
        sub = await self.bus.nc.subscribe(
            RELOAD_SUBJECT, queue="trunk8-config-watcher", cb=self.answer_reload
        )
        try:
            await asyncio.Future()  # until cancelled
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


CONFIG_WATCHER = web.AppKey("trunk8.config_watcher", ConfigWatcher)


def setup_config_watcher(app: web.Application, settings: Settings) -> ConfigWatcher:
    """Add the config-watcher to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-config-watcher")
    watcher = ConfigWatcher(settings, bus)
    app[CONFIG_WATCHER] = watcher
    setup_ops(app).add_service("config-watcher", watcher.ready.is_set, watcher.metrics.registry)

    async def data_dir_ctx(app: web.Application) -> AsyncIterator[None]:
        await watcher.load()
        yield

    app.cleanup_ctx.extend(
        [
            data_dir_ctx,
            task_ctx("config-sync", watcher.keep_in_sync),
            task_ctx("config-watch", watcher.watch_files),
            task_ctx("config-control", watcher.serve_reload_requests),
        ]
    )
    return watcher


def create_app(settings: Settings) -> web.Application:
    """A stand-alone config-watcher application (`trunk8 run --target config-watcher`)."""
    app = web.Application()
    setup_config_watcher(app, settings)
    return app
