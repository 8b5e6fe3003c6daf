"""The sync loop: a full sync of NATS with the catalog on taking the lease, after reconnects
and failures.

Only the active watcher (the lease holder) syncs; until its first full sync succeeds it
publishes nothing. NATS being away or busy is retried with backoff; anything else is a bug
and ends the task for its supervisor to see.
"""

from __future__ import annotations

import logging

from trunk8_shared.background import Backoff

from .lease import NotActiveError
from .publisher import PUBLISH_ERRORS
from .watcher import ConfigWatcher

log = logging.getLogger("trunk8.config_watcher")


async def keep_in_sync(watcher: ConfigWatcher) -> None:
    """Sync NATS with the catalog whenever it may differ, until cancelled."""
    unregister = watcher.bus.on_reconnect(watcher.out_of_sync.set)
    backoff = Backoff()
    try:
        while True:
            await watcher.lease.wait_active()
            await watcher.bus.wait_connected()
            try:
                await watcher.sync_all()
            except NotActiveError:
                # Standing by now, or the lease ran out locally while the loop was busy:
                # wait (yielding) so the lease loop can renew or give it up, never spin.
                await backoff.wait()
                continue
            except PUBLISH_ERRORS as err:
                watcher.metrics.publish_errors.inc()
                log.warning("publishing to NATS failed (%s: %s); retrying", type(err).__name__, err)
                await backoff.wait()
                continue
            backoff.reset()
            if watcher.lease.active:
                watcher.ready.set()
            await watcher.out_of_sync.wait()
    finally:
        unregister()
