"""The config-watcher's factory: first load, file watch, publishing and reload requests.

Lifecycle, in one cleanup context: the data directory is laid out and loaded before the
application starts (a users.toml that cannot be loaded stops start-up with a clear
message); then one task keeps NATS in step with the catalog (full reconcile at start,
after reconnects and after failed writes), one watches the files, and a subscription
answers `trunk8.control.reload`.
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

from trunk8_shared.bus import Bus, setup_bus
from trunk8_shared.datadir import DataDir, ensure_layout
from trunk8_shared.ops import setup_ops
from trunk8_shared.records import (
    RELOAD_SUBJECT,
    ConfigError,
    DuplicateCode,
    Event,
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

MAX_BACKOFF = 5.0

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
        self._lock = asyncio.Lock()  # one reload or reconcile at a time
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
            await self.publisher.emit([*result.errors, *self._new_duplicates()])
            error = self._rejections(paths)
            if not self.ready.is_set():
                # Not published yet: the first full reconcile will carry this change too.
                self._out_of_sync.set()
                return ReloadReply(revision=self.publisher.links.revision, error=error)
            if not len(result.links) and not result.users_changed:
                return ReloadReply(revision=self.publisher.links.revision, error=error)
            try:
                if result.users_changed:
                    await self.publisher.sync_users(self.catalog.users)
                codes = result.links.put.keys() | result.links.removed.keys()
                revision = await self.publisher.sync_links(self.catalog.served, codes)
            except Exception:
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

    async def keep_in_sync(self) -> None:
        """Reconcile NATS with the catalog at start, after reconnects and after failures."""
        unregister = self.bus.on_reconnect(self._out_of_sync.set)
        backoff = 0.1
        first = True
        try:
            while True:
                await self.bus.wait_connected()
                try:
                    async with self._lock:
                        self._out_of_sync.clear()  # a failure from here on sets it again
                        errors = [
                            *(self._rejection_events() if first else []),
                            *self._new_duplicates(),
                        ]
                        revision = await self.publisher.reconcile(
                            self.catalog.served, self.catalog.users
                        )
                        await self.publisher.emit(errors)
                    self.metrics.revision.set(revision)
                    first = False
                    backoff = 0.1
                    self.ready.set()
                    await self._out_of_sync.wait()
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    self.metrics.publish_errors.inc()
                    log.warning(
                        "publishing to NATS failed (%s: %s); retrying", type(err).__name__, err
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            unregister()

    def _rejection_events(self) -> list[Event]:
        return [ConfigError(file=f, reason=r) for f, r in self.reloader.rejected.items()]

    async def watch_files(self) -> None:
        """Reload changed TOML files as the filesystem reports them; re-watch after errors."""
        backoff = 0.5
        while True:
            try:
                async for changes in watchfiles.awatch(
                    self.data.users_dir,
                    self.data.config_dir,
                    watch_filter=lambda _change, path: path.endswith(".toml"),
                    debounce=500,
                    step=30,
                    force_polling=self.settings.force_polling,
                    poll_delay_ms=200,
                ):
                    backoff = 0.5
                    await self._reload_quietly({Path(path) for _change, path in changes})
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("file watch failed (%s: %s); watching again", type(err).__name__, err)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            await self._reload_quietly(None)  # catch up on changes the watch may have missed

    async def _reload_quietly(self, paths: set[Path] | None) -> None:
        try:
            await self.reload(paths)
        except Exception as err:
            count = "all files" if paths is None else f"{len(paths)} file(s)"
            log.warning("reload of %s not published yet (%s); will reconcile", count, err)

    async def answer_reload(self, msg: Msg) -> None:
        """`trunk8.control.reload`: reload a file (or everything) and reply with the revision."""
        try:
            request = reload_request_decoder.decode(msg.data) if msg.data else None
            paths = None
            if request is not None and request.path:
                paths = {self.data.root / request.path}
            reply = await self.reload(paths)
        except Exception as err:
            reply = ReloadReply(
                revision=self.publisher.links.revision, error=f"{type(err).__name__}: {err}"
            )
        if msg.reply:
            await msg.respond(json_encoder.encode(reply))


CONFIG_WATCHER = web.AppKey("trunk8.config_watcher", ConfigWatcher)


def setup_config_watcher(app: web.Application, settings: Settings) -> ConfigWatcher:
    """Add the config-watcher to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-config-watcher")
    watcher = ConfigWatcher(settings, bus)
    app[CONFIG_WATCHER] = watcher
    setup_ops(app).add_service("config-watcher", watcher.ready.is_set, watcher.metrics.registry)

    async def config_watcher_ctx(app: web.Application) -> AsyncIterator[None]:
        await watcher.load()
        tasks = [
            asyncio.create_task(watcher.keep_in_sync(), name="config-sync"),
            asyncio.create_task(watcher.watch_files(), name="config-watch"),
            asyncio.create_task(_serve_reload_requests(watcher), name="config-control"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(config_watcher_ctx)
    return watcher


async def _serve_reload_requests(watcher: ConfigWatcher) -> None:
    await watcher.bus.wait_connected()
    sub = await watcher.bus.nc.subscribe(
        RELOAD_SUBJECT, queue="trunk8-config-watcher", cb=watcher.answer_reload
    )
    try:
        await asyncio.Future()  # until cancelled
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def create_app(settings: Settings) -> web.Application:
    """A stand-alone config-watcher application (`trunk8 run --target config-watcher`)."""
    app = web.Application()
    setup_config_watcher(app, settings)
    return app
