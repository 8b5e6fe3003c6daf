"""The config-watcher's factory: first load, then lease, sync, file watch, reconcile, control.

The data directory is laid out and loaded before the application starts (a users.toml
that cannot be loaded stops start-up with a clear message). Then each long task runs in
its own cleanup context: the lease loop decides whether this watcher is the active one
(`lease.py`; standbys keep their catalog current and publish nothing), the sync loop keeps
NATS in step with the catalog, the file watch and the periodic reconcile follow the files,
and the control responder answers `trunk8.control.reload`. `/-/ready` answers 200 for the
active watcher once it published its state and while its lease is valid, and for a standby
once it looked at the lease.
`/-/rejected` lists what is currently refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from trunk8_shared.background import task_ctx
from trunk8_shared.bus import setup_bus
from trunk8_shared.ops import setup_ops
from trunk8_shared.settings import Settings

from .control import serve_reload_requests
from .filewatch import reconcile_periodically, watch_files
from .memosaver import keep_memo_saved, memo_saved_on_stop_ctx
from .rejections import REJECTIONS, rejected_view
from .reloader import ConfigLoadError
from .snapshots import SnapshotPublisher, keep_snapshots
from .sync import keep_in_sync
from .watcher import ConfigWatcher

__all__ = [
    "CONFIG_WATCHER",
    "ConfigLoadError",
    "ConfigWatcher",
    "create_app",
    "setup_config_watcher",
]

CONFIG_WATCHER = web.AppKey("trunk8.config_watcher", ConfigWatcher)


async def snapshot_view(request: web.Request) -> web.Response:
    """`/-/snapshot`: 200 once a snapshot of the published state is stored, else 503.

    `trunk8 up` waits for it before its own services load, so they load the snapshot
    instead of following a first import of a million links one message at a time.
    """
    stored = request.app[CONFIG_WATCHER].snapshot_stored.is_set()
    return web.json_response({"stored": stored}, status=200 if stored else 503)


def setup_config_watcher(app: web.Application, settings: Settings) -> ConfigWatcher:
    """Add the config-watcher to an application (alone, or beside other services)."""
    bus = setup_bus(app, settings, "trunk8-config-watcher")
    watcher = ConfigWatcher(settings, bus)
    snapshots = SnapshotPublisher(watcher)
    watcher.publisher.bulk_snapshot = snapshots.publish_ahead
    app[CONFIG_WATCHER] = watcher
    app[REJECTIONS] = watcher.rejections
    watcher.metrics.registry.register(watcher.lease)
    setup_ops(app).add_service(
        "config-watcher",
        lambda: watcher.lease.ready(watcher.ready.is_set()),
        watcher.metrics.registry,
    )
    app.router.add_get("/-/snapshot", snapshot_view)
    app.router.add_get("/-/rejected", rejected_view)

    async def data_dir_ctx(app: web.Application) -> AsyncIterator[None]:
        await watcher.load()
        yield

    async def lease_release_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await watcher.lease.release()  # after every task that writes has stopped

    app.cleanup_ctx.extend(
        [
            data_dir_ctx,
            lease_release_ctx,
            memo_saved_on_stop_ctx(watcher),  # unwound after the tasks, before the release
            task_ctx("config-lease", watcher.lease.run),
            task_ctx("config-sync", lambda: keep_in_sync(watcher)),
            task_ctx("config-watch", lambda: watch_files(watcher)),
            task_ctx("config-control", lambda: serve_reload_requests(watcher)),
            task_ctx("config-snapshot", lambda: keep_snapshots(watcher, snapshots)),
            task_ctx("config-memo", lambda: keep_memo_saved(watcher)),
        ]
    )
    if settings.reconcile_interval > 0:
        app.cleanup_ctx.append(
            task_ctx("config-reconcile", lambda: reconcile_periodically(watcher))
        )
    return watcher


def create_app(settings: Settings) -> web.Application:
    """A stand-alone config-watcher application (`trunk8 run --target config-watcher`)."""
    app = web.Application()
    setup_config_watcher(app, settings)
    return app
